"""An invalid route row never swallows events, against a real Azurite: a routes table with an invalid row
(written around the CLI, as Storage Explorer would) is not used, so every event still goes where the
last good table sends it, and at a cold start the invocation fails so the checkpoint holds. The
operator sees the row named in the log, the error, the metric (tests/test_observability.py) and the
CLI's `list`/`validate`."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient, UpdateMode

from routing.connections import Connection
from routing.deadletters import FileDeadLetters
from routing.deliver.senders import FileSender
from routing.model import IngressMessage
from routing.pipeline import BatchReport, Router
from routing.routes.table import Endpoint, parse_endpoint
from routing.routes.tables import (
    PARTITION_KEY,
    RouteRows,
    RoutesRefusedError,
    RoutesUnavailableError,
    TableRoutes,
    parse_row,
    table_client,
    to_entity,
)
from tests.azurite import Azurite
from tests.conftest import sensor_data, telemetry, twin_event

REFRESH = 30.0
Entity = dict[str, Any]


def endpoint(name: str, *event_types: str) -> Endpoint:
    raw = {"name": name, "type": "EventHub", "eventTypes": list(event_types), "connection": "HUB", "path": "p"}
    parsed = parse_endpoint(raw, "test")
    assert isinstance(parsed, Endpoint), parsed
    return parsed


def changed(**properties: Any) -> Callable[[Entity], Entity]:
    return lambda entity: {**entity, **properties}


def without(name: str) -> Callable[[Entity], Entity]:
    return lambda entity: {k: v for k, v in entity.items() if k != name}


# Each a row someone could write in Storage Explorer (the CLI validates every write, so it cannot).
BAD_ROWS: dict[str, Callable[[Entity], Entity]] = {
    "Enabled typed as text": changed(Enabled="false"),
    "Enabled typed as a number": changed(Enabled=0),
    "an unknown event type": changed(EventTypes="SensorChange,Weather"),
    "no event types": changed(EventTypes=""),
    "an unknown endpoint type": changed(Type="Kafka"),
    "telemetry to Service Bus": changed(Type="ServiceBus", EventTypes="DeviceMessages"),
    "a connection string instead of a setting name": changed(
        Connection="Endpoint=sb://x.servicebus.windows.net/;SharedAccessKey=abc"
    ),
    "a misspelt property": changed(Enabeld=False),
    "a filter that does not parse": changed(Filter="$body.Value >"),
    "enrichments that are not JSON": changed(Enrichments="{site: 1"),
    "no path": without("Path"),
    "an unknown format": changed(Format="Avro"),
    "partitioning on a Service Bus endpoint": changed(Type="ServiceBus", Partitioning="service"),
    "a row key that is not the lower-cased name": changed(RowKey="alerts-2"),
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def batch() -> list[IngressMessage]:
    sensors = [twin_event(sensor_data(f"s-{i}"), seq=i, properties={"Type": "SensorChange"}) for i in range(3)]
    return [*sensors, telemetry("dev-1", b"{}", seq=9)]


def accounted(report: BatchReport) -> dict[str, Any]:
    delivered: dict[str, int] = {}
    for (name, _event_type), count in report.delivered.items():
        delivered[name] = delivered.get(name, 0) + count
    return {"delivered": delivered, "dead letters": dict(report.dead_letters), "unrouted": dict(report.unrouted)}


# Every event of `batch()` where the good table sends it: each one delivered, none lost or unaccounted.
AS_THE_GOOD_TABLE_ROUTES = {"delivered": {"alerts": 3, "raw": 1}, "dead letters": {}, "unrouted": {}}


def router_for(store: TableRoutes, out: Path) -> Router:
    senders = FileSender(out)
    return Router(routes=store, senders=lambda _e: senders, dead_letters=FileDeadLetters(out))


@pytest.mark.parametrize("kind", BAD_ROWS)
def test_an_invalid_row_leaves_no_event_unaccounted(
    kind: str, azurite: Azurite, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"routes{uuid.uuid4().hex[:16]}"
    client = table_client(Connection(setting="test", secret=azurite.connection_string), name)
    editor = RouteRows(client)
    editor.add(endpoint("alerts", "SensorChange"))
    editor.add(endpoint("raw", "DeviceMessages"))
    clock = Clock()
    warm = TableRoutes(client, refresh_seconds=REFRESH, clock=clock)
    assert accounted(router_for(warm, tmp_path / "before").route(batch())) == AS_THE_GOOD_TABLE_ROUTES

    bad = BAD_ROWS[kind](to_entity(endpoint("alerts", "SensorChange")))
    assert isinstance(parse_row(bad), list), f"{kind}: the row is valid, so this case tests nothing"
    write_around_the_cli(client, bad)
    bad_key = str(bad["RowKey"])

    clock.now += REFRESH
    with caplog.at_level(logging.ERROR, logger="routing.routes.tables"):
        report = router_for(warm, tmp_path / "warm").route(batch())
    assert accounted(report) == AS_THE_GOOD_TABLE_ROUTES  # on the last good table, whole
    assert warm.last_error is not None and f"row '{bad_key}'" in warm.last_error
    logged = [r.getMessage() for r in caplog.records if r.name == "routing.routes.tables"]
    assert any(f"row '{bad_key}' is invalid" in m for m in logged)
    assert not any("SharedAccessKey" in m for m in logged)

    # A cold start has no last good table: the invocation fails, before anything is sent or dead-lettered.
    cold = TableRoutes(client, refresh_seconds=REFRESH, clock=Clock())
    with pytest.raises(RoutesRefusedError, match=f"row '{bad_key}'") as raised:
        router_for(cold, tmp_path / "cold").route(batch())
    assert isinstance(raised.value, RoutesUnavailableError)
    assert not (tmp_path / "cold").exists()
    # What the CLI's `list` and `validate` read names the row too.
    assert [row.row_key for row in editor.load().invalid] == [bad_key]

    # Fixed (through the CLI): both pick it up, the warm store at its next refresh.
    for row in editor.entities():
        client.delete_entity(PARTITION_KEY, row["RowKey"])
    editor.add(endpoint("alerts", "SensorChange"))
    editor.add(endpoint("raw", "DeviceMessages"))
    clock.now += REFRESH
    assert accounted(router_for(warm, tmp_path / "fixed").route(batch())) == AS_THE_GOOD_TABLE_ROUTES
    assert warm.last_error is None
    assert accounted(router_for(cold, tmp_path / "cold").route(batch())) == AS_THE_GOOD_TABLE_ROUTES


def write_around_the_cli(client: TableClient, entity: Entity) -> None:
    if entity["RowKey"] != "alerts":
        client.delete_entity(PARTITION_KEY, "alerts")
    client.upsert_entity(entity, mode=UpdateMode.REPLACE)
