"""W3C trace context runs through the router: what a message came with (a `traceparent` property, a
CloudEvent's distributed-tracing extension, `Diagnostic-Id`) goes out on every message sent for it, and
each batch's span links to it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from routing.ingest import trace
from routing.model import IngressMessage
from routing.pipeline import Router, StaticRoutes
from routing.routes.table import parse_routes
from tests.conftest import sensor_data, telemetry
from tests.fakes import FakeSenders, FakeWire, MemoryDeadLetters

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OTHER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SPANS = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    # The router's tracer is the global proxy's: a provider set now still receives its spans.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SPANS))
    otel_trace.set_tracer_provider(provider)
    return SPANS


@pytest.mark.parametrize(
    ("properties", "found"),
    [
        ({"traceparent": PARENT, "tracestate": "congo=t61rcWkgMzE"}, (PARENT, "congo=t61rcWkgMzE")),
        ({"cloudEvents:traceparent": PARENT}, (PARENT, None)),
        ({"ce-traceparent": PARENT, "ce-tracestate": "a=1"}, (PARENT, "a=1")),
        ({"Diagnostic-Id": PARENT}, (PARENT, None)),
        ({"traceparent": PARENT.upper()}, (PARENT, None)),  # hex is read case-insensitively
        ({"traceparent": OTHER, "Diagnostic-Id": PARENT}, (OTHER, None)),  # W3C names first
        ({"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"}, None),  # all-zero trace id
        ({"traceparent": "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, None),  # version ff
        ({"traceparent": "00-5-5-01"}, None),
        ({"Diagnostic-Id": "|abc.1."}, None),  # the older hierarchical id: not W3C
        ({}, None),
    ],
)
def test_the_trace_context_of_a_message_is_found_where_it_travels_and_only_if_valid(
    properties: dict[str, Any], found: tuple[str, str | None] | None
) -> None:
    message = IngressMessage(body=b"{}", properties=properties, system_properties={}, source="twins")
    assert trace.of_message(message) == (trace.TraceContext(*found) if found else None)


SENSOR = "SensorChange"
TABLE = parse_routes(
    [
        {"name": "hub", "type": "EventHub", "eventTypes": [SENSOR, "DeviceMessages"], "connection": "A", "path": "h"},
        {"name": "bus", "type": "ServiceBus", "eventTypes": [SENSOR], "connection": "B", "path": "q",
         "format": "CloudEventSchemaV1_0"},
    ]
)  # fmt: skip


def sensor(seq: int, **properties: Any) -> IngressMessage:
    return IngressMessage(
        body=json.dumps(sensor_data(f"s-{seq}")).encode(),
        properties={"Type": SENSOR, **properties},
        system_properties={},
        source="twins",
        partition="0",
        sequence_number=seq,
    )


def test_digital_twins_events_carry_their_trace_context_out_and_the_batch_span_links_to_it(
    spans: InMemorySpanExporter,
) -> None:
    spans.clear()
    wire = FakeWire(mixed=True)
    router = Router(routes=StaticRoutes(TABLE), senders=FakeSenders(wire), dead_letters=MemoryDeadLetters())
    device = telemetry("dev-1", b"21.5", seq=2, traceparent=OTHER)
    router.route([sensor(0, traceparent=PARENT, tracestate="a=1"), sensor(1), device])

    hub = {m.event.ingress.sequence_number: m for m in wire.delivered["hub"]}
    assert hub[0].properties["traceparent"] == PARENT and hub[0].properties["tracestate"] == "a=1"
    assert hub[0].properties["Diagnostic-Id"] == PARENT  # what the Azure SDKs' consumers read
    assert "traceparent" not in hub[1].properties  # nothing came, nothing invented
    assert hub[2].properties == {"traceparent": OTHER}  # raw telemetry: its properties as they came
    [bus] = [m for m in wire.delivered["bus"] if m.event.ingress.sequence_number == 0]
    assert json.loads(bus.body)["traceparent"] == PARENT  # the CloudEvents extension, in the envelope

    [span] = [s for s in spans.get_finished_spans() if s.name == "route batch"]
    linked = {f"{link.context.trace_id:032x}" for link in span.links}
    assert linked == {PARENT.split("-")[1], OTHER.split("-")[1]}
    assert all(link.context.is_remote for link in span.links)


def test_a_batch_links_each_trace_once(spans: InMemorySpanExporter) -> None:
    spans.clear()
    router = Router(routes=StaticRoutes(TABLE), senders=FakeSenders(FakeWire()), dead_letters=MemoryDeadLetters())
    router.route([sensor(i, traceparent=PARENT) for i in range(5)])
    [span] = [s for s in spans.get_finished_spans() if s.name == "route batch"]
    assert len(span.links) == 1
