"""function_app.py passes the checks the Python worker makes when it indexes the app (tests/worker.py),
and those checks refuse what the worker refuses: a test of them against small apps made here."""

from __future__ import annotations

import typing
from types import ModuleType
from typing import Any

import azure.functions as func
import pytest

from tests.worker import FunctionLoadError, add_indexed_function, build_retry_options, index_function_app


def test_the_worker_indexes_the_three_functions_and_both_triggers_retry(functions: dict[str, Any]) -> None:
    # The `functions` fixture indexed function_app the worker's way; each function passes again here.
    assert set(functions) == {"route_telemetry", "route_twins", "redeliver_parked"}
    for fn in functions.values():
        add_indexed_function(fn)
    # The timer has no retry policy: its next run (10 s later) is its retry, and what it did not deliver stays.
    assert build_retry_options(functions["redeliver_parked"]) is None
    for name in ("route_telemetry", "route_twins"):
        assert build_retry_options(functions[name]) == {
            "max_retry_count": -1,
            "strategy": "exponential_backoff",
            "minimum_interval": 2,
            "maximum_interval": 300,
        }


def test_the_functions_return_nothing_since_they_have_no_return_binding(functions: dict[str, Any]) -> None:
    # Without a `$return` binding the worker drops a returned value: nothing may depend on one.
    for fn in functions.values():
        assert all(b.name != "$return" for b in fn.get_bindings())
        assert typing.get_type_hints(fn.get_user_function())["return"] is type(None)


def _app_with(annotation: Any) -> ModuleType:
    module = ModuleType("probe_app")
    app = func.FunctionApp()

    def probe(events: Any) -> None: ...

    probe.__annotations__["events"] = annotation
    trigger = app.event_hub_message_trigger(arg_name="events", connection="C", event_hub_name="h", cardinality="many")
    app.function_name("probe")(trigger(probe))
    module.app = app  # type: ignore[attr-defined]
    return module


def test_the_builtin_list_annotation_fails_indexing_as_on_the_real_worker() -> None:
    with pytest.raises(FunctionLoadError, match=r"binding events has invalid non-type annotation list\["):
        index_function_app(_app_with(list[func.EventHubEvent]))


@pytest.mark.parametrize("annotation", [typing.List[func.EventHubEvent], func.EventHubEvent])  # noqa: UP006
def test_the_library_accepts_typing_list_and_single_events(annotation: Any) -> None:
    [fn] = index_function_app(_app_with(annotation))
    assert fn.get_function_name() == "probe"


def test_an_annotation_the_converter_refuses_fails_indexing() -> None:
    with pytest.raises(FunctionLoadError, match="does not match its Python annotation"):
        index_function_app(_app_with(typing.List[int]))  # noqa: UP006


def test_two_function_apps_in_one_module_fail_indexing() -> None:
    module = _app_with(func.EventHubEvent)
    module.other = func.FunctionApp()  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="one top level function app"):
        index_function_app(module)
