"""Real delivery, proved on the wire: function_app's functions on worker-shaped input, routing through
the unmodified Event Hubs, Service Bus and Event Grid SDKs to a local AMQP 1.0 peer and a local Event
Grid receiver, with dead letters in Azurite's Blob service."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from azure.storage.blob import ContainerClient

from routing import app as wiring
from routing.deliver.pool import SenderPool
from routing.deliver.senders import RetryOptions
from routing.model import IngressMessage, message_id
from routing.parking import unpack
from tests.azurite import Azurite
from tests.conftest import WorkerEvent, sensor_data, worker_batch
from tests.deployment import deployed_app
from tests.peers.amqp import MESSAGE_SIZE_EXCEEDED, NOT_ALLOWED, SERVER_BUSY, AmqpPeer
from tests.peers.eventgrid import EventGridReceiver
from tests.test_partitions import SERVICE_HASHES

HUBS = {"raw-hub", "twins-hub", "alerts"}
IOTHUB = {"iothub-message-source": "Telemetry", "iothub-enqueuedtime": "2026-11-26T09:00:00Z"}
SENSOR = {"Type": "SensorChange"}


@pytest.fixture(scope="module")
def amqp() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities=HUBS) as peer:
        yield peer


@pytest.fixture(scope="module")
def grid() -> Iterator[EventGridReceiver]:
    with EventGridReceiver(key="grid-key") as receiver:
        yield receiver


@pytest.fixture(scope="module")
def cloud() -> Iterator[EventGridReceiver]:
    with EventGridReceiver(key="cloud-key") as receiver:
        yield receiver


class Deployed:
    def __init__(
        self, peer: AmqpPeer, grid: EventGridReceiver, cloud: EventGridReceiver, letters: ContainerClient
    ) -> None:
        self.peer, self.grid, self.cloud, self.letters = peer, grid, cloud, letters

    def dead_letters(self) -> list[dict[str, Any]]:
        """The letters only: the container also holds parked messages and endpoint health (`_parked/`, `_health/`)."""
        return [
            json.loads(self.letters.download_blob(b.name).readall())
            for b in self.letters.list_blobs()
            if not b.name.startswith(("_parked/", "_health/"))
        ]

    def parked(self) -> list[dict[str, Any]]:
        """The parked messages' records, in each blob's order."""
        return [
            record
            for b in self.letters.list_blobs(name_starts_with="_parked/")
            for record in unpack(self.letters.download_blob(b.name).readall())[1]
        ]


@pytest.fixture
def deployed(  # noqa: PLR0917 - pytest passes fixtures positionally
    amqp: AmqpPeer,
    grid: EventGridReceiver,
    cloud: EventGridReceiver,
    azurite: Azurite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Deployed]:
    routes = [
        {"name": "raw", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "RAW", "path": "raw-hub"},
        {"name": "twins", "type": "EventHub", "eventTypes": ["SensorChange", "TopologyOperation"],
         "connection": "TWINS", "path": "twins-hub"},
        {"name": "bus", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "BUS_PRIMARY",
         "secondaryConnection": "BUS_SECONDARY", "path": "alerts"},
        {"name": "grid", "type": "EventGrid", "eventTypes": ["TopologyOperation"], "connection": "GRID_KEY",
         "path": grid.endpoint},
        {"name": "cloud", "type": "EventGrid", "eventTypes": ["TopologyOperation"], "connection": "CLOUD_KEY",
         "path": cloud.endpoint, "format": "CloudEventSchemaV1_0"},
    ]  # fmt: skip
    connections = {
        "RAW": amqp.connection_string(),
        "TWINS": amqp.connection_string(),
        # The primary key is refused, as after a key rotation: the router must fail over.
        "BUS_PRIMARY": amqp.connection_string(key="ROTATED_AWAY"),
        "BUS_SECONDARY": amqp.connection_string(),
        "GRID_KEY": grid.key,
        "CLOUD_KEY": cloud.key,
    }
    # Short backoff so the retry tests stay quick; the production defaults are longer.
    monkeypatch.setattr(
        "routing.app.SenderPool",
        lambda: SenderPool(retry=RetryOptions(attempts=3, backoff_initial=0.01, backoff_max=0.05)),
    )
    amqp.clear()
    amqp.refuse_auth(key="ROTATED_AWAY")
    grid.clear()
    cloud.clear()
    with deployed_app(routes, connections, azurite=azurite, tmp_path=tmp_path, monkeypatch=monkeypatch) as letters:
        yield Deployed(amqp, grid, cloud, letters)
    amqp.reset_faults()


def telemetry_batch(count: int, devices: int, *, start: int = 0, size: int = 40) -> list[WorkerEvent]:
    return [
        WorkerEvent(
            body=(f'{{"n":{i},"pad":"' + "x" * size + '"}').encode() + b"\xff",  # not UTF-8: bytes must survive
            properties={"unit": "C", "n": i},
            system_properties={**IOTHUB, "iothub-connection-device-id": f"dev-{i % devices}"},
            sequence_number=i,
            offset=1000 + i,
        )
        for i in range(start, start + count)
    ]


def sensor_event(sensor: str, seq: int) -> WorkerEvent:
    return WorkerEvent(body=json.dumps(sensor_data(sensor, str(seq))).encode(), properties=SENSOR, sequence_number=seq)


def by_device(received: list[Any]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for message in received:
        out.setdefault(message.partition_key, []).append(message.body)
    return out


def expected_by_device(events: list[WorkerEvent]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for event in events:
        out.setdefault(event.system_properties["iothub-connection-device-id"], []).append(event.body)
    return out


def test_telemetry_keeps_device_order_bytes_and_properties_on_event_hubs(
    functions: dict[str, Any], deployed: Deployed
) -> None:
    events = telemetry_batch(40, devices=4)
    functions["route_telemetry"].get_user_function()(worker_batch(events, partition_id="2"))
    received = deployed.peer.received("raw-hub")
    assert by_device(received) == expected_by_device(events)
    first = next(m for m in received if m.partition_key == "dev-0")
    assert first.application_properties == {"unit": "C", "n": 0}
    ingress = IngressMessage(
        body=b"", properties={}, system_properties={}, source="telemetry", partition="2", sequence_number=0
    )
    assert first.message_id == message_id(ingress, 0)
    assert not deployed.dead_letters()


def test_twin_events_reach_service_bus_sessions_after_failover_and_both_event_grid_schemas(
    functions: dict[str, Any], deployed: Deployed
) -> None:
    topology = {"SpacesToNotify": [], "Id": "dev-9", "Type": "Devices", "AccessType": "Create"}
    sensor = {"Type": "SensorChange"}
    events = [
        WorkerEvent(body=json.dumps(sensor_data("s-1", "1")).encode(), properties={**sensor, "CorrelationId": "c-1"}),
        WorkerEvent(body=json.dumps(sensor_data("s-2", "2")).encode(), properties=sensor, sequence_number=2),
        WorkerEvent(body=json.dumps(topology).encode(), properties={"Type": "TopologyOperation"}, sequence_number=3),
        WorkerEvent(body=json.dumps(sensor_data("s-1", "3")).encode(), properties=sensor, sequence_number=4),
    ]
    functions["route_twins"].get_user_function()(worker_batch(events, partition_id="0"))

    bus = deployed.peer.received("alerts")
    sessions = [(m.session_id, json.loads(m.body)["data"]["Value"]) for m in bus]
    # Sessions go out at once; within a session, in order.
    assert sorted(sessions) == [("s-1", "1"), ("s-1", "3"), ("s-2", "2")]
    assert [value for session, value in sessions if session == "s-1"] == ["1", "3"]
    assert len({m.message_id for m in bus}) == 3
    bus.sort(key=lambda m: (m.session_id or "", json.loads(m.body)["data"]["Value"]))
    assert bus[0].application_properties == {
        "EventType": "SensorChange",
        "Subject": "SensorChange",
        "CorrelationId": "c-1",
    }
    assert bus[0].content_type == "application/json"
    assert deployed.peer.stats().cbs_refused >= 1  # the primary was tried, and refused

    twins = [m.partition_key or "" for m in deployed.peer.received("twins-hub")]
    assert sorted(twins) == ["dev-9", "s-1", "s-1", "s-2"]

    [grid_request] = [r for r in deployed.grid.requests() if r.accepted]
    assert grid_request.content_type.startswith("application/json")
    [grid_event] = grid_request.events
    assert (grid_event["eventType"], grid_event["subject"], grid_event["data"]) == (
        "TopologyOperation",
        "Devices",
        topology,
    )
    [cloud_request] = [r for r in deployed.cloud.requests() if r.accepted]
    assert cloud_request.content_type.startswith("application/cloudevents-batch+json")
    [cloud_event] = cloud_request.events
    assert (cloud_event["specversion"], cloud_event["type"], cloud_event["data"]) == (
        "1.0",
        "TopologyOperation",
        topology,
    )
    assert cloud_event["id"] == grid_event["id"]


def test_an_event_from_an_event_grid_topic_reaches_another_topic_and_keeps_its_topic_on_event_hubs(
    functions: dict[str, Any], deployed: Deployed
) -> None:
    # Event Grid delivers to an Event Hub as a JSON array of events, each stamped with its topic's id.
    source_topic = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.EventGrid/topics/adt-classic"
    topology = {"SpacesToNotify": [], "Id": "dev-7", "Type": "Devices", "AccessType": "Update"}
    event = {
        "id": "eg-1",
        "topic": source_topic,
        "subject": "Devices",
        "eventType": "TopologyOperation",
        "eventTime": "2026-11-26T09:00:00.15",  # no offset: emitted as UTC
        "data": topology,
        "dataVersion": "1.0",
        "metadataVersion": "1",
    }
    batch = [WorkerEvent(body=json.dumps([event]).encode(), properties={}, sequence_number=1)]
    functions["route_twins"].get_user_function()(worker_batch(batch))

    assert deployed.dead_letters() == []
    [grid] = deployed.grid.requests()
    assert grid.accepted, grid.error
    [delivered] = grid.events
    assert "topic" not in delivered  # Event Grid stamps its own; another topic's id is refused
    assert (delivered["id"], delivered["data"], delivered["eventTime"]) == ("eg-1", topology, "2026-11-26T09:00:00.15Z")
    [cloud] = deployed.cloud.events()
    assert (cloud["source"], cloud["time"]) == (source_topic, "2026-11-26T09:00:00.15Z")
    [on_hub] = deployed.peer.received("twins-hub")
    assert json.loads(on_hub.body)["topic"] == source_topic  # Event Hubs consumers still learn where it came from


@pytest.mark.parametrize(
    "fault",
    ["server_busy", "drop_connection", "abrupt_drop", "throttle"],
)
def test_transient_faults_are_retried_without_duplicates_or_reordering(
    functions: dict[str, Any], deployed: Deployed, fault: str
) -> None:
    run = functions["route_telemetry"].get_user_function()
    run(worker_batch(telemetry_batch(6, devices=3), partition_id="0"))  # a warm connection to break
    deployed.peer.clear()
    deployed.peer.refuse_auth(key="ROTATED_AWAY")
    {
        "server_busy": lambda: deployed.peer.server_busy(2),
        "drop_connection": lambda: deployed.peer.drop_connection_on_next_sends(1),
        "abrupt_drop": lambda: deployed.peer.drop_connection_on_next_sends(1, abrupt=True),
        "throttle": lambda: deployed.peer.throttle(2),
    }[fault]()
    events = telemetry_batch(30, devices=5, start=100)
    run(worker_batch(events, partition_id="0"))
    assert by_device(deployed.peer.received("raw-hub")) == expected_by_device(events)
    assert not deployed.dead_letters()


@pytest.mark.parametrize("status", [429, 500, 503])
def test_event_grid_transient_answers_are_retried(functions: dict[str, Any], deployed: Deployed, status: int) -> None:
    deployed.grid.fail_next(status, times=2)
    topology = {"Id": "dev-1", "Type": "Devices"}
    event = WorkerEvent(body=json.dumps(topology).encode(), properties={"Type": "TopologyOperation"}, sequence_number=1)
    functions["route_twins"].get_user_function()(worker_batch([event]))
    assert [r.status for r in deployed.grid.requests()] == [status, status, 200]
    assert [e["data"] for e in deployed.grid.events()] == [topology]
    assert not deployed.dead_letters()


@pytest.mark.parametrize("where", ["sender", "hub"])
def test_an_oversized_message_is_dead_lettered_alone_and_its_device_goes_on(
    functions: dict[str, Any], deployed: Deployed, where: str
) -> None:
    if where == "sender":
        # The hub advertises its limit, so the sender sees the message cannot fit before sending it.
        deployed.peer.max_message_size = 1500
    else:
        # The hub takes the batch's size on trust and rejects it: the batch fails whole.
        deployed.peer.reject_messages_larger_than(1500)
    try:
        events = telemetry_batch(5, devices=2)  # dev-0: 0, 2, 4; dev-1: 1, 3
        for event in events[1::2]:
            # Another partition than dev-0's (hash of the key), so never in dev-0's batch.
            event.system_properties["iothub-connection-device-id"] = "dev-8"
        events[0] = WorkerEvent(
            body=b"x" * 2000, system_properties={**IOTHUB, "iothub-connection-device-id": "dev-0"}, sequence_number=0
        )
        functions["route_telemetry"].get_user_function()(worker_batch(events))
    finally:
        deployed.peer.max_message_size = 1024 * 1024
        deployed.peer.reject_messages_larger_than(None)
    received = by_device(deployed.peer.received("raw-hub"))
    letters = sorted(deployed.dead_letters(), key=lambda x: x["original"]["sequenceNumber"])
    oversized = letters[0]
    assert (oversized["orderKey"], oversized["original"]["sequenceNumber"]) == ("dev-0", 0)
    assert len(oversized["attempts"]) == 1, "a permanent failure must not be retried"
    assert "size" in oversized["reason"].lower() or "larger" in oversized["reason"].lower()
    assert base64.b64decode(oversized["original"]["bodyBase64"]) == b"x" * 2000
    assert received["dev-8"] == [events[1].body, events[3].body]
    # Refused alone before sending (the sender saw it could not fit); or the hub refused dev-0's whole batch,
    # which then went again one message at a time: only the large one fails, and dev-0 goes on after it.
    assert received["dev-0"] == [events[2].body, events[4].body] and len(letters) == 1
    assert not deployed.parked()


def test_event_grid_413_is_permanent_and_not_retried(functions: dict[str, Any], deployed: Deployed) -> None:
    deployed.grid.fail_next(413, times=5)
    event = WorkerEvent(
        body=json.dumps({"Id": "d", "Type": "Devices"}).encode(), properties={"Type": "TopologyOperation"}
    )
    functions["route_twins"].get_user_function()(worker_batch([event]))
    assert len(deployed.grid.requests()) == 1
    [letter] = [x for x in deployed.dead_letters() if x["endpoint"] == "grid"]
    assert "413" in letter["reason"] and len(letter["attempts"]) == 1


def test_unauthorized_on_both_connections_is_permanent(
    functions: dict[str, Any], deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUS_SECONDARY", deployed.peer.connection_string(key="ROTATED_AWAY"))
    wiring.reset()
    event = WorkerEvent(body=json.dumps(sensor_data("s-1")).encode(), properties={"Type": "SensorChange"})
    functions["route_twins"].get_user_function()(worker_batch([event]))
    [letter] = [x for x in deployed.dead_letters() if x["endpoint"] == "bus"]
    assert "unauthorized with BUS_PRIMARY and BUS_SECONDARY" in letter["reason"]
    assert len(letter["attempts"]) == 1
    assert len(deployed.peer.received("twins-hub")) == 1  # other endpoints carry on


def test_a_missing_hub_is_reported_as_not_found(functions: dict[str, Any], deployed: Deployed) -> None:
    deployed.peer.set_entities({"twins-hub", "alerts"})
    try:
        functions["route_telemetry"].get_user_function()(worker_batch(telemetry_batch(2, devices=1)))
    finally:
        deployed.peer.set_entities(HUBS)
    letters = sorted(deployed.dead_letters(), key=lambda x: x["original"]["sequenceNumber"])
    # Each tried and refused for good: a permanent refusal holds nothing back, nor parks anything.
    assert [x["code"] for x in letters] == ["delivery-failed", "delivery-failed"]
    assert all("'raw-hub' was not found" in x["reason"] and len(x["attempts"]) == 1 for x in letters)
    assert not deployed.parked()


def test_clients_are_reused_across_invocations(functions: dict[str, Any], deployed: Deployed) -> None:
    run = functions["route_telemetry"].get_user_function()
    # Enough devices that every lane of the endpoint has opened its connection.
    run(worker_batch(telemetry_batch(40, devices=40)))
    after_first = deployed.peer.stats().connections
    for start in range(100, 600, 100):
        run(worker_batch(telemetry_batch(40, devices=40, start=start)))
    assert deployed.peer.stats().connections == after_first


# -- packing: many keys in few sends --------------------------------------------------------------------


def device_event(device: str, seq: int, *, size: int = 40) -> WorkerEvent:
    return WorkerEvent(
        body=(f'{{"n":{seq},"pad":"' + "x" * size + '"}').encode(),
        properties={"n": seq},
        system_properties={**IOTHUB, "iothub-connection-device-id": device},
        sequence_number=seq,
        offset=1000 + seq,
    )


def test_a_batch_of_many_devices_is_one_send_per_partition_each_event_on_its_keys_partition(
    functions: dict[str, Any], deployed: Deployed
) -> None:
    deployed.peer.partition_count = 4
    try:
        events = [device_event(key, seq) for seq, key in enumerate(list(SERVICE_HASHES) * 3)]
        functions["route_telemetry"].get_user_function()(worker_batch(events))
    finally:
        deployed.peer.partition_count = 2
    received = deployed.peer.received("raw-hub")
    assert by_device(received) == expected_by_device(events)
    # The service's partition for a key: |hash % count|, the remainder taking the hash's sign (C#).
    for message in received:
        assert message.partition_id == str(abs(SERVICE_HASHES[str(message.partition_key)]) % 4), message.partition_key
    partitions = {str(abs(h) % 4) for h in SERVICE_HASHES.values()}
    assert sorted(p or "" for p, _count in deployed.peer.transfers("raw-hub")) == sorted(partitions)
    assert not deployed.dead_letters()


def test_twin_events_of_many_objects_are_one_request_per_event_grid_endpoint_and_one_service_bus_batch(
    functions: dict[str, Any], deployed: Deployed
) -> None:
    events = []
    for i in range(40):
        topology = {"Id": f"space-{i % 20}", "Type": "Spaces", "n": i}
        events.append(WorkerEvent(body=json.dumps(topology).encode(), properties={"Type": "TopologyOperation"}))
        events.append(WorkerEvent(body=json.dumps(sensor_data(f"s-{i % 20}", str(i))).encode(), properties=SENSOR))
    for seq, event in enumerate(events):
        event.sequence_number = seq
    functions["route_twins"].get_user_function()(worker_batch(events))

    assert [r.status for r in deployed.grid.requests()] == [200]
    assert [r.status for r in deployed.cloud.requests()] == [200]
    assert [count for _partition, count in deployed.peer.transfers("alerts")] == [40]
    assert len(deployed.peer.transfers("twins-hub")) <= 2  # one per partition
    sessions: dict[str, list[str]] = {}
    for message in deployed.peer.received("alerts"):
        sessions.setdefault(str(message.session_id), []).append(json.loads(message.body)["data"]["Value"])
    assert sessions == {f"s-{k}": [str(k), str(k + 20)] for k in range(20)}
    for receiver in (deployed.grid, deployed.cloud):
        order: dict[str, list[int]] = {}
        for published in receiver.events():
            data = cast(dict[str, Any], published["data"])
            order.setdefault(data["Id"], []).append(data["n"])
        assert order == {f"space-{k}": [k, k + 20] for k in range(20)}
    assert not deployed.dead_letters()


def test_a_device_longer_than_a_batch_keeps_its_order_across_batches(
    functions: dict[str, Any], deployed: Deployed
) -> None:
    deployed.peer.max_message_size = 2000
    try:
        events = [device_event(f"dev-{seq % 3}", seq, size=200) for seq in range(30)]
        functions["route_telemetry"].get_user_function()(worker_batch(events))
    finally:
        deployed.peer.max_message_size = 1024 * 1024
    assert by_device(deployed.peer.received("raw-hub")) == expected_by_device(events)
    transfers = deployed.peer.transfers("raw-hub")
    assert len(transfers) > 2 and any(count > 1 for _partition, count in transfers)  # split, and still packed
    assert not deployed.dead_letters()


def test_a_refused_batch_goes_again_one_by_one_and_only_what_is_refused_alone_fails(
    functions: dict[str, Any], deployed: Deployed
) -> None:
    # dev-0, dev-1 and dev-2 share partition 0 (two partitions); dev-8 is on partition 1. Batches of about
    # four events: the first holds dev-0's two and dev-1's first; dev-2 comes in a later batch.
    plan = ["dev-0", "dev-1", "dev-8", "dev-0", "dev-1", "dev-1", "dev-1", "dev-1", "dev-1", "dev-2", "dev-8", "dev-2"]
    events = [device_event(device, seq, size=300) for seq, device in enumerate(plan)]
    deployed.peer.max_message_size = 1800
    # The hub refuses the first batch on partition 0 (a permanent fault), and the first send after it.
    deployed.peer.reject_next_sends(2, condition=MESSAGE_SIZE_EXCEEDED, entity="raw-hub", partition="0")
    try:
        functions["route_telemetry"].get_user_function()(worker_batch(events))
    finally:
        deployed.peer.max_message_size = 1024 * 1024
    got = by_device(deployed.peer.received("raw-hub"))
    want = expected_by_device(events)
    # The refused batch went again one message at a time, dev-0's first one first: the hub refused that one
    # alone, so it alone is a dead letter (refused in the batch, then alone), and every other message
    # arrived, each device in order (dev-0 goes on after its refused message).
    [letter] = deployed.dead_letters()
    assert (letter["orderKey"], letter["original"]["sequenceNumber"]) == ("dev-0", 0)
    assert len(letter["attempts"]) == 1 and "size" in letter["attempts"][0]["error"].lower()
    assert got == {**want, "dev-0": want["dev-0"][1:]}
    assert not deployed.parked()


def test_a_transient_fault_retries_the_packed_batch_whole_without_duplicates(
    functions: dict[str, Any], deployed: Deployed
) -> None:
    deployed.peer.server_busy(2, entity="raw-hub")
    events = [device_event("dev-8", 0), *(device_event(f"dev-{seq % 8}", seq) for seq in range(1, 24))]
    functions["route_telemetry"].get_user_function()(worker_batch(events))
    assert by_device(deployed.peer.received("raw-hub")) == expected_by_device(events)
    assert sorted(count for _partition, count in deployed.peer.transfers("raw-hub")) == [1, 23]
    assert deployed.peer.stats().deliveries_rejected == (SERVER_BUSY, SERVER_BUSY)
    assert not deployed.dead_letters()


def test_service_bus_sends_one_batch_per_session_once_a_partitioned_entity_refuses_mixed_ones(
    functions: dict[str, Any], deployed: Deployed
) -> None:
    deployed.peer.partition_entities({"alerts"})
    run = functions["route_twins"].get_user_function()
    first = [sensor_event(f"s-{i % 3}", i) for i in range(9)]
    run(worker_batch(first))
    run(worker_batch([sensor_event(f"s-{i % 2}", i) for i in range(20, 24)]))

    assert deployed.peer.stats().deliveries_rejected == (NOT_ALLOWED,), "refused once, then remembered"
    assert sorted(count for _partition, count in deployed.peer.transfers("alerts")) == [2, 2, 3, 3, 3]
    sessions: dict[str, list[str]] = {}
    for message in deployed.peer.received("alerts"):
        sessions.setdefault(str(message.session_id), []).append(json.loads(message.body)["data"]["Value"])
    assert sessions == {"s-0": ["0", "3", "6", "20", "22"], "s-1": ["1", "4", "7", "21", "23"], "s-2": ["2", "5", "8"]}
    assert not deployed.dead_letters()


def test_event_grid_requests_are_split_under_1_mb_and_keep_each_objects_order(
    functions: dict[str, Any], deployed: Deployed
) -> None:
    assert deployed.grid.max_request_size == 1024 * 1024  # Event Grid answers 413 above it
    # Non-ASCII and separators: the publisher's JSON (escaped, spaced) is larger than the envelope's.
    pad = "é, :" * 45_000
    events = [
        WorkerEvent(
            body=json.dumps({"Id": f"space-{i % 2}", "Type": "Spaces", "n": i, "pad": pad}).encode(),
            properties={"Type": "TopologyOperation"},
            sequence_number=i,
        )
        for i in range(6)
    ]
    functions["route_twins"].get_user_function()(worker_batch(events))
    requests = deployed.grid.requests()
    assert len(requests) >= 2 and all(r.status == 200 for r in requests), [(r.status, r.size) for r in requests]
    order: dict[str, list[int]] = {}
    for event in deployed.grid.events():
        data = cast(dict[str, Any], event["data"])
        order.setdefault(data["Id"], []).append(data["n"])
    assert order == {"space-0": [0, 2, 4], "space-1": [1, 3, 5]}
    assert not [x for x in deployed.dead_letters() if x["endpoint"] == "grid"]


def test_cloud_events_are_published_without_a_warning_per_event(
    functions: dict[str, Any], deployed: Deployed, caplog: pytest.LogCaptureFixture
) -> None:
    events = [
        WorkerEvent(
            body=json.dumps({"Id": f"space-{i}", "Type": "Spaces"}).encode(),
            properties={"Type": "TopologyOperation"},
            sequence_number=i,
        )
        for i in range(3)
    ]
    with caplog.at_level(logging.DEBUG):
        functions["route_twins"].get_user_function()(worker_batch(events))
    assert len(deployed.cloud.events()) == 3
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("azure")]
    assert not noisy


def test_event_grid_sdk_retries_are_off_so_each_try_is_one_request(
    functions: dict[str, Any], deployed: Deployed
) -> None:
    deployed.grid.fail_next(503, times=20)
    event = WorkerEvent(
        body=json.dumps({"Id": "d", "Type": "Devices"}).encode(), properties={"Type": "TopologyOperation"}
    )
    functions["route_twins"].get_user_function()(worker_batch([event]))
    assert [r.status for r in deployed.grid.requests()] == [503, 503, 503]  # the sender's three tries, no more
    # Still failing after them: parked (redelivered later, in order), with every attempt; not a dead letter.
    [parked] = [x for x in deployed.parked() if x["endpoint"] == "grid"]
    assert len(parked["attempts"]) == 3 and "503" in parked["attempts"][-1]["error"]
    assert not deployed.dead_letters()


def test_a_connection_setting_missing_from_the_app_is_named_and_not_retried(
    functions: dict[str, Any], deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAW")
    wiring.reset()
    functions["route_telemetry"].get_user_function()(worker_batch(telemetry_batch(2, devices=1)))
    letters = sorted(deployed.dead_letters(), key=lambda x: x["original"]["sequenceNumber"])
    # Not retried (the setting will not appear within the invocation), not parked: each is a dead letter
    # that names the setting, to replay once it is set.
    assert [x["code"] for x in letters] == ["delivery-failed", "delivery-failed"]
    assert all("app setting RAW is not set" in x["reason"] and len(x["attempts"]) == 1 for x in letters)
    assert not deployed.parked()
