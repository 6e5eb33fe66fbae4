"""The layers contract (pyproject `[tool.importlinter]`, run by `make lint`) holds for routing/ as it is
and fails as soon as a module imports from a floor above its own."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "routing", tmp_path / "routing", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contract_is_kept_by_routing_as_it_is(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("model.py", "routing.pipeline"),  # the ground reaching for a use case
        ("routes/table.py", "routing.deliver.envelope"),  # the route table reaching for delivery
        ("ingest/classify.py", "routing.routes.table"),
        ("pipeline.py", "routing.replay"),  # one use case into its sibling
    ],
)
def test_an_upward_import_breaks_the_contract(tree: Path, module: str, upward: str) -> None:
    path = tree / "routing" / module
    path.write_text(path.read_text() + f"\nimport {upward}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and upward in result.stdout
