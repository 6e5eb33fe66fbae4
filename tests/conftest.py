"""Shared test helpers: ingress messages as each producer sends them, and Functions trigger input built
the way the worker builds it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from azure.functions import EventHubEvent, meta
from azure.functions.eventhub import EventHubTriggerConverter

from routing.model import IngressMessage

pytest_plugins = ["tests.azurite"]  # the `azurite` session fixture: real Table/Blob/Queue storage


def telemetry(device: str, body: bytes, *, seq: int, partition: str = "0", **props: Any) -> IngressMessage:
    """IoT Hub telemetry as it arrives on the Event Hub-compatible endpoint."""
    return IngressMessage(
        body=body,
        properties=props,
        system_properties={"iothub-connection-device-id": device, "iothub-message-source": "Telemetry"},
        source="telemetry",
        partition=partition,
        sequence_number=seq,
    )


def twin_event(
    body: Any, *, seq: int, properties: dict[str, Any] | None = None, raw: bytes | None = None
) -> IngressMessage:
    return IngressMessage(
        body=raw if raw is not None else json.dumps(body).encode(),
        properties=properties or {},
        system_properties={},
        source="twins",
        partition="1",
        sequence_number=seq,
        enqueued_time="2026-11-26T09:00:00Z",
    )


def sensor_data(sensor_id: str, value: str = "21.5") -> dict[str, Any]:
    return {
        "Type": "Sensor",
        "DataType": "Temperature",
        "Id": sensor_id,
        "Value": value,
        "PreviousValue": "21.0",
        "EventTimestamp": "2026-11-26T08:00:00Z",
        "MessageType": "SensorChange",
        "Properties": {},
    }


@dataclass
class WorkerEvent:
    """One event as the Functions host delivers it for `cardinality="many"`."""

    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)
    system_properties: dict[str, Any] = field(default_factory=dict)
    sequence_number: int = 0
    offset: int = 0
    enqueued_time: str = "2026-11-26T09:00:00.000Z"


def worker_batch(events: Sequence[WorkerEvent], *, partition_id: str = "0") -> list[EventHubEvent]:
    """Decode a batch with the Functions library's own converter, as the Python worker does."""
    system = [
        {
            **e.system_properties,
            "SequenceNumber": e.sequence_number,
            "Offset": e.offset,
            "EnqueuedTimeUtc": e.enqueued_time,
            "PartitionKey": None,
        }
        for e in events
    ]
    metadata = {
        "SystemPropertiesArray": meta.Datum(json.dumps(system), "json"),
        "PropertiesArray": meta.Datum(json.dumps([e.properties for e in events]), "json"),
        "PartitionContext": meta.Datum(
            json.dumps({"ConsumerGroup": "router", "EventHubName": "ingress", "PartitionId": partition_id}), "json"
        ),
    }
    data = meta.Datum(SimpleNamespace(bytes=[e.body for e in events]), "collection_bytes")
    decoded = EventHubTriggerConverter.decode(data, trigger_metadata=metadata)
    assert isinstance(decoded, list)
    return decoded


@pytest.fixture(scope="session")
def functions() -> dict[str, Any]:
    """function_app's functions by name; `get_functions()` may be called once per process."""
    import function_app  # noqa: PLC0415 - importing it indexes the app; only the tests that need it pay

    return {str(f.get_function_name()): f for f in function_app.app.get_functions()}
