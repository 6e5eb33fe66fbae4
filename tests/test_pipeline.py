"""The pipeline end to end with file senders: envelopes, order per device, accounting for every
message, and no batch failed by one bad message."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from routing.deadletters import FileDeadLetters
from routing.deliver.senders import Failure, FileSender, KeyGroup, SendReport
from routing.ingest.classify import classify
from routing.model import EventType, IngressMessage
from routing.pipeline import Router, StaticRoutes
from routing.routes.table import Endpoint, parse_routes
from tests.conftest import sensor_data, telemetry, twin_event

ROUTES = [
    {"name": "raw", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "RAW", "path": "raw"},
    {
        "name": "hub",
        "type": "EventHub",
        "eventTypes": ["SensorChange", "TopologyOperation"],
        "connection": "HUB",
        "path": "h",
    },
    {"name": "bus", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "BUS", "path": "q"},
    {
        "name": "grid",
        "type": "EventGrid",
        "eventTypes": ["SensorChange"],
        "connection": "GRID",
        "path": "t.eventgrid.azure.net",
    },
    {
        "name": "cloud",
        "type": "EventGrid",
        "eventTypes": ["SensorChange"],
        "connection": "GRID",
        "path": "t",
        "format": "CloudEvents",
    },
]


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def make_router(tmp_path: Path, routes: list[dict[str, Any]] = ROUTES) -> Router:
    senders = FileSender(tmp_path)
    return Router(
        routes=StaticRoutes(parse_routes(routes)),
        senders=lambda _e: senders,
        dead_letters=FileDeadLetters(tmp_path),
    )


def test_telemetry_is_forwarded_byte_for_byte_with_its_properties(tmp_path: Path) -> None:
    body = b'{"t": 21.5,  "odd spacing": true}\xff\x00'  # not even valid UTF-8
    make_router(tmp_path).route([telemetry("dev-1", body, seq=1, Unit="C", Seq=7)])
    [line] = read(tmp_path / "raw.jsonl")
    assert base64.b64decode(line["bodyBase64"]) == body
    assert line["properties"] == {"Unit": "C", "Seq": 7}
    assert line["partitionKey"] == "dev-1"
    assert "body" not in line  # not JSON, so not parsed for the output either


def test_twin_event_gets_the_event_grid_envelope_and_filterable_properties(tmp_path: Path) -> None:
    data = sensor_data("sensor-1")
    msg = twin_event(data, seq=3, properties={"Type": "SensorChange", "CorrelationId": "corr-7"})
    make_router(tmp_path).route([msg])
    [hub] = read(tmp_path / "hub.jsonl")
    body = hub["body"]
    assert set(body) == {"id", "subject", "data", "eventType", "eventTime", "dataVersion", "metadataVersion"}
    assert body["data"] == data
    assert (body["eventType"], body["subject"], body["metadataVersion"]) == ("SensorChange", "SensorChange", "1")
    assert body["eventTime"] == data["EventTimestamp"]
    assert hub["properties"] == {"EventType": "SensorChange", "Subject": "SensorChange", "CorrelationId": "corr-7"}
    assert hub["contentType"] == "application/json"
    assert hub["partitionKey"] == "sensor-1"

    [bus] = read(tmp_path / "bus.jsonl")
    assert (bus["sessionId"], bus["messageId"]) == ("sensor-1", hub["messageId"])
    assert bus["body"] == body

    [grid] = read(tmp_path / "grid.jsonl")
    assert grid["body"] == body
    assert "partitionKey" not in grid and "sessionId" not in grid

    [cloud] = read(tmp_path / "cloud.jsonl")
    assert cloud["contentType"].startswith("application/cloudevents+json")
    ce = cloud["body"]
    assert (ce["specversion"], ce["type"], ce["id"], ce["time"], ce["data"]) == (
        "1.0",
        "SensorChange",
        body["id"],
        body["eventTime"],
        data,
    )
    assert ce["source"]


def test_event_grid_envelope_keeps_the_upstream_id_topic_and_time(tmp_path: Path) -> None:
    event = {
        "id": "up-1",
        "subject": "SensorChange",
        "eventType": "SensorChange",
        "eventTime": "2026-05-05T05:05:05Z",
        "dataVersion": "2.0",
        "metadataVersion": "1",
        "topic": "/subscriptions/x/twins",
        "data": sensor_data("s"),
    }
    make_router(tmp_path).route([twin_event(event, seq=1)])
    [hub] = read(tmp_path / "hub.jsonl")
    assert {k: hub["body"][k] for k in ("id", "eventTime", "dataVersion", "topic")} == {
        "id": "up-1",
        "eventTime": "2026-05-05T05:05:05Z",
        "dataVersion": "2.0",
        "topic": "/subscriptions/x/twins",
    }


def test_each_device_keeps_its_order_across_an_interleaved_batch(tmp_path: Path) -> None:
    devices = ["a", "b", "c", "d"]
    batch = [telemetry(devices[i % 3 if i % 5 else 3], f"{i}".encode(), seq=i) for i in range(60)]
    make_router(tmp_path).route(batch)
    lines = read(tmp_path / "raw.jsonl")
    assert len(lines) == 60
    for device in devices:
        sent = [int(base64.b64decode(x["bodyBase64"])) for x in lines if x["partitionKey"] == device]
        expected = [int(m.body) for m in batch if m.system_properties["iothub-connection-device-id"] == device]
        assert sent == expected and sent


def test_replaying_a_batch_yields_the_same_message_ids(tmp_path: Path) -> None:
    batch = [telemetry("a", b"1", seq=1), twin_event(sensor_data("s"), seq=2, properties={"Type": "SensorChange"})]
    make_router(tmp_path / "first").route(batch)
    make_router(tmp_path / "second").route(batch)
    for name in ("raw", "hub", "bus"):
        first = [x["messageId"] for x in read(tmp_path / "first" / f"{name}.jsonl")]
        assert first == [x["messageId"] for x in read(tmp_path / "second" / f"{name}.jsonl")]
        assert first


def test_every_message_is_delivered_dead_lettered_or_counted_unrouted(tmp_path: Path) -> None:
    batch = [
        telemetry("a", b"1", seq=1),
        twin_event(None, seq=2, raw=b"garbage"),
        twin_event({"Id": "sp", "Type": "Space"}, seq=3, properties={"Type": "SpaceChange"}),  # nobody wants it
        twin_event(sensor_data("s"), seq=4, properties={"Type": "SensorChange"}),
        twin_event(None, seq=5, raw=b""),
    ]
    report = make_router(tmp_path).route(batch)
    assert report.messages == 5
    assert sum(report.dead_letters.values()) == 2
    assert dict(report.unrouted) == {"SpaceChange": 1}
    assert report.delivered[("raw", EventType.DEVICE_MESSAGES)] == 1
    assert report.delivered[("hub", EventType.SENSOR_CHANGE)] == 1
    letters = read(tmp_path / "deadletter.jsonl")
    assert [x["original"]["sequenceNumber"] for x in letters] == [2, 5]
    assert base64.b64decode(letters[0]["original"]["bodyBase64"]) == b"garbage"
    assert all(x["reason"] for x in letters)


def test_a_message_that_breaks_classification_is_dead_lettered_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = classify

    def flaky(msg: IngressMessage) -> Any:
        if msg.sequence_number == 2:
            raise RuntimeError("boom")
        return real(msg)

    monkeypatch.setattr("routing.pipeline.classify", flaky)
    report = make_router(tmp_path).route(
        [telemetry("a", b"1", seq=1), telemetry("a", b"2", seq=2), telemetry("a", b"3", seq=3)]
    )
    assert report.delivered[("raw", EventType.DEVICE_MESSAGES)] == 2
    [letter] = read(tmp_path / "deadletter.jsonl")
    assert letter["code"] == "internal-error" and "boom" in letter["reason"]


class RefusingSender:
    """Refuses every message for one key, and says why (the file sender cannot fail)."""

    def __init__(self, inner: FileSender, bad_key: str) -> None:
        self.inner, self.bad_key = inner, bad_key

    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        good = [g for g in groups if g.key != self.bad_key]
        report = self.inner.send(endpoint, good)
        failed = tuple(
            Failure(message=m, reason="unauthorized", permanent=True)
            for g in groups
            if g.key == self.bad_key
            for m in g.messages
        )
        return SendReport(delivered=report.delivered, failed=failed)

    def close(self) -> None:
        self.inner.close()


def test_failed_deliveries_are_dead_lettered_with_the_endpoint_and_reason(tmp_path: Path) -> None:
    sender = RefusingSender(FileSender(tmp_path), bad_key="b")
    router = Router(
        routes=StaticRoutes(parse_routes(ROUTES[:1])), senders=lambda _e: sender, dead_letters=FileDeadLetters(tmp_path)
    )
    report = router.route([telemetry("a", b"1", seq=1), telemetry("b", b"2", seq=2)])
    assert report.delivered[("raw", EventType.DEVICE_MESSAGES)] == 1
    [letter] = read(tmp_path / "deadletter.jsonl")
    assert (letter["endpoint"], letter["code"]) == ("raw", "delivery-failed")
    assert "unauthorized" in letter["reason"]
    assert letter["original"]["systemProperties"]["iothub-connection-device-id"] == "b"


def test_the_values_a_batch_makes_per_message_are_not_tracked_by_the_garbage_collector(tmp_path: Path) -> None:
    """Each batch makes an `Event` and an `Outgoing` per endpoint for every message, and they live until the
    batch is sent: tracked, they drove the collector's full passes over the whole heap, which cost a
    1,000-endpoint table ~2x per message sent (bench, "Route table size"). They hold only values and the
    dicts they are given, which never refer back to them, so they cannot be part of a cycle."""
    import gc  # noqa: PLC0415

    collector = Collector()
    router = Router(
        routes=StaticRoutes(parse_routes(ROUTES)), senders=lambda _e: collector, dead_letters=FileDeadLetters(tmp_path)
    )
    message = twin_event(sensor_data("s-1"), seq=1, properties={"Type": "SensorChange"})
    router.route([message, telemetry("dev-1", b'{"t": 1}', seq=2)])
    sent = [m for _endpoint, groups in collector.sent for group in groups for m in group.messages]
    assert len(sent) == 5
    values = [message, *sent, *(m.event for m in sent), *(g for _e, groups in collector.sent for g in groups)]
    assert [type(v).__name__ for v in values if gc.is_tracked(v)] == []
    assert not any(
        gc.is_tracked(r) for r in classify(IngressMessage(body=b"[]", properties={}, system_properties={}, source="x"))
    )


class Collector:
    def __init__(self) -> None:
        self.sent: list[tuple[Endpoint, Sequence[KeyGroup]]] = []

    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        self.sent.append((endpoint, groups))
        return SendReport(delivered=tuple(m for g in groups for m in g.messages))

    def close(self) -> None:
        pass
