"""IoT Hub's other sources end to end: function_app's `route_telemetry` on worker-shaped input (the hub
IoT Hub routes to carries them beside telemetry), through the unmodified Event Hubs and Service Bus SDKs
to the local AMQP 1.0 peer, read back as a consumer would: each device's telemetry, connection state,
lifecycle and twin changes in one order per device, bodies byte for byte, properties as they came.

The events are Microsoft's examples (tests/test_iot_hub_sources.py names the pages), as the Functions
host hands them over: IoT Hub's annotations and the AMQP properties among the system properties."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from tests.azurite import Azurite
from tests.conftest import WorkerEvent, worker_batch
from tests.deployment import deployed_app
from tests.host import net_datetime
from tests.peers.amqp import AmqpPeer, ReceivedMessage
from tests.test_iot_hub_sources import CONNECTION_STATE, DIGITAL_TWIN_CHANGED, MODULE_CREATED, TWIN_CHANGED

SOURCES = [
    "TwinChangeEvents",
    "DeviceLifecycleEvents",
    "DeviceConnectionStateEvents",
    "DigitalTwinChangeEvents",
    "DeviceJobLifecycleEvents",
]


@pytest.fixture(scope="module")
def amqp() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities={"devices", "operations"}) as peer:
        yield peer


@pytest.fixture
def routed(
    functions: dict[str, Any], amqp: AmqpPeer, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ContainerClient]:
    routes = [
        {"name": "devices", "type": "EventHub", "eventTypes": ["DeviceMessages", *SOURCES], "connection": "HUB",
         "path": "devices"},
        {"name": "operations", "type": "ServiceBus", "eventTypes": SOURCES, "connection": "BUS", "path": "operations"},
    ]  # fmt: skip
    connections = {"HUB": amqp.connection_string(), "BUS": amqp.connection_string()}
    amqp.clear()
    with deployed_app(routes, connections, azurite=azurite, tmp_path=tmp_path, monkeypatch=monkeypatch) as letters:
        functions["route_telemetry"].get_user_function()(worker_batch(EVENTS, partition_id="1"))
        yield letters


def example(seq: int, documented: dict[str, Any], **application: str) -> WorkerEvent:
    system = {**documented["system"], "iothub-enqueuedtime": net_datetime(f"2026-11-26T09:00:{seq:02d}Z", kind="utc")}
    return WorkerEvent(
        body=json.dumps(documented["payload"], indent=1).encode(),  # as sent, spacing too
        properties={**documented["application"], **application},
        system_properties=system,
        sequence_number=seq,
        offset=1000 + seq,
    )


def telemetry(seq: int, device: str, module: str | None = None) -> WorkerEvent:
    system = {"iothub-connection-device-id": device, "iothub-message-source": "Telemetry"}
    if module:
        system["iothub-connection-module-id"] = module
    return WorkerEvent(
        body=b'{"reading": %d}' % seq,
        properties={"seq": str(seq)},
        system_properties={**system, "content-type": "application/json", "content-encoding": "utf-8"},
        sequence_number=seq,
        offset=1000 + seq,
    )


CONNECTED = {"opType": "deviceConnected", "operationTimestamp": "2022-06-01T18:40:00.0000000Z"}
EVENTS = [
    example(0, CONNECTION_STATE, **CONNECTED),
    telemetry(1, "contoso-device-1"),
    example(2, MODULE_CREATED),
    telemetry(3, "contoso-device-3", "module-1"),
    example(4, TWIN_CHANGED),
    telemetry(5, "contoso-device-1"),
    example(6, DIGITAL_TWIN_CHANGED),
    example(7, CONNECTION_STATE),  # deviceDisconnected, after its telemetry
    telemetry(8, "contoso-device-3", "module-1"),
]
# What each device's consumer sees, in this order: (what, sequence number), written out by hand.
EXPECTED = {
    "contoso-device-1": [("deviceConnected", 0), ("telemetry", 1), ("telemetry", 5), ("deviceDisconnected", 7)],
    "contoso-device-2": [("createDeviceIdentity", 2)],
    "contoso-device-3": [("telemetry", 3), ("updateTwin", 4), ("telemetry", 8)],
    "sample-device": [("digitalTwinChange", 6)],
}
SENT = {e.sequence_number: e for e in EVENTS}


def seq_of(message: ReceivedMessage) -> int:
    """The sequence number of the event a message forwards: found by its body and properties, both
    forwarded as they came."""
    properties = dict(message.application_properties)
    [seq] = [seq for seq, sent in SENT.items() if (sent.body, sent.properties) == (message.body, properties)]
    return seq


def what(message: ReceivedMessage) -> tuple[str, int]:
    properties = message.application_properties
    if "seq" in properties:
        return "telemetry", seq_of(message)
    return str(properties.get("opType", "digitalTwinChange")), seq_of(message)


def per_key(messages: list[ReceivedMessage], key: str) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for message in messages:
        out.setdefault(str(getattr(message, key)), []).append(what(message))
    return out


def test_event_hubs_get_each_devices_events_and_telemetry_in_one_order_keyed_by_device(
    amqp: AmqpPeer, routed: ContainerClient
) -> None:
    received = amqp.received("devices")
    assert per_key(received, "partition_key") == EXPECTED
    assert not list(routed.list_blobs())  # nothing dead-lettered


def test_bodies_properties_and_content_types_arrive_as_iot_hub_sent_them(
    amqp: AmqpPeer, routed: ContainerClient
) -> None:
    received = amqp.received("devices") + amqp.received("operations")
    assert len(received) == len(EVENTS) + 5  # the five non-telemetry events twice
    for message in received:
        sent = SENT[seq_of(message)]
        assert dict(message.application_properties) == sent.properties
        assert message.content_type == sent.system_properties["content-type"]
    patch = next(m for m in received if what(m) == ("digitalTwinChange", 6))
    assert patch.content_type == "application/json-patch+json"


def test_service_bus_gets_the_sources_in_device_sessions_each_with_its_own_id(
    amqp: AmqpPeer, routed: ContainerClient
) -> None:
    received = amqp.received("operations")
    not_telemetry = {key: [e for e in events if e[0] != "telemetry"] for key, events in EXPECTED.items()}
    assert per_key(received, "session_id") == not_telemetry
    assert len({m.message_id for m in received}) == 5
