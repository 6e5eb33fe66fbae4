"""The stdlib-json router `routing run` is measured against (bench/run_baseline.py, issue #15 target 5)
must write what `routing run` writes for the benchmark's events file, or the ratio measures less work.

Both run as the benchmark runs them, each in its own process, over 2,000 events of the benchmark's
mixed corpus (bench/memory.py `write_events`) and its five-endpoint routes (bench/routes.py). Compared:
the same set of files, and each endpoint file's records parsed as JSON, one by one in file order (the
baseline groups per batch and order key as the pipeline does, so the order is the same, not only the
order per key). Every field counts: ids, envelopes (through `bodyBase64`, their exact bytes), properties.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.memory import write_events
from bench.routes import write_routes

ROOT = Path(__file__).resolve().parent.parent
EVENTS = 2_000


def records(folder: Path) -> dict[str, list[dict[str, Any]]]:
    return {p.name: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted(folder.glob("*.jsonl"))}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list[dict[str, Any]]], ...]:
    folder = tmp_path_factory.mktemp("baseline")
    events = folder / "events.jsonl"
    write_events(events, events=EVENTS, devices=1_000)
    routes = write_routes(folder / "routes.json", 5)
    found = []
    for name, module in (("router", "routing"), ("baseline", "bench.run_baseline")):
        out = folder / name
        command = [sys.executable, "-m", module] + (["run"] if module == "routing" else [])
        command += ["--events", str(events), "--routes", str(routes), "--out", str(out)]
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        found.append(records(out))
    return tuple(found)


def test_baseline_writes_the_routers_files_record_for_record(
    outputs: tuple[dict[str, list[dict[str, Any]]], ...],
) -> None:
    router, baseline = outputs

    assert sorted(baseline) == sorted(router)
    assert "deadletter.jsonl" not in router  # the corpus has no bad lines: nothing the baseline skips
    for name, expected in router.items():
        assert len(baseline[name]) == len(expected), name
        for position, (got, want) in enumerate(zip(baseline[name], expected, strict=True)):
            assert got == want, f"{name} record {position}"


def test_the_comparison_sees_every_endpoint_and_wire_form(
    outputs: tuple[dict[str, list[dict[str, Any]]], ...],
) -> None:
    # A comparison of nearly nothing would pass too: the corpus reaches every endpoint, with every kind
    # of message the baseline writes (telemetry, both envelope formats, the keyed and unkeyed endpoints).
    router, _baseline = outputs
    assert len(router) == 5
    assert all(len(lines) > 100 for lines in router.values())
    types = {r["eventType"] for lines in router.values() for r in lines}
    assert types == {"DeviceMessages", "TopologyOperation", "SpaceChange", "SensorChange", "UdfCustom"}
    content_types = {r["contentType"] for lines in router.values() for r in lines}
    assert content_types == {"application/json", "application/cloudevents+json; charset=utf-8"}
