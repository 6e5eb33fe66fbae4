"""Today's Digital Twins (v2) events end to end: function_app's `route_twins` on worker-shaped input,
through the unmodified Event Hubs, Service Bus and Event Grid SDKs to the local AMQP 1.0 peer and Event
Grid receiver, read back as a consumer would: keyed by twin, in order per twin, with the events' own
id, subject, source and time; telemetry forwarded byte for byte to Event Hubs and Service Bus, and to
Event Grid as the CloudEvent its `cloudEvents:*` properties describe, as Digital Twins routes it."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from routing.ingest.trace import of_properties
from tests.azurite import Azurite
from tests.conftest import WorkerEvent, worker_batch
from tests.deployment import deployed_app, stored_letters
from tests.peers.amqp import AmqpPeer, ReceivedMessage
from tests.peers.eventgrid import EventGridReceiver

HOST = "contoso-adt.api.wus2.digitaltwins.azure.net"
TOPIC = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.EventGrid/topics/adt-events"
MODEL = "dtmi:contoso:Room;1"
TWIN_TYPES = [
    "Microsoft.DigitalTwins.Twin.Create",
    "Microsoft.DigitalTwins.Twin.Update",
    "Microsoft.DigitalTwins.Twin.Delete",
    "Microsoft.DigitalTwins.Relationship.Create",
    "Microsoft.DigitalTwins.Relationship.Update",
    "Microsoft.DigitalTwins.Relationship.Delete",
]


@pytest.fixture(scope="module")
def amqp() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities={"adt-hub", "lifecycle"}) as peer:
        yield peer


@pytest.fixture(scope="module")
def cloud() -> Iterator[EventGridReceiver]:
    with EventGridReceiver(key="cloud-key") as receiver:
        yield receiver


@pytest.fixture
def deployed(
    amqp: AmqpPeer, cloud: EventGridReceiver, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ContainerClient]:
    routes = [
        {"name": "adt-hub", "type": "EventHub", "eventTypes": [*TWIN_TYPES, "microsoft.iot.telemetry"],
         "connection": "HUB", "path": "adt-hub"},
        {"name": "lifecycle", "type": "ServiceBus", "eventTypes": [*TWIN_TYPES, "microsoft.iot.telemetry"],
         "connection": "BUS", "path": "lifecycle"},
        {"name": "cloud", "type": "EventGrid", "eventTypes": [*TWIN_TYPES, "microsoft.iot.telemetry"],
         "connection": "CLOUD_KEY", "path": cloud.endpoint, "format": "CloudEventSchemaV1_0"},
    ]  # fmt: skip
    connections = {"HUB": amqp.connection_string(), "BUS": amqp.connection_string(), "CLOUD_KEY": cloud.key}
    amqp.clear()
    cloud.clear()
    with deployed_app(routes, connections, azurite=azurite, tmp_path=tmp_path, monkeypatch=monkeypatch) as letters:
        yield letters


def binary(seq: int, event_type: str, body: bytes, content_type: str | None = None, **attributes: str) -> WorkerEvent:
    """A v2 event as Digital Twins puts it on an Event Hub: CloudEvents attributes as properties (the
    content type in the AMQP properties, which the host hands over among the system properties)."""
    properties = {
        "cloudEvents:specversion": "1.0",
        "cloudEvents:type": event_type,
        "cloudEvents:id": f"ev-{seq}",
        "cloudEvents:time": f"2026-11-26T10:00:{seq:02d}Z",
        "cloudEvents:traceparent": f"00-{seq:032x}-{seq:016x}-01",
        **{f"cloudEvents:{k}": v for k, v in attributes.items()},
    }
    system = {"content-type": content_type} if content_type else {}
    return WorkerEvent(
        body=body, properties=properties, system_properties=system, sequence_number=seq, offset=100 + seq
    )


def twin(seq: int, event_type: str, twin_id: str, data: dict[str, Any]) -> WorkerEvent:
    return binary(seq, event_type, json.dumps(data).encode(), source=HOST, subject=twin_id)


def relationship(seq: int, event_type: str, source: str, name: str) -> WorkerEvent:
    data = {"$relationshipId": name, "$sourceId": source, "$targetId": "room-1", "$relationshipName": "contains"}
    return binary(seq, event_type, json.dumps(data).encode(), source=HOST, subject=f"{source}/relationships/{name}")


def telemetry(seq: int, twin_id: str, body: bytes, content_type: str | None = None) -> WorkerEvent:
    # No subject: the twin is named at the end of the source, as the service sends it.
    source = f"{HOST}/digitaltwins/{twin_id}"
    return binary(seq, "microsoft.iot.telemetry", body, content_type, source=source, dataschema=MODEL)


def update(value: float) -> dict[str, Any]:
    return {"modelId": MODEL, "patch": [{"value": value, "path": "/Temperature", "op": "replace"}]}


# Three twins interleaved, in every wire form: binary mode, a structured CloudEvent, an Event Grid array.
EVENTS = [
    twin(0, "Microsoft.DigitalTwins.Twin.Create", "room-1", {"$dtId": "room-1", "$metadata": {"$model": MODEL}}),
    twin(1, "Microsoft.DigitalTwins.Twin.Create", "room-2", {"$dtId": "room-2", "$metadata": {"$model": MODEL}}),
    # Spacing and digits as sent: the bytes must survive.
    telemetry(2, "room-1", b'{ "Temperature" : 21.50 }', "application/json"),
    twin(3, "Microsoft.DigitalTwins.Twin.Update", "room-1", update(22)),
    WorkerEvent(
        body=json.dumps({
            "specversion": "1.0", "type": "Microsoft.DigitalTwins.Relationship.Create", "id": "ev-4",
            "source": HOST, "subject": "floor-1/relationships/has-room-1", "time": "2026-11-26T10:00:04Z",
            "datacontenttype": "application/json",
            "data": {"$relationshipId": "has-room-1", "$sourceId": "floor-1", "$targetId": "room-1"},
        }).encode(),
        properties={},
        sequence_number=4,
        offset=104,
    ),
    WorkerEvent(
        body=json.dumps([{
            "id": "ev-5", "subject": "room-2", "eventType": "Microsoft.DigitalTwins.Twin.Update",
            "eventTime": "2026-11-26T10:00:05Z", "dataVersion": "1.0", "metadataVersion": "1", "topic": TOPIC,
            "data": {"data": update(19), "contenttype": "application/json", "traceparent": "00-5-5-01"},
        }]).encode(),
        properties={"aeg-subscription-name": "to-router"},
        sequence_number=5,
        offset=105,
    ),
    telemetry(6, "room-2", b'{"Temperature":19.0}'),
    relationship(7, "Microsoft.DigitalTwins.Relationship.Update", "floor-1", "has-room-1"),
    twin(8, "Microsoft.DigitalTwins.Twin.Update", "room-1", update(23)),
    relationship(9, "Microsoft.DigitalTwins.Relationship.Delete", "floor-1", "has-room-1"),
    twin(10, "Microsoft.DigitalTwins.Twin.Delete", "room-2", {"$dtId": "room-2", "$metadata": {"$model": MODEL}}),
    telemetry(11, "room-1", b"\xff binary telemetry \x00", "application/octet-stream"),
]  # fmt: skip

# What each twin's consumer must see, in this order: (type, event id), written out by hand.
ROOM_1 = [
    ("Microsoft.DigitalTwins.Twin.Create", "ev-0"),
    ("microsoft.iot.telemetry", "ev-2"),
    ("Microsoft.DigitalTwins.Twin.Update", "ev-3"),
    ("Microsoft.DigitalTwins.Twin.Update", "ev-8"),
    ("microsoft.iot.telemetry", "ev-11"),
]
ROOM_2 = [
    ("Microsoft.DigitalTwins.Twin.Create", "ev-1"),
    ("Microsoft.DigitalTwins.Twin.Update", "ev-5"),
    ("microsoft.iot.telemetry", "ev-6"),
    ("Microsoft.DigitalTwins.Twin.Delete", "ev-10"),
]
FLOOR_1 = [
    ("Microsoft.DigitalTwins.Relationship.Create", "ev-4"),
    ("Microsoft.DigitalTwins.Relationship.Update", "ev-7"),
    ("Microsoft.DigitalTwins.Relationship.Delete", "ev-9"),
]
EXPECTED = {"room-1": ROOM_1, "room-2": ROOM_2, "floor-1": FLOOR_1}
TELEMETRY = {2: b'{ "Temperature" : 21.50 }', 6: b'{"Temperature":19.0}', 11: b"\xff binary telemetry \x00"}


def what(message: ReceivedMessage) -> tuple[str, str]:
    """(type, event id) of an Event Hubs or Service Bus message: telemetry from its properties (its body
    is the device's own), a twin event from its Event Grid schema envelope."""
    properties = message.application_properties
    if properties.get("cloudEvents:type") == "microsoft.iot.telemetry":
        return "microsoft.iot.telemetry", str(properties["cloudEvents:id"])
    envelope = json.loads(message.body)
    return envelope["eventType"], envelope["id"]


def per_key(pairs: list[tuple[str | None, tuple[str, str]]]) -> dict[str | None, list[tuple[str, str]]]:
    out: dict[str | None, list[tuple[str, str]]] = {}
    for key, item in pairs:
        out.setdefault(key, []).append(item)
    return out


@pytest.fixture
def routed(functions: dict[str, Any], deployed: ContainerClient) -> ContainerClient:
    functions["route_twins"].get_user_function()(worker_batch(EVENTS, partition_id="3"))
    return deployed


def test_event_hubs_get_every_v2_event_keyed_by_twin_in_order(amqp: AmqpPeer, routed: ContainerClient) -> None:
    received = amqp.received("adt-hub")
    assert per_key([(m.partition_key, what(m)) for m in received]) == EXPECTED
    assert not list(routed.list_blobs())  # nothing dead-lettered


def test_v2_telemetry_reaches_event_hubs_byte_for_byte_with_its_cloud_events_properties(
    amqp: AmqpPeer, routed: ContainerClient
) -> None:
    sent = {e.sequence_number: e for e in EVENTS}
    telemetry_out = [m for m in amqp.received("adt-hub") if what(m)[0] == "microsoft.iot.telemetry"]
    assert [(m.partition_key, m.body) for m in telemetry_out if m.partition_key == "room-1"] == [
        ("room-1", b'{ "Temperature" : 21.50 }'),
        ("room-1", b"\xff binary telemetry \x00"),
    ]
    assert [m.body for m in telemetry_out if m.partition_key == "room-2"] == [b'{"Temperature":19.0}']
    for message in telemetry_out:
        seq = int(str(message.application_properties["cloudEvents:id"]).removeprefix("ev-"))
        assert dict(message.application_properties) == sent[seq].properties
    assert telemetry_out[0].application_properties["cloudEvents:dataschema"] == MODEL


def test_service_bus_gets_every_v2_event_in_twin_sessions_telemetry_as_it_came(
    amqp: AmqpPeer, routed: ContainerClient
) -> None:
    received = amqp.received("lifecycle")
    assert per_key([(m.session_id, what(m)) for m in received]) == EXPECTED
    assert len({m.message_id for m in received}) == 12
    message = next(m for m in received if what(m) == ("Microsoft.DigitalTwins.Twin.Update", "ev-3"))
    trace = "00-00000000000000000000000000000003-0000000000000003-01"  # the one it came with, carried on
    assert message.application_properties == {
        "EventType": "Microsoft.DigitalTwins.Twin.Update",
        "Subject": "room-1",
        "traceparent": trace,
        "Diagnostic-Id": trace,
    }
    assert json.loads(message.body) == {
        "id": "ev-3",
        "subject": "room-1",
        "data": update(22),
        "eventType": "Microsoft.DigitalTwins.Twin.Update",
        "eventTime": "2026-11-26T10:00:03Z",
        "dataVersion": "1.0",
        "metadataVersion": "1",
    }
    # Telemetry: its bytes, its cloudEvents:* properties and its content type, as on Event Hubs.
    sent = {e.sequence_number: e for e in EVENTS}
    telemetry_out = {what(m)[1]: m for m in received if what(m)[0] == "microsoft.iot.telemetry"}
    assert {k: (m.session_id, m.body) for k, m in telemetry_out.items()} == {
        "ev-2": ("room-1", TELEMETRY[2]),
        "ev-6": ("room-2", TELEMETRY[6]),
        "ev-11": ("room-1", TELEMETRY[11]),
    }
    for seq in TELEMETRY:
        message = telemetry_out[f"ev-{seq}"]
        assert dict(message.application_properties) == sent[seq].properties
        assert message.content_type == sent[seq].system_properties.get("content-type")


def instant(text: Any) -> datetime:
    return datetime.fromisoformat(str(text))


def twin_of(event: Mapping[str, object]) -> str:
    """The twin an Event Grid CloudEvent is about: its subject's, else the one its source names."""
    subject = str(event.get("subject") or "")
    return subject.partition("/relationships/")[0] or str(event["source"]).rpartition("/digitaltwins/")[2]


def test_event_grid_gets_cloud_events_with_the_events_own_attributes(
    cloud: EventGridReceiver, routed: ContainerClient
) -> None:
    events = cloud.events()
    assert all(r.content_type.startswith("application/cloudevents-batch+json") for r in cloud.requests())
    assert per_key([(twin_of(e), (str(e["type"]), str(e["id"]))) for e in events]) == EXPECTED
    by_id = {e["id"]: e for e in events}
    assert {k: by_id["ev-7"][k] for k in ("specversion", "type", "source", "subject")} == {
        "specversion": "1.0",
        "type": "Microsoft.DigitalTwins.Relationship.Update",
        "source": HOST,
        "subject": "floor-1/relationships/has-room-1",
    }
    # The same instant (the SDK may write it with milliseconds).
    assert instant(by_id["ev-7"]["time"]) == instant("2026-11-26T10:00:07Z")
    # The Event Grid schema event arrived from a topic: its data un-nested, the topic as its source.
    assert (by_id["ev-5"]["data"], by_id["ev-5"]["source"]) == (update(19), TOPIC)
    assert instant(by_id["ev-5"]["time"]) == instant("2026-11-26T10:00:05Z")
    assert by_id["ev-4"]["data"] == {"$relationshipId": "has-room-1", "$sourceId": "floor-1", "$targetId": "room-1"}


def test_event_grid_gets_telemetry_as_the_cloud_event_its_properties_describe(
    cloud: EventGridReceiver, routed: ContainerClient
) -> None:
    by_id = {e["id"]: dict(e) for e in cloud.events()}
    attributes = {"specversion": "1.0", "type": "microsoft.iot.telemetry", "dataschema": MODEL}
    for seq, twin_id in ((2, "room-1"), (6, "room-2"), (11, "room-1")):
        event = by_id[f"ev-{seq}"]
        assert {k: event[k] for k in attributes} == attributes
        assert event["source"] == f"{HOST}/digitaltwins/{twin_id}"
        assert event["traceparent"] == f"00-{seq:032x}-{seq:016x}-01"  # an extension attribute, kept
        assert instant(event["time"]) == instant(f"2026-11-26T10:00:{seq:02d}Z")
    # Its data the body: the JSON value, JSON too without a content type, the bytes when not JSON.
    assert (by_id["ev-2"]["data"], by_id["ev-2"]["datacontenttype"]) == ({"Temperature": 21.5}, "application/json")
    assert (by_id["ev-6"]["data"], "datacontenttype" in by_id["ev-6"]) == ({"Temperature": 19.0}, False)
    assert base64.b64decode(str(by_id["ev-11"]["data_base64"])) == TELEMETRY[11]
    assert "data" not in by_id["ev-11"]


def test_telemetry_event_grid_would_refuse_fails_there_alone_and_reaches_the_others(
    functions: dict[str, Any], amqp: AmqpPeer, cloud: EventGridReceiver, deployed: ContainerClient
) -> None:
    bad = telemetry(1, "room-1", b"{}", "application/json")
    bad.properties["cloudEvents:Hops"] = "2"  # not a CloudEvents attribute name: Event Grid answers 400
    batch = [telemetry(0, "room-1", b"{}"), bad, telemetry(2, "room-2", b"{}"), telemetry(3, "room-1", b"{}")]
    functions["route_twins"].get_user_function()(worker_batch(batch, partition_id="3"))
    assert sorted(what(m)[1] for m in amqp.received("adt-hub")) == ["ev-0", "ev-1", "ev-2", "ev-3"]
    assert sorted(what(m)[1] for m in amqp.received("lifecycle")) == ["ev-0", "ev-1", "ev-2", "ev-3"]
    # A permanent refusal fails alone: room-1's next event still goes, after the one before it.
    published = [(twin_of(e), str(e["id"])) for e in cloud.events()]
    assert [i for twin, i in published if twin == "room-1"] == ["ev-0", "ev-3"]
    assert [i for twin, i in published if twin == "room-2"] == ["ev-2"]
    [letter] = stored_letters(deployed).values()
    assert letter["endpoint"] == "cloud"
    assert "CloudEvents attribute name 'Hops'" in letter["reason"]


def test_service_bus_and_event_grid_carry_the_trace_context_digital_twins_events_came_with(
    amqp: AmqpPeer, cloud: EventGridReceiver, routed: ContainerClient
) -> None:
    # Binary-mode events carry cloudEvents:traceparent (all-zero for event 0: invalid, so not passed on).
    came = {e.sequence_number: of_properties(e.properties) for e in EVENTS}
    checked = 0
    for message in amqp.received("lifecycle"):
        kind, event_id = what(message)
        if kind == "microsoft.iot.telemetry":
            continue  # as it came: its properties (the cloudEvents:traceparent among them) untouched
        context = came[int(event_id.removeprefix("ev-"))]
        assert message.application_properties.get("traceparent") == (context.traceparent if context else None)
        checked += context is not None
    for published in cloud.events():
        context = came[int(str(published["id"]).removeprefix("ev-"))]
        assert published.get("traceparent") == (context.traceparent if context else None)
        checked += context is not None
    assert checked >= 10
    # The strict receiver took every request: an extension it refuses would have failed one.
    assert all(r.status == 200 for r in cloud.requests())
