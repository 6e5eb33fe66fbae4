"""Shared test helpers: ingress messages as each producer sends them, and Functions trigger input built
the way the worker builds it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from routing.model import IngressMessage
from tests.host import WorkerEvent, worker_batch
from tests.worker import index_function_app

__all__ = ["WorkerEvent", "worker_batch"]  # trigger input as the host builds it: tests/host.py

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


@pytest.fixture(scope="session")
def functions() -> dict[str, Any]:
    """function_app's functions by name, indexed as the Python worker indexes them (tests/worker.py):
    a function the worker would refuse fails every test that uses it. `get_functions()` may be called
    once per process."""
    import function_app  # noqa: PLC0415 - importing it indexes the app; only the tests that need it pay

    return {str(f.get_function_name()): f for f in index_function_app(function_app)}
