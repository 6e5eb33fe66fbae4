"""What every command prints with: the two consoles (results on stdout, everything else on stderr), the
output formats (`-o table|json`), and the one form of an error and a warning.

An error is one line, `error: ...` on stderr, with any key or SAS signature in it replaced by `***`
(an SDK error can quote a request URL, and a mistyped option value can be a connection string), and
the command exits 2. Click's usage errors (an unknown option, a bad value, missing options) are put in
the same form by `routing.cli.command`. Touches stdout and stderr only.
"""

from __future__ import annotations

import re
import sys
from enum import StrEnum
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from routing.deadletters import redact

console = Console()
errors = Console(stderr=True)

# The exit code of every error, a usage error or a failure. 1 is left for answers a script asks for
# (`routes validate` found invalid rows, `routes test` would not route, `--check` found trouble).
ERROR_EXIT = 2


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


OutputOption = Annotated[OutputFormat, typer.Option("--output", "-o", help="A table for people or JSON for scripts.")]


def write_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


# Control characters of a message shown on a terminal (an escape sequence in a body could rewrite the screen).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with control characters (but newline and tab) shown as `\\xNN`."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def fail(message: str) -> typer.Exit:
    """Print the error and return the exit to raise: `raise fail("...")`."""
    # Soft wrap: an error is read, and pasted into searches, as the lines it was written in. A list of
    # problems (the validator's) follows its first line, indented.
    errors.print(f"[bold red]error:[/] {escape(redact(printable(message)))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=ERROR_EXIT)


def warn(message: str) -> None:
    errors.print(f"[bold yellow]warning:[/] {escape(redact(printable(message)))}", highlight=False, soft_wrap=True)
