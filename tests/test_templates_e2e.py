"""Order key templates, enrichments and one-destination sends on the wire: function_app's functions
through the unmodified Event Hubs and Service Bus SDKs to the local AMQP 1.0 peer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from tests.azurite import Azurite
from tests.conftest import WorkerEvent, sensor_data, worker_batch
from tests.deployment import deployed_app, stored_letters
from tests.peers.amqp import AmqpPeer

ROUTES: list[dict[str, Any]] = [
    {"name": "leaves", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "HUB",
     "path": "leaves", "orderKey": "$body.DeviceId",
     "enrichments": {"site": "plant-7", "reading": "$body.t", "gateway": "$system['iothub-connection-device-id']"}},
    {"name": "floors", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "BUS", "path": "floors",
     "orderKey": "{$body.Properties.Building}/{$body.Properties.Floor}",
     "enrichments": {"building": "$body.Properties.Building"}},
    {"name": "keyed", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "HUB", "path": "keyed",
     "orderKey": "$body.DeviceId", "partitioning": "service"},
    # A session id longer than Service Bus allows (128 characters) for one of the sensors.
    {"name": "labels", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "BUS", "path": "labels",
     "orderKey": "{$body.Properties.Label}"},
    # The same queue, message shape and all, for warm sensors: an event matching both goes once.
    {"name": "floors-warm", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "BUS",
     "path": "floors", "filter": "$body.Value > '20'",
     "orderKey": "{$body.Properties.Building}/{$body.Properties.Floor}",
     "enrichments": {"building": "$body.Properties.Building"}},
]  # fmt: skip


@pytest.fixture(scope="module")
def amqp() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities={"leaves", "floors", "keyed", "labels"}) as peer:
        yield peer


@pytest.fixture
def deployed(
    amqp: AmqpPeer, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ContainerClient]:
    amqp.clear()
    connections = {"HUB": amqp.connection_string(), "BUS": amqp.connection_string()}
    with deployed_app(ROUTES, connections, azurite=azurite, tmp_path=tmp_path, monkeypatch=monkeypatch) as letters:
        yield letters


def gateway(seq: int, body: dict[str, Any]) -> WorkerEvent:
    system = {"iothub-connection-device-id": "gateway-1", "iothub-message-source": "Telemetry"}
    return WorkerEvent(body=json.dumps(body).encode(), system_properties=system, sequence_number=seq)


def sensor(seq: int, sensor_id: str, floor: int, value: str, label: str = "") -> WorkerEvent:
    data = sensor_data(sensor_id, value) | {
        "Properties": {"Building": "B7", "Floor": floor, "Label": label or sensor_id}
    }
    return WorkerEvent(body=json.dumps(data).encode(), properties={"Type": "SensorChange"}, sequence_number=seq)


def test_a_gateways_leaves_are_keyed_and_enriched_on_the_event_hub(
    functions: dict[str, Any], amqp: AmqpPeer, deployed: ContainerClient
) -> None:
    readings = [("leaf-a", 1), ("leaf-b", 2), ("leaf-a", 3), ("leaf-c", 4), ("leaf-b", 5)]
    batch = [gateway(i, {"DeviceId": leaf, "t": t}) for i, (leaf, t) in enumerate(readings)]
    functions["route_telemetry"].get_user_function()(worker_batch(batch))

    received = amqp.received("leaves")
    by_leaf: dict[str | None, list[int]] = {}
    for message in received:
        by_leaf.setdefault(message.partition_key, []).append(json.loads(message.body)["t"])
    # Keyed by the leaf in the body (not the gateway), each leaf's readings in order.
    assert by_leaf == {"leaf-a": [1, 3], "leaf-b": [2, 5], "leaf-c": [4]}
    assert all(m.partition_id is not None for m in received)  # sent per partition, the router's choice
    # With "partitioning": "service", one batch per key to the hub, and the service picks the partition.
    keyed = amqp.received("keyed")
    assert {m.partition_id for m in keyed} == {None}
    per_key: dict[str | None, list[int]] = {}
    for message in keyed:
        per_key.setdefault(message.partition_key, []).append(json.loads(message.body)["t"])
    assert per_key == {"leaf-a": [1, 3], "leaf-b": [2, 5], "leaf-c": [4]}
    first = next(m for m in received if json.loads(m.body)["t"] == 1)
    assert dict(first.application_properties) == {"site": "plant-7", "reading": 1, "gateway": "gateway-1"}


def test_sensor_events_are_sessioned_per_floor_and_sent_once_to_the_shared_queue(
    functions: dict[str, Any], amqp: AmqpPeer, deployed: ContainerClient
) -> None:
    events = [sensor(0, "s1", 3, "25.0"), sensor(1, "s2", 4, "10.0"), sensor(2, "s3", 3, "21.0")]
    functions["route_twins"].get_user_function()(worker_batch(events, partition_id="1"))

    received = amqp.received("floors")
    # Three events, each once, though s1 and s3 matched both endpoints of the queue.
    sessions = [(m.session_id, json.loads(m.body)["data"]["Id"]) for m in received]
    assert sorted(sessions) == [("B7/3", "s1"), ("B7/3", "s3"), ("B7/4", "s2")]
    assert [i for g, i in sessions if g == "B7/3"] == ["s1", "s3"]
    for message in received:
        assert message.application_properties["building"] == "B7"
        assert message.application_properties["EventType"] == "SensorChange"


def test_a_session_id_service_bus_would_refuse_fails_that_message_alone_and_at_once(
    functions: dict[str, Any], amqp: AmqpPeer, deployed: ContainerClient
) -> None:
    events = [
        sensor(0, "s1", 3, "25.0"),
        sensor(1, "s2", 3, "25.0", label="x" * 129),
        sensor(2, "s3", 3, "25.0"),
        sensor(3, "s2", 3, "26.0", label="x" * 129),
    ]
    functions["route_twins"].get_user_function()(worker_batch(events, partition_id="2"))

    assert sorted(str(m.session_id) for m in amqp.received("labels")) == ["s1", "s3"]
    letters = list(stored_letters(deployed).values())
    by_seq = {x["original"]["sequenceNumber"]: x for x in letters if x["endpoint"] == "labels"}
    assert sorted(by_seq) == [1, 3]
    # Each refused alone, at once (not retried: it would never pass); neither holds the key back.
    for letter in by_seq.values():
        assert letter["code"] == "delivery-failed" and "longer than 128 characters" in letter["reason"]
        assert len(letter["attempts"]) == 1
