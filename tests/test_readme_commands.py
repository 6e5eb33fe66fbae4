"""The README's `routing ...` commands, run as written (so they cannot drift from the CLI): every line of
its shell blocks that starts with `routing` or `.venv/bin/routing`, in order, block by block, against a
real Azurite (the storage the README's own steps start), with the optional parts in `[...]` left out.

A command that asks a person (`routes delete`) is answered yes at its prompt, as at a terminal."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from typer.testing import CliRunner

from routing.cli.main import app
from tests.azurite import Azurite

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
cli = CliRunner()


def blocks() -> list[list[str]]:
    """Each ```sh block's routing commands: continuations joined, comments and `[...]` options dropped."""
    found: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands = []
        for raw in joined.splitlines():
            line = re.sub(r"\s+#\s.*$", "", raw).strip()  # a trailing comment
            if not re.match(r"^(\.venv/bin/)?routing\s", line) or "|" in line.split("'")[0]:
                continue  # not a routing command, or one piped into another
            commands.append(re.sub(r"\s*\[[^\]]*\]", "", line))  # optional parts, as the README marks them
        if commands:
            found.append(commands)
    return found


def test_the_readme_has_routing_commands_to_run() -> None:
    every = [c for block in blocks() for c in block]
    assert len(every) >= 15, every
    assert any(c.startswith("routing routes add ") for c in every)


@pytest.fixture
def workplace(tmp_path: Path, azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    # `routes test --event event.json`: one line of the local runner's format, as the README says.
    (tmp_path / "event.json").write_text((ROOT / "samples" / "events.jsonl").read_text().splitlines()[0])
    monkeypatch.chdir(tmp_path)
    container = f"dl{uuid.uuid4().hex[:12]}"
    ContainerClient.from_connection_string(azurite.connection_string, container).create_container()
    for name, value in {
        "ROUTES_STORAGE": azurite.connection_string,
        "ROUTES_TABLE": f"readme{uuid.uuid4().hex[:12]}",
        "DEADLETTER_STORAGE": azurite.connection_string,
        "DEADLETTER_CONTAINER": container,
    }.items():
        monkeypatch.setenv(name, value)
    # A person at a terminal answers the confirmation; the test answers yes.
    monkeypatch.setattr("routing.cli.routes.interactive", lambda: True)
    return tmp_path


def run(command: str) -> Any:
    words = shlex.split(command)
    assert words[0] in ("routing", ".venv/bin/routing"), command
    return cli.invoke(app, words[1:], input="y\n")


@pytest.mark.parametrize("number", range(len(blocks())))
def test_each_readme_block_runs_as_written(workplace: Path, number: int) -> None:
    for command in blocks()[number]:
        result = run(command)
        # `routes test` exits 1 when the event would reach no endpoint (its documented CI use), and
        # `routes status --check` when something waits: both are answers, not errors.
        allowed = {0, 1} if " routes test " in f" {command} " or "--check" in command else {0}
        assert result.exit_code in allowed, f"{command}\n{result.output}"
        if "-o json" in command:
            json.loads(result.stdout)
