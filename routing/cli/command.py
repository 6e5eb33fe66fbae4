"""The shape every command shares, the one `az` users know: help in plain sections (usage, arguments,
options, examples) rather than boxed panels, a flag shown as just its name, a choice as `[a|b|c]`,
the options a command needs marked `[required]` (all missing ones named in one error), an example
of use in every command's help, and Click's usage errors as one `error:` line (routing/cli/output.py).

`App` is a Typer whose groups and commands are `Group` and `Command`, so a command gets all this by
being declared on it. A group of commands may be registered by where it is (`App(lazy=...)`) and imported
only when it is used or help lists it: `routing run` does not load the route and dead-letter tools (and
the Azure SDKs they import). Leans on Typer's Click classes (`typer.core`) and its vendored Click's
exceptions (`typer._click`, pinned with Typer); tests/test_cli_help.py walks the whole command tree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from typing import Any, get_args

import typer
from typer._click import Command as ClickCommand
from typer._click import Context, HelpFormatter
from typer._click.exceptions import MissingParameter, NoArgsIsHelpError, NoSuchOption, UsageError
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from typer.models import CommandFunctionType

from routing.cli.output import fail


def choices(values: Iterable[str | Enum]) -> dict[str, Any]:
    """`typer.Option` settings for a text option that takes one of `values` (the model's, so there is
    no second list to drift): help shows them as `[a|b]` and the shell completes them. The value is not
    checked here: it reaches the routes validator, which takes any case, suggests what was meant and
    reports every problem at once."""
    names = [str(value.value if isinstance(value, Enum) else value) for value in values]

    def complete(incomplete: str) -> list[str]:
        return [name for name in names if name.startswith(incomplete)]

    return {"metavar": f"[{'|'.join(names)}]", "autocompletion": complete}


def examples(*commands: str) -> str:
    """A command's examples, one command line each (a trailing `# ...` says what it shows): shown
    under "Examples:" as written, never wrapped, so each can be copied whole."""
    return "\n".join(commands)


def one_line(error: UsageError, ctx: Context | None = None) -> str:
    """Click's message for a usage error, as one line in the form of the router's own errors."""
    if isinstance(error, NoSuchOption) and error.possibilities:
        meant = sorted(set(error.possibilities) - {"--help"}) or ["--help"]
        text = f"{error.message} (did you mean {' or '.join(meant)}?)"
    else:
        text = error.format_message()
    text = " ".join(text.split()).rstrip(".")
    text = text.replace(": Value error, ", ": ")  # how Typer's value checks (pydantic's) begin a reason
    if text[:1].isupper() and text[1:2].islower():  # "Missing option", not "NAME"
        text = text[0].lower() + text[1:]
    where = error.ctx or ctx
    if where is not None:
        text += f" (see '{where.command_path} --help')"
    return text


def _missing(params: Sequence[Any], given: Mapping[str, Any]) -> str:
    """'--a, --b' or 'argument NAME and option --a': every required parameter that was not given."""
    absent = [p for p in params if p.required and p.value_is_missing(given.get(p.name))]
    arguments = [p.display_name_raw for p in absent if isinstance(p, TyperArgument)]
    options = [max(p.opts, key=len) for p in absent if isinstance(p, TyperOption)]
    parts = [
        f"{kind}{'s' if len(names) > 1 else ''} {', '.join(names)}"
        for kind, names in (("argument", arguments), ("option", options))
        if names
    ]
    return " and ".join(parts)


def _metavar(param: TyperArgument | TyperOption) -> str | None:
    """What a value is, in the upper-case words of the options that name theirs (MINUTES, PROPERTY):
    `[a|b]` for a choice, else TEXT, INTEGER, NUMBER or PATH; nothing for a flag."""
    if isinstance(param, TyperOption) and (param.is_flag or param.count):
        return None
    descriptor = param.type_descriptor
    if descriptor.is_choice:
        return f"[{'|'.join(str(getattr(c, 'value', c)) for c in descriptor.choices or ())}]"
    if descriptor.is_path:
        return "PATH"
    annotation = get_args(descriptor.annotation)[0] if descriptor.is_list else descriptor.annotation
    return {int: "INTEGER", float: "NUMBER"}.get(annotation, "TEXT")


class _Style(ClickCommand):
    """What `Command` and `Group` share: a mixin before Typer's class (`TyperGroup` is no `TyperCommand`)."""

    def __init__(self, *args: Any, **settings: Any) -> None:
        settings["rich_markup_mode"] = None  # Click's plain help and errors, not Rich panels
        # Help as wide as the terminal, as Rich drew it (Click's own stops at 80 columns).
        settings["context_settings"] = {"max_content_width": 10_000, **(settings.get("context_settings") or {})}
        super().__init__(*args, **settings)
        for param in self.params:
            if isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = (param.name or "").upper()
            elif isinstance(param, TyperOption) and param.metavar is None:
                param.metavar = _metavar(param)

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        # As Typer writes them, but an argument by its name alone (Typer adds its Python type).
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if isinstance(param, TyperArgument):
                arguments.append((param.metavar or "", record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        if isinstance(self, TyperGroup):
            self.format_commands(ctx, formatter)

    def format_epilog(self, ctx: Context, formatter: HelpFormatter) -> None:
        if not self.epilog:
            return
        with formatter.section("Examples"):
            for line in self.epilog.splitlines():
                formatter.write(f"{'':>{formatter.current_indent}}{line}\n")

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        given = list(args)  # the parser consumes its list
        try:
            return super().parse_args(ctx, args)
        except NoArgsIsHelpError:
            raise  # prints the help
        except MissingParameter:
            if ctx.resilient_parsing:
                raise
            # Click stops at the first; name every one missing, as the validator reports every problem.
            opts, _args, _order = self.make_parser(ctx).parse_args(args=given)
            raise fail(one_line(UsageError(f"missing {_missing(self.get_params(ctx), opts)}", ctx))) from None
        except UsageError as exc:
            if ctx.resilient_parsing:  # shell completion
                raise
            raise fail(one_line(exc, ctx)) from None


class Command(_Style, TyperCommand):
    pass


class Group(_Style, TyperGroup):
    # Sub-command groups imported when first looked up: name -> ("module:attribute" of their `App`, and
    # modules to import before it, which add commands to it). Listed after the group's own commands.
    lazy: Mapping[str, tuple[str, ...]] = {}

    def list_commands(self, ctx: Context) -> list[str]:
        return [*super().list_commands(ctx), *(name for name in self.lazy if name not in self.commands)]

    def get_command(self, ctx: Context, cmd_name: str) -> ClickCommand | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.lazy:
            where, *first = self.lazy[cmd_name]
            for module in first:
                importlib.import_module(module)
            module, _, attribute = where.partition(":")
            command = typer.main.get_command(getattr(importlib.import_module(module), attribute))
            command.name = cmd_name
            self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: Context) -> Any:
        # A sub-command it does not have ("No such command"), or none after its options.
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            raise fail(one_line(exc, ctx)) from None


class App(typer.Typer):
    """A Typer whose groups and commands are `Group` and `Command`, with no-arguments showing help;
    `lazy` its sub-command groups imported when used (`Group.lazy`), by name."""

    def __init__(self, *, lazy: Mapping[str, tuple[str, ...]] | None = None, **settings: Any) -> None:
        settings = {"no_args_is_help": True, "add_completion": False, **settings}
        group = type("LazyGroup", (Group,), {"lazy": dict(lazy)}) if lazy else Group
        super().__init__(cls=group, rich_markup_mode=None, pretty_exceptions_enable=False, **settings)

    def command(
        self, name: str | None = None, *, cls: type[TyperCommand] | None = Command, **settings: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        return super().command(name, cls=cls, **settings)
