"""The command installs like a tool: `make` puts `routing` into .venv (pyproject [project.scripts],
editable), and it runs from any folder, without the venv activated."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND = Path(sys.executable).with_name("routing")


def test_the_routing_command_runs_from_any_folder(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no venv activated, no PYTHONPATH
    result = subprocess.run(
        [str(COMMAND), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: routing" in result.stdout
    assert "routes" in result.stdout and "deadletters" in result.stdout


def test_the_script_names_the_cli_entry_point() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"routing": "routing.cli.main:main"}
    assert project["requires-python"] == ">=3.11,<3.13"


def test_make_alone_lists_what_each_target_does() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "MAKEFLAGS": ""},
    )
    assert result.returncode == 0, result.stderr
    for target in ("run", "test", "azurite", "bench"):
        assert f"  {target} " in result.stdout


def test_the_command_says_its_version(tmp_path: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = subprocess.run(
        [str(COMMAND), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == f"routing {version}"
