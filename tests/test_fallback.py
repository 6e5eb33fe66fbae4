"""IoT Hub's fallback route: an endpoint with `"fallback": true` receives, among its event types, every
classified event that no other enabled endpoint took (filters included); at most one per table, no
filter of its own; the dry run, the local run's summary and the Table's rows say so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from routing.cli.main import app
from routing.errors import RouteTableError
from routing.ingest.classify import classify
from routing.model import Event
from routing.pipeline import Router, StaticRoutes
from routing.routes.table import RouteTable, parse_routes
from routing.routes.tables import parse_rows, to_entity
from tests.azurite import Azurite
from tests.conftest import sensor_data, telemetry, twin_event
from tests.fakes import FakeSenders, FakeWire, MemoryDeadLetters
from tests.test_routes_cli import Routes

cli = CliRunner()

HOT = {
    "name": "hot",
    "type": "EventHub",
    "eventTypes": ["DeviceMessages"],
    "connection": "A",
    "path": "hot",
    "filter": "$system['iothub-connection-device-id'] = 'dev-hot'",
}
ALERTS = {"name": "alerts", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "B", "path": "q"}
FALLBACK = {
    "name": "everything-else",
    "type": "EventHub",
    "eventTypes": ["DeviceMessages", "SensorChange", "SpaceChange"],
    "connection": "C",
    "path": "rest",
    "fallback": True,
}


def targets(table: RouteTable, message: Any) -> list[str]:
    [event] = [r for r in classify(message) if isinstance(r, Event)]
    return [e.name for e in table.targets(event)]


def test_the_fallback_takes_what_no_other_enabled_endpoint_took_filters_included() -> None:
    table = parse_routes([HOT, ALERTS, FALLBACK])
    assert targets(table, telemetry("dev-hot", b"1", seq=0)) == ["hot"]
    assert targets(table, telemetry("dev-cold", b"1", seq=1)) == ["everything-else"]  # the filter said no
    sensor = twin_event(sensor_data("s-1"), seq=2, properties={"Type": "SensorChange"})
    assert targets(table, sensor) == ["alerts"]
    space = twin_event({"Id": "r-1", "Type": "Space"}, seq=3, properties={"Type": "SpaceChange"})
    assert targets(table, space) == ["everything-else"]  # nobody else takes SpaceChange
    # Only among its own types: a TopologyOperation nobody takes stays unrouted.
    topology = twin_event({"Id": "t-1", "Type": "Devices"}, seq=4, properties={"Type": "TopologyOperation"})
    assert targets(table, topology) == []
    # A disabled endpoint took nothing: the fallback takes its events; a disabled fallback takes none.
    off = parse_routes([{**ALERTS, "enabled": False}, FALLBACK])
    assert targets(off, sensor) == ["everything-else"]
    assert targets(parse_routes([ALERTS, {**FALLBACK, "enabled": False}]), space) == []


def test_the_pipeline_delivers_to_the_fallback_and_counts_nothing_unrouted_it_took() -> None:
    wire = FakeWire(mixed=True)
    router = Router(
        routes=StaticRoutes(parse_routes([HOT, FALLBACK])), senders=FakeSenders(wire), dead_letters=MemoryDeadLetters()
    )
    report = router.route([telemetry("dev-hot", b"1", seq=0), telemetry("dev-cold", b"2", seq=1)])
    assert [m.order_key for m in wire.delivered["hot"]] == ["dev-hot"]
    assert [m.order_key for m in wire.delivered["everything-else"]] == ["dev-cold"]
    assert not report.unrouted


def test_a_table_has_at_most_one_fallback_and_a_fallback_has_no_filter() -> None:
    with pytest.raises(RouteTableError) as two:
        parse_routes([FALLBACK, {**FALLBACK, "name": "second"}])
    assert "'everything-else' is the fallback already: a table has at most one" in str(two.value)
    with pytest.raises(RouteTableError) as filtered:
        parse_routes([{**FALLBACK, "filter": "$body.x = 1"}])
    assert "it cannot have a filter" in str(filtered.value)
    # Written around the CLI, a second fallback row makes that row invalid, so the table is not used.
    endpoints = parse_routes([FALLBACK, ALERTS]).endpoints
    second = to_entity(parse_routes([{**ALERTS, "fallback": True}]).endpoints[0])
    loaded = parse_rows([to_entity(endpoints[0]), second])
    assert [row.row_key for row in loaded.invalid] == ["alerts"]
    assert "at most one" in str(loaded.problems[0])
    assert parse_routes([FALLBACK]).endpoints[0].to_dict()["fallback"] is True


def test_the_dry_run_says_the_fallback_took_it_or_why_not(tmp_path: Path) -> None:
    routes_file = tmp_path / "routes.json"
    routes_file.write_text(json.dumps([HOT, FALLBACK]))
    iot = ["routes", "test", "--body", "1", "--routes", str(routes_file), "-o", "json", "--system-properties"]
    [cold] = json.loads(cli.invoke(app, [*iot, '{"iothub-connection-device-id": "dev-cold"}']).stdout)
    assert cold["result"] == "routed"
    [sent] = cold["endpoints"]
    assert sent["name"] == "everything-else" and sent["fallback"] is True
    assert "no other enabled endpoint took" in sent["why"]
    [hot] = json.loads(cli.invoke(app, [*iot, '{"iothub-connection-device-id": "dev-hot"}']).stdout)
    assert [e["name"] for e in hot["endpoints"]] == ["hot"]
    assert {"name": "everything-else", "why": "the fallback: other endpoints took the event"}.items() <= next(
        e for e in hot["notSent"] if e["name"] == "everything-else"
    ).items()


def test_the_local_run_summary_names_the_fallback(tmp_path: Path) -> None:
    (tmp_path / "routes.json").write_text(json.dumps([HOT, FALLBACK]))
    line = {
        "body": {"n": 1},
        "systemProperties": {"iothub-connection-device-id": "dev-cold", "iothub-message-source": "Telemetry"},
    }
    (tmp_path / "events.jsonl").write_text(json.dumps(line) + "\n")
    result = cli.invoke(
        app,
        ["run", "--events", str(tmp_path / "events.jsonl"), "--routes", str(tmp_path / "routes.json"),
         "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "everything-else (fallback)" in result.stdout and "0 dead letters" in result.stdout, result.stdout
    as_json = cli.invoke(
        app,
        ["run", "--events", str(tmp_path / "events.jsonl"), "--routes", str(tmp_path / "routes.json"),
         "--out", str(tmp_path / "out2"), "-o", "json"],
    )  # fmt: skip
    assert json.loads(as_json.stdout)["fallback"] == "everything-else"


def test_the_cli_refuses_a_second_fallback_in_the_table(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ROUTES_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    routes = Routes(azurite.connection_string)
    base = ["--type", "EventHub", "--event-types", "DeviceMessages", "--connection", "C", "--path", "p"]
    assert routes("add", "first", *base, "--fallback").exit_code == 0
    second = routes("add", "second", *base, "--fallback")
    assert second.exit_code == 2 and "'first' is the fallback already" in second.output
    assert routes("add", "second", *base).exit_code == 0
    assert routes("update", "second", "--fallback").exit_code == 2
    assert routes("update", "first", "--no-fallback").exit_code == 0
    assert routes("update", "second", "--fallback").exit_code == 0
    assert [e["name"] for e in routes.json("list") if e.get("fallback")] == ["second"]
