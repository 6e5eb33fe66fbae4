"""The command line's help and errors read as `az`'s do, for people coming from `az iot hub
message-route` and `az dt route`: every command shows an example of its use, a flag is just its name, a
choice shows its values (the model's) and the shell completes them, `routes add` marks what it needs
and names everything missing at once, every command that prints takes `-o json`, and every error is one
`error:` line. The tests walk the whole command tree, so a command added without these fails here.

Help is read at 80 columns (Typer's test runner draws Click's help at 80; Rich's output takes COLUMNS).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from routing.cli import deadletters, main, output, routes, status
from routing.cli.command import Command, Group
from routing.cli.main import app
from routing.model import EndpointType, EnvelopeFormat
from routing.routes.filters import FilterLanguage
from routing.routes.table import PARTITIONING, REQUIRED

ROOT = Path(__file__).resolve().parent.parent
WIDTH = {"COLUMNS": "80", "TERMINAL_WIDTH": "80"}
cli = CliRunner()


def tree(command: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of `routing` (groups too) with its path, the root first; asked of each group as
    Click asks (`list_commands`, `get_command`), which loads the groups the root imports when used."""
    command = command or typer.main.get_command(app)
    yield path, command
    if hasattr(command, "commands"):
        ctx = typer.Context(command)
        for name in command.list_commands(ctx):
            yield from tree(command.get_command(ctx, name), (*path, name))


COMMANDS = [path for path, _command in tree()]
LEAVES = [path for path, command in tree() if not hasattr(command, "commands")]


def name(path: tuple[str, ...]) -> str:
    return " ".join(("routing", *path))


def invoke(*args: str, **env: str) -> Any:
    return cli.invoke(app, list(args), prog_name="routing", env={**WIDTH, **env})


def help_of(path: tuple[str, ...]) -> str:
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def section(text: str, title: str) -> list[str]:
    """The lines of a help section ("Options:", "Examples:"), up to the next one."""
    lines = text.splitlines()
    start = lines.index(f"{title}:") + 1
    end = next((i for i in range(start, len(lines)) if re.match(r"^\S.*:$", lines[i])), len(lines))
    return [line for line in lines[start:end] if line.strip()]


def option_help(text: str, option: str) -> str:
    """An option's entry in a help's Options section: its line and those continuing it, joined."""
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    for line in section(text, "Options"):
        if re.match(r"^  -", line):
            current = [line.strip()]
            for flag in re.findall(r"--?[\w-]+", line.split("  ")[1]):
                entries[flag] = current
        else:
            current.append(line.strip())
    return " ".join(entries[option])


def values(choices: Any) -> list[str]:
    return [str(c.value if isinstance(c, Enum) else c) for c in choices]


# --- examples --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMMANDS, ids=name)
def test_every_command_shows_an_example_that_runs_it(path: tuple[str, ...]) -> None:
    examples = [line.strip() for line in section(help_of(path), "Examples")]
    assert examples, f"`{name(path)} --help` has no examples"
    assert all(e.startswith("routing ") for e in examples), examples
    assert any(e == name(path) or e.startswith(f"{name(path)} ") for e in examples), examples


def test_every_command_has_the_shared_help_and_error_style() -> None:
    # What gives a command its examples section, its flags, choices and one-line errors (routing/cli/command.py).
    for path, command in tree():
        assert isinstance(command, Group if hasattr(command, "commands") else Command), name(path)


# --- flags ------------------------------------------------------------------------------------------------

# The only flags with a negative twin: the tri-state fields of `add` and `update` (not given, on, off).
NEGATIVE_TWINS = {"--disabled", "--no-fallback"}


