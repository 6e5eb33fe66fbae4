"""What an operator sees: the OpenTelemetry metrics and log records of a routed batch, captured with
in-memory exporters."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import azure.monitor.opentelemetry
import pytest
from azure.data.tables import TableClient
from azure.storage.blob import ContainerClient
from opentelemetry import metrics
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from routing import observability
from routing.deadletters import client_options
from routing.health import PROBE_INITIAL_SECONDS, REFRESH_SECONDS
from routing.ingest.classify import classify
from routing.model import Event, IngressMessage
from routing.pipeline import Router, StaticRoutes
from routing.routes.table import parse_routes
from routing.routes.tables import RoutesRefusedError, TableRoutes, to_entity
from tests.azurite import Azurite
from tests.conftest import sensor_data
from tests.fakes import FakeSenders, FakeWire, MemoryDeadLetters
from tests.test_infra import app_settings
from tests.test_parking import Clock, Instance, batch, fail

READER = InMemoryMetricReader()


@pytest.fixture(scope="module")
def reader() -> InMemoryMetricReader:
    # The instruments come from the global (proxy) meter, so a provider set now still receives them.
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
    return READER


@pytest.fixture
def otel_logs() -> Iterator[InMemoryLogRecordExporter]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    logger = logging.getLogger("routing")
    logger.addHandler(handler)
    yield exporter
    logger.removeHandler(handler)


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def total(found: dict[str, list[Any]], name: str, **attributes: str) -> float:
    matching = [p for p in found.get(name, []) if all(p.attributes.get(k) == v for k, v in attributes.items())]
    return float(sum(p.value for p in matching))


def message(kind: str, key: str, seq: int, hub: str) -> IngressMessage:
    if kind == "telemetry":
        return IngressMessage(
            body=b'{"secret-looking body": "do-not-log"}',
            properties={},
            system_properties={"iothub-connection-device-id": key},
            source=hub,
            partition="0",
            sequence_number=seq,
            enqueued_time="2026-01-01T00:00:00Z",
        )
    if kind == "space":
        body = json.dumps({"Id": key, "Type": "Space"}).encode()
        return IngressMessage(
            body=body, properties={"Type": "SpaceChange"}, system_properties={}, source=hub, sequence_number=seq
        )
    if kind == "sensor":
        body = json.dumps(sensor_data(key)).encode()
        return IngressMessage(
            body=body, properties={"Type": "SensorChange"}, system_properties={}, source=hub, sequence_number=seq
        )
    return IngressMessage(body=b"garbage", properties={}, system_properties={}, source=hub, sequence_number=seq)


def test_a_routed_batch_is_measured_by_hub_endpoint_type_and_reason(
    reader: InMemoryMetricReader, otel_logs: InMemoryLogRecordExporter
) -> None:
    hub = f"hub-{uuid.uuid4().hex[:6]}"  # metrics are cumulative: a hub of its own keeps this test's counts apart
    table = parse_routes(
        [
            {"name": f"{hub}-raw", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "P",
             "secondaryConnection": "S", "path": "h"},
            {"name": f"{hub}-bus", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "B",
             "path": "q"},
        ]
    )  # fmt: skip
    batch = [
        message("telemetry", "d1", 0, hub),
        message("telemetry", "d2", 1, hub),
        message("sensor", "s1", 2, hub),
        message("sensor", "s2", 3, hub),
        message("space", "sp", 4, hub),
        message("garbage", "", 5, hub),
    ]
    wire = FakeWire(refused_settings={"P"})
    s2 = next(r for r in classify(batch[3]) if isinstance(r, Event))
    wire.faults[f"{hub}-bus/{s2.message_id}"] = ["transient", "permanent"]
    Router(routes=StaticRoutes(table), senders=FakeSenders(wire), dead_letters=MemoryDeadLetters()).route(batch)

    found = points(reader)
    assert total(found, "router.events.in", hub=hub, event_type="DeviceMessages") == 2
    assert total(found, "router.events.in", hub=hub, event_type="SensorChange") == 2
    assert total(found, "router.events.in", hub=hub, event_type="Unclassified") == 1
    assert total(found, "router.messages.delivered", endpoint=f"{hub}-raw", event_type="DeviceMessages") == 2
    assert total(found, "router.messages.delivered", endpoint=f"{hub}-bus", event_type="SensorChange") == 1
    assert total(found, "router.delivery.failovers", endpoint=f"{hub}-raw") == 1
    assert total(found, "router.delivery.retries", endpoint=f"{hub}-bus") == 1
    assert total(found, "router.deadletters", reason="delivery-failed") >= 1
    assert total(found, "router.deadletters", reason="not-json") >= 1
    assert total(found, "router.unrouted", event_type="SpaceChange") >= 1
    latency = [p for p in found["router.delivery.latency"] if p.attributes.get("endpoint") == f"{hub}-raw"]
    assert latency and latency[0].count == 1
    lag = [p for p in found["router.lag"] if p.attributes.get("hub") == hub]
    assert lag and lag[0].count == 1 and lag[0].min > 0

    records = [r.log_record for r in otel_logs.get_finished_logs()]
    dead = [
        r for r in records if (r.attributes or {}).get("endpoint") == f"{hub}-bus" and "dead-lettered" in str(r.body)
    ]
    assert len(dead) == 1
    attributes = dict(dead[0].attributes or {})
    assert attributes["event_type"] == "SensorChange"
    assert attributes["order_key"] == "s2"
    assert attributes["message_id"] == s2.message_id
    retry = [r for r in records if (r.attributes or {}).get("attempt") == 1]
    assert retry and dict(retry[0].attributes or {})["order_key"] == "s2"
    assert not any("do-not-log" in str(r.body) or "do-not-log" in str(r.attributes) for r in records)


def test_route_table_loads_and_invalid_rows_are_counted(reader: InMemoryMetricReader, azurite: Azurite) -> None:
    name = f"obs{uuid.uuid4().hex[:10]}"
    client = TableClient.from_connection_string(azurite.connection_string, name)
    client.create_table()
    good = parse_routes(
        [{"name": "ok", "type": "EventHub", "eventTypes": ["SensorChange"], "connection": "C", "path": "h"}]
    )
    client.create_entity(to_entity(good.endpoints[0]))
    client.create_entity({"PartitionKey": "endpoint", "RowKey": "bad", "Name": "bad", "Type": "Kafka"})
    before = points(reader)
    routes = TableRoutes(client, refresh_seconds=30, clock=lambda: 0.0)
    with pytest.raises(RoutesRefusedError):  # a table with an invalid row is not used (routing/routes/tables.py)
        routes.current()
    after = points(reader)
    assert (
        total(after, "router.routes.refreshes", outcome="invalid")
        == total(before, "router.routes.refreshes", outcome="invalid") + 1
    )
    assert total(after, "router.routes.invalid_rows") == total(before, "router.routes.invalid_rows") + 1


# --- where telemetry goes: each log record and metric exported once ----------------------------------------

WORKER_EXPORTS_LOGS = "PYTHON_ENABLE_OPENTELEMETRY"
WORKER_CONFIGURES = "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"


def exports(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """How many times a `routing` log record and a router metric reach Application Insights, by what the
    host and the Python worker do with these settings (their sources: the host drops the worker's
    `Function.*` logs from its OpenTelemetry export only when the worker reports WorkerOpenTelemetryEnabled,
    which it does for either setting; PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY also makes it call
    configure_azure_monitor for the root logger) plus what routing.observability.configure does."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(azure.monitor.opentelemetry, "configure_azure_monitor", lambda **kw: calls.append(kw))
    monkeypatch.setattr(observability, "_configured", False)
    observability.configure(env)
    assert len(calls) <= 1, "configure_azure_monitor called twice"

    def on(name: str) -> bool:
        return env.get(name, "").lower() == "true"

    in_functions = bool(env.get("FUNCTIONS_WORKER_RUNTIME"))  # else no host and no worker: a local run
    host_logs = in_functions and not (on(WORKER_EXPORTS_LOGS) or on(WORKER_CONFIGURES))
    worker = in_functions and on(WORKER_CONFIGURES)
    app_logs = sum(1 for kw in calls if kw.get("logger_name") == "routing" and not kw.get("disable_logging"))
    return int(host_logs) + int(worker) + app_logs, int(worker) + len(calls)


