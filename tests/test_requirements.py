"""What is deployed is what is tested. The Flex Consumption remote build installs requirements.txt as it
stands, without constraints.txt, so requirements.txt must pin every package the runtime installs, at
the version the tests run with; the command line's packages (Typer, Rich and what only they pull in)
must not ship, nor be imported by the function app; and .funcignore keeps tests, benchmarks,
node_modules and the development files out of the package. Offline: the installed distributions'
metadata (Requires-Dist, markers evaluated for this interpreter) stands in for the package index.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pathspec
import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CLI_ONLY = {canonicalize_name("typer"), canonicalize_name("rich")}


def pins(file: str) -> dict[NormalizedName, str]:
    """`name==version` lines of a requirements file (its `-r` includes are not followed)."""
    out: dict[NormalizedName, str] = {}
    for number, raw in enumerate((ROOT / file).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-r "):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{file}:{number}: not pinned with ==: {raw}"
        name = canonicalize_name(requirement.name)
        assert name not in out, f"{file}:{number}: {requirement.name} pinned twice"
        out[name] = specifiers[0].version
    return out


def closure(names: Iterable[str]) -> set[NormalizedName]:
    """Every distribution installing `names` installs here: their Requires-Dist, followed transitively,
    markers evaluated for this interpreter (extras followed where a requirement asks for them)."""
    seen: set[tuple[NormalizedName, str]] = set()
    stack: list[tuple[str, str]] = [(name, "") for name in names]
    while stack:
        name, extra = stack.pop()
        if (canonicalize_name(name), extra) in seen:
            continue
        seen.add((canonicalize_name(name), extra))
        for text in distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                stack.append((requirement.name, ""))
                stack.extend((requirement.name, e) for e in requirement.extras)
    return {name for name, _extra in seen}


def installed(name: str) -> str:
    try:
        return distribution(name).version
    except PackageNotFoundError:
        pytest.fail(f"{name} is pinned but not installed in this environment: run `make test`, which installs it")


@cache
def runtime() -> dict[NormalizedName, str]:
    return pins("requirements.txt")


@cache
def constraints() -> dict[NormalizedName, str]:
    return pins("constraints.txt")


@pytest.mark.parametrize(("file", "base"), [("requirements.txt", ()), ("requirements-cli.txt", ("requirements.txt",))])
def test_each_requirements_file_pins_everything_it_installs_at_the_tested_version(
    file: str, base: tuple[str, ...]
) -> None:
    pinned = pins(file)
    below = {name: version for b in base for name, version in pins(b).items()}
    needed = closure(pinned) - set(below)
    assert not sorted(needed - set(pinned)), f"{file}: installed by its packages but not pinned there"
    assert not sorted(set(pinned) - needed), f"{file}: pinned but installed by none of its packages (or {base})"
    for name, version in pinned.items():
        assert version == installed(name), f"{file}: {name}=={version}, but the tests run with {installed(name)}"
        constrained = constraints().get(name)
        assert constrained == version, f"{file}: {name}=={version}, constraints.txt has {constrained}"


def test_the_command_line_packages_do_not_ship_with_the_function_app() -> None:
    assert not CLI_ONLY & set(runtime()), "typer/rich pinned in requirements.txt: the remote build would install them"
    assert not CLI_ONLY & closure(runtime()), "a runtime package pulls in typer or rich"
    assert set(pins("requirements-cli.txt")) >= CLI_ONLY
    lines = {
        name: [line.strip() for line in (ROOT / name).read_text(encoding="utf-8").splitlines()]
        for name in ("requirements-cli.txt", "requirements-dev.txt")
    }
    assert "-r requirements.txt" in lines["requirements-cli.txt"]
    assert "-r requirements-cli.txt" in lines["requirements-dev.txt"]


def test_importing_the_function_app_loads_only_packages_requirements_txt_installs() -> None:
    # A fresh interpreter, as the worker starts one: what `import function_app` loads, by distribution.
    # What the interpreter loads by itself (site hooks such as setuptools' `_distutils_hack`) is not ours.
    program = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import function_app\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROUTES_", "DEADLETTER_", "APPLICATIONINSIGHTS_"))}
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout)
    owners = packages_distributions()
    shipped = closure(runtime())
    # `routing` itself ships as files (the editable install of pyproject's command names it a distribution).
    ours = canonicalize_name(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"])
    loaded = {canonicalize_name(d) for m in modules for d in owners.get(m, [])} - {ours}
    assert "azure-functions" in loaded  # the check sees distributions at all
    assert not sorted(loaded - shipped), "the function app imports packages the deployment does not install"
    assert not {"typer", "rich", "click"} & set(modules)


def shipped_files() -> list[str]:
    """The files a deployment would package: everything here that .funcignore does not exclude."""
    spec = pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text(encoding="utf-8").splitlines())
    out = []
    for folder, dirs, files in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT)
        # Pruned for speed only: each of these is checked against .funcignore below.
        dirs[:] = [d for d in dirs if d not in {".git", ".venv", ".venv-infra", "node_modules"}]
        for name in files:
            path = (relative / name).as_posix()
            if not spec.match_file(path):
                out.append(path)
    return out


def test_funcignore_keeps_tests_bench_node_modules_and_development_files_out() -> None:
    spec = pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text(encoding="utf-8").splitlines())
    kept_out = [
        "tests/test_requirements.py",
        "bench/__main__.py",
        "node_modules/azurite/package.json",
        ".venv/bin/python",
        ".venv-infra/bin/python",
        "infra/main.bicep",
        "docs/DEPLOY.md",
        "local.settings.json",
        "requirements-cli.txt",
        "requirements-dev.txt",
        "requirements-infra.txt",
        "constraints.txt",
        "constraints-infra.txt",
        "Makefile",
        "package.json",
        "pyproject.toml",
        ".ci/run",
        "routing/__main__.py",
        "routing/cli/main.py",
    ]
    assert not [p for p in kept_out if not spec.match_file(p)], "would be deployed"
    shipped = shipped_files()
    for needed in ("function_app.py", "host.json", "requirements.txt", "routing/app.py", "routing/pipeline.py"):
        assert needed in shipped
    assert not [p for p in shipped if p.split("/")[0] in {"tests", "bench", "node_modules", ".venv"}]


def test_no_deployed_module_imports_a_command_line_package() -> None:
    # The CLI modules stay out of the package: they import what the deployment does not install.
    offenders = []
    for path in (p for p in shipped_files() if p.endswith(".py")):
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"), path)
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            offenders += [f"{path}: {n}" for n in names if canonicalize_name(n.split(".")[0]) in CLI_ONLY]
    assert not offenders