@pytest.mark.parametrize("path", COMMANDS, ids=name)
def test_a_flag_shows_its_name_alone(path: tuple[str, ...]) -> None:
    text = help_of(path)
    assert not re.search(r"<(bool|str|int|float|path|list\[\w+\])( range)?>", text), "a Python type in the help"
    command = dict(tree())[path]
    for param in command.params:
        if getattr(param, "is_flag", False):
            entry = option_help(text, param.opts[0])
            shown = entry.split("  ")[0]
            assert set(re.split(r"[ ,/]+", shown)) == {*param.opts, *param.secondary_opts}, entry
            assert set(param.secondary_opts) <= NEGATIVE_TWINS, entry


def test_only_the_tri_state_fields_have_a_negative_twin() -> None:
    twins = {opt for _path, command in tree() for param in command.params for opt in param.secondary_opts}
    assert twins == NEGATIVE_TWINS


# --- choices ----------------------------------------------------------------------------------------------

CHOICES = [
    ("--type", values(EndpointType)),
    ("--format", values(EnvelopeFormat)),
    ("--partitioning", values(PARTITIONING)),
    ("--filter-language", values(FilterLanguage)),
]


@pytest.mark.parametrize("command", ["add", "update"])
@pytest.mark.parametrize(("option", "allowed"), CHOICES, ids=[o for o, _v in CHOICES])
def test_a_choice_shows_the_models_values_and_the_shell_completes_them(
    command: str, option: str, allowed: list[str]
) -> None:
    assert option_help(help_of(("routes", command)), option).startswith(f"{option} [{'|'.join(allowed)}]")
    words = f"routing routes {command} raw {option} "
    completed = invoke(COMP_WORDS=words, COMP_CWORD="5", _ROUTING_COMPLETE="complete_bash")
    assert completed.stdout.split() == allowed
    first = allowed[0][:2]
    partial = invoke(COMP_WORDS=words + first, COMP_CWORD="5", _ROUTING_COMPLETE="complete_bash")
    assert partial.stdout.split() == [v for v in allowed if v.startswith(first)]