def deployed_env() -> dict[str, str]:
    # What the function app's process sees: the Bicep's settings (values as written), and the platform's.
    env = {name: str(value) for name, value in app_settings().items()}
    return {**env, "FUNCTIONS_WORKER_RUNTIME": "python"}


def test_the_deployed_settings_export_every_log_and_metric_once_signed_with_the_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = deployed_env()
    assert exports(env, monkeypatch) == (1, 1)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(azure.monitor.opentelemetry, "configure_azure_monitor", lambda **kw: calls.append(kw))
    monkeypatch.setattr(observability, "_configured", False)
    assert observability.configure(env) == "Application Insights"
    [call] = calls
    assert call["logger_name"] == "routing" and not call["disable_logging"]
    assert call["credential"] is not None  # Application Insights takes Entra tokens only


@pytest.mark.parametrize("exports_logs", ["true", "false", None])
@pytest.mark.parametrize("configures", ["true", "false", None])
@pytest.mark.parametrize("runtime", ["python", None])
def test_no_combination_of_the_worker_settings_exports_anything_twice(
    exports_logs: str | None, configures: str | None, runtime: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000"}
    if runtime is not None:
        env["FUNCTIONS_WORKER_RUNTIME"] = runtime
    for name, value in ((WORKER_EXPORTS_LOGS, exports_logs), (WORKER_CONFIGURES, configures)):
        if value is not None:
            env[name] = value
    assert exports(env, monkeypatch) == (1, 1)


def test_without_application_insights_nothing_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert exports({"FUNCTIONS_WORKER_RUNTIME": "python", WORKER_EXPORTS_LOGS: "true"}, monkeypatch) == (0, 0)


def test_endpoint_state_and_parked_gauges_follow_an_outage_to_its_end(
    reader: InMemoryMetricReader, azurite: Azurite
) -> None:
    container = ContainerClient.from_connection_string(
        azurite.connection_string, f"gauge{uuid.uuid4().hex[:12]}", **client_options()
    )
    container.create_container()
    wire = FakeWire(mixed=True)
    clock = Clock()
    live, timer = Instance(container, wire, clock), Instance(container, wire, clock)
    fail(wire, "hub", "dev-1", 0)
    live.router.route(batch(("dev-1", 0), ("dev-1", 1)))
    timer.redeliver()  # not due yet: parked, and counted by the run
    found = points(reader)
    assert total(found, "router.endpoint.state", endpoint="hub") == 2  # unhealthy
    assert total(found, "router.parked.messages", endpoint="hub") == 2
    assert total(found, "router.parked.messages", endpoint="other") == 0  # nothing parked: said so too

    clock.advance(PROBE_INITIAL_SECONDS + REFRESH_SECONDS)
    timer.redeliver()  # delivered: the gauges go back to 0, not stay at their last value
    live.router.route(batch(("dev-2", 2)))  # the live instance reads the shared record and closes its circuit
    found = points(reader)
    assert total(found, "router.parked.messages", endpoint="hub") == 0
    assert total(found, "router.parked.keys", endpoint="hub") == 0
    assert total(found, "router.endpoint.state", endpoint="hub") == 1  # degraded: back, recovering
    container.delete_container()
