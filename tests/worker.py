"""The checks the Azure Functions Python worker makes when it indexes a v2 app, restated for the tests.

`app.get_functions()` builds the functions but checks none of this; the worker then refuses a function
(and the host starts with no functions) when any check fails. Restated from
Azure/azure-functions-python-worker: `loader.index_function_app` (one function app instance at the top
of the module), `functions.Registry.add_indexed_function` / `validate_function_params` (binding
directions, parameters against bindings, annotations: a class or a `typing` generic, then the binding's
converter from the library's registry), `get_function_return_type`, and `loader.build_retry_protos`
(the retry policy parsed into the host's protos). The messages are the worker's, so a failure here
reads like the host's log would. The worker itself needs Python 3.13 on PyPI (`azure-functions-runtime`)
or is not published for 3.11, so it cannot run here; these checks are what it would do with our app.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import time
import typing
from types import ModuleType
from typing import Any

import azure.functions as func
from azure.functions import meta
from azure.functions.decorators.core import BindingDirection

# The host's rule for function names (Microsoft.Azure.WebJobs.Script Utility.IsValidFunctionName).
FUNCTION_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,127}$", re.IGNORECASE)
RETRY_STRATEGIES = ("exponential_backoff", "fixed_delay")


class FunctionLoadError(RuntimeError):
    def __init__(self, function_name: str, msg: str) -> None:
        super().__init__(f"cannot load the {function_name} function: {msg}")


def is_generic_type(tp: Any) -> bool:
    """The worker's vendored `typing_inspect.is_generic_type`: `typing.List[X]` is generic, the builtin
    `list[X]` (a `types.GenericAlias`) is not."""
    special = (typing._GenericAlias, typing._SpecialGenericAlias)  # type: ignore[attr-defined]
    return (isinstance(tp, type) and issubclass(tp, typing.Generic)) or (
        isinstance(tp, special)
        and tp.__origin__ not in (typing.Union, tuple, typing.ClassVar, collections.abc.Callable)
    )


def _is_out(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) if is_generic_type(annotation) else None
    target = origin if origin is not None else annotation
    return isinstance(target, type) and target.__name__ == "Out"


def _converter(binding_type: str) -> Any:
    return meta.get_binding_registry().get(binding_type)


def index_function_app(module: ModuleType) -> list[Any]:
    """`loader.index_function_app` then, per function, `Registry.add_indexed_function`."""
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionRegister)]
    if len(apps) != 1:
        raise ValueError(f"expected one top level function app instance, found {len(apps)}")
    functions = apps[0].get_functions()
    names = [str(fn.get_function_name()) for fn in functions]
    for name in names:
        if not FUNCTION_NAME.match(name):
            raise FunctionLoadError(name, "is not a valid function name for the host")
    if len(set(names)) != len(names):
        raise ValueError(f"function names are not unique: {names}")
    for fn in functions:
        add_indexed_function(fn)
        build_retry_options(fn)
    return functions


def add_indexed_function(function: Any) -> None:
    user = function.get_user_function()
    name = function.get_function_name()
    params = dict(inspect.signature(user).parameters)
    annotations = typing.get_type_hints(user)
    bound: dict[str, Any] = {}
    explicit_return = False
    for binding in function.get_bindings():
        if binding.direction == BindingDirection.INOUT:
            raise FunctionLoadError(name, '"inout" bindings are not supported')
        if binding.name == "$return":
            if binding.direction != BindingDirection.OUT:
                raise FunctionLoadError(name, '"$return" binding must have direction set to "out"')
            explicit_return = True
        else:
            bound[binding.name] = binding
    if "context" in params and "context" not in bound:
        params.pop("context")
        context = annotations.get("context")
        if "context" in annotations and (not isinstance(context, type) or context.__name__ != "Context"):
            raise FunctionLoadError(name, f'the "context" parameter is expected to be of type Context, got {context!r}')
    if set(params) - set(bound):
        raise FunctionLoadError(
            name, f"parameters declared in Python but not as bindings: {set(params) - set(bound)!r}"
        )
    if set(bound) - set(params):
        raise FunctionLoadError(name, f"bindings not declared in Python: {set(bound) - set(params)!r}")
    for param in params.values():
        binding = bound[param.name]
        if param.name not in annotations:
            continue
        annotation = annotations[param.name]
        is_out = _is_out(annotation)
        py_type = typing.get_args(annotation)[0] if is_out else annotation
        if not isinstance(py_type, type) and not is_generic_type(py_type):
            raise FunctionLoadError(name, f"binding {param.name} has invalid non-type annotation {annotation!r}")
        binding_out = binding.direction == BindingDirection.OUT
        if binding_out != is_out:
            raise FunctionLoadError(name, f"binding {param.name}: direction and azure.functions.Out annotation differ")
        binding_type = "generic" if py_type in (str, bytes) else binding.type
        converter = _converter(binding_type)
        if converter is None:
            raise FunctionLoadError(name, f"binding type {binding_type!r} has no converter in azure.functions")
        check = converter.check_output_type_annotation if is_out else converter.check_input_type_annotation
        if not check(py_type):
            raise FunctionLoadError(
                name, f'type of {param.name} binding "{binding.type}" does not match its Python annotation {py_type!r}'
            )
    if explicit_return and "return" in annotations:
        returned = annotations["return"]
        if not isinstance(returned, type):
            raise FunctionLoadError(name, f"has invalid non-type return annotation {returned!r}")


def build_retry_options(function: Any) -> dict[str, Any] | None:
    """`loader.build_retry_protos`: the count as an int, the intervals as HH:MM:SS."""
    retry = function.get_settings_dict("retry_policy")
    if not retry:
        return None
    if retry.get("strategy") not in RETRY_STRATEGIES:
        raise FunctionLoadError(function.get_function_name(), f"unknown retry strategy {retry.get('strategy')!r}")
    options: dict[str, Any] = {"max_retry_count": int(retry["max_retry_count"]), "strategy": retry["strategy"]}
    fields = ("delay_interval",) if retry["strategy"] == "fixed_delay" else ("minimum_interval", "maximum_interval")
    for field in fields:
        parsed = time.strptime(retry[field], "%H:%M:%S")
        options[field] = parsed.tm_hour * 3600 + parsed.tm_min * 60 + parsed.tm_sec
    return options