def test_a_value_outside_the_choices_reaches_the_validator_which_names_every_problem(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(
        "routes", "add", "x", "--type", "EventGrd", "--event-types", "SensorChange", "--connection", "BUS",
        "--path", "q", "--format", "CloudEvnts", "--partitioning", "rooter", "--filter-language", "iot-hubb",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "has 4 problems" in result.stderr
    assert "unknown endpoint type 'EventGrd' (did you mean 'EventGrid'?)" in result.stderr
    assert "unknown filter language 'iot-hubb' (did you mean 'iothub'?)" in result.stderr
    assert "'CloudEvnts'" in result.stderr and "'rooter'" in result.stderr


def test_a_choice_is_taken_in_any_case_as_the_routes_file_takes_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROUTES_STORAGE", raising=False)
    result = invoke(
        "routes", "add", "x", "--type", "servicebus", "--event-types", "SensorChange", "--connection", "BUS",
        "--path", "q", "--format", "cloudeventschemav1_0", "--filter-language", "DigitalTwins",
    )  # fmt: skip
    # Valid: it goes on to look for the routes table.
    assert result.exit_code == 2 and result.stderr.startswith("error: no routes storage"), result.stderr


# --- required options ---------------------------------------------------------------------------------------


def flag_of(field: str) -> str:
    return "--" + re.sub("([A-Z])", r"-\1", field).lower()  # eventTypes: --event-types


REQUIRED_OPTIONS = [flag_of(field) for field in REQUIRED if field != "name"]


def test_add_marks_the_options_the_routes_file_requires() -> None:
    text = help_of(("routes", "add"))
    assert REQUIRED_OPTIONS == ["--type", "--event-types", "--connection", "--path"]
    for option in ["--type", "--event-types", "--connection", "--secondary-connection", "--path", "--format"]:
        assert ("[required]" in option_help(text, option)) is (option in REQUIRED_OPTIONS), option
    assert "[required]" not in " ".join(section(help_of(("routes", "update")), "Options"))


def test_add_names_every_missing_option_in_one_error() -> None:
    result = invoke("routes", "add", "raw")
    assert result.exit_code == 2 and result.stdout == ""
    assert (
        result.stderr
        == "error: missing options --type, --event-types, --connection, --path (see 'routing routes add --help')\n"
    )
    some = invoke("routes", "add", "raw", "--type", "EventHub", "--path", "raw")
    assert some.stderr == "error: missing options --event-types, --connection (see 'routing routes add --help')\n"


# --- output -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", LEAVES, ids=name)
def test_every_command_that_prints_takes_o_json(path: tuple[str, ...]) -> None:
    assert option_help(help_of(path), "--output").startswith("-o, --output [table|json]")


# --- errors -------------------------------------------------------------------------------------------------

# What was typed, the command whose help it points to, and Click's complaint in the router's words.
USAGE_ERRORS = [
    pytest.param("routes lst", "routes", "no such command 'lst'. Did you mean 'list'?", id="unknown command"),
    pytest.param(
        "routes list --tabel x", "routes list", "no such option: --tabel (did you mean --table?)", id="unknown option"
    ),
    pytest.param(
        "routes list -o xml",
        "routes list",
        "invalid value for '--output' / '-o': 'xml' is not one of 'table', 'json'",
        id="bad choice",
    ),
    pytest.param("deadletters show", "deadletters show", "missing argument NAME", id="missing argument"),
    pytest.param(
        "deadletters list --since", "deadletters list", "option '--since' requires an argument", id="missing value"
    ),
    pytest.param(
        "routes validate extra", "routes validate", "got unexpected extra argument(s) (extra)", id="extra argument"
    ),
    pytest.param(
        "run --events e --routes r --out o --batch-size 0",
        "run",
        "invalid value for '--batch-size': Input should be greater than or equal to 1",
        id="out of range",
    ),
    pytest.param("--bogus", "", "no such option: --bogus", id="at the root"),
]


@pytest.mark.parametrize(("typed", "command", "message"), USAGE_ERRORS)
def test_a_usage_error_is_one_error_line(typed: str, command: str, message: str) -> None:
    result = invoke(*typed.split())
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: {message} (see '{name(tuple(command.split()))} --help')\n"


def test_the_commands_own_errors_have_the_same_form(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROUTES_STORAGE", raising=False)
    result = invoke("routes", "list")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: no routes storage: pass --connection-string")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["routes", "list", "--connection-string", "UseDevelopmentStorage=true", "--table", "AccountKey=c2VjcmV0"],
        ["routes", "list", "-o", "AccountKey=c2VjcmV0"],
    ],
    ids=["a command's own error", "a usage error"],
)
def test_an_error_never_shows_a_key(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert "AccountKey=***" in result.stderr and "c2VjcmV0" not in result.stderr


def test_the_commands_print_through_one_output_module() -> None:
    for module in (main, routes, status, deadletters):
        source = Path(str(module.__file__)).read_text(encoding="utf-8")
        assert "Console(" not in source and not re.search(r"^def (fail|warn)\(", source, re.M), module.__name__
        assert "error:[/]" not in source and "warning:[/]" not in source, module.__name__
        assert module.fail is output.fail, module.__name__


# --- version and completion ---------------------------------------------------------------------------------


def test_the_root_offers_version_and_shell_completion() -> None:
    options = " ".join(section(help_of(()), "Options"))
    assert "--version" in options and "--install-completion" in options and "--show-completion" in options
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"routing {version}\n"


def test_the_completion_script_completes_routing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("typer.completion._get_shell_name", lambda: "bash")
    script = invoke("--show-completion")
    assert script.exit_code == 0
    assert "_ROUTING_COMPLETE=complete_bash" in script.stdout and script.stdout.rstrip().endswith(" routing")
    commands = invoke(COMP_WORDS="routing routes ", COMP_CWORD="2", _ROUTING_COMPLETE="complete_bash")
    assert commands.stdout.split() == list(dict(tree())[("routes",)].commands)
