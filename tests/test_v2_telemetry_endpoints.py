"""Today's Digital Twins telemetry (`microsoft.iot.telemetry`) on each endpoint kind Digital Twins routes it
to: Event Hubs and Service Bus get the message as it came (body bytes, `cloudEvents:*` properties), Event
Grid the CloudEvent those properties describe, its data the body, passing the strict receiver.

Messages as the service sends them ("Event notifications", Azure Digital Twins docs,
articles/digital-twins/concepts-event-notifications.md: `id`, `source` ending in the twin,
`dataschema` the model, `datacontenttype` application/json, `traceparent`; on Event Hubs and Service Bus
in the AMQP binding of CloudEvents, attributes as `cloudEvents:` properties, the content type the AMQP
`content-type`)."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest

from routing.deliver.envelope import build
from routing.deliver.eventgrid import extension_problem
from routing.ingest.classify import classify
from routing.model import Event, IngressMessage
from routing.routes.table import Endpoint, parse_routes
from tests.peers.eventgrid import problem_with

HOST = "contoso-adt.api.wus2.digitaltwins.azure.net"
SOURCE = f"{HOST}/digitaltwins/room1"
MODEL = "dtmi:example:com:floor4;2"
TRACE = "00-7e3081c6d3edfb4eaf7d3244b2036baa-23d762f4d9f81741-01"
ATTRIBUTES = {
    "cloudEvents:specversion": "1.0",
    "cloudEvents:id": "df5a5992-817b-4e8a-b12c-e0b18d4bf8fb",
    "cloudEvents:type": "microsoft.iot.telemetry",
    "cloudEvents:source": SOURCE,
    "cloudEvents:dataschema": MODEL,
    "cloudEvents:traceparent": TRACE,
}


def binary(
    body: bytes, content_type: str | None = "application/json", properties: dict[str, Any] | None = None
) -> IngressMessage:
    system = {"content-type": content_type} if content_type else {}
    return IngressMessage(
        body=body,
        properties={**ATTRIBUTES, **(properties or {})},
        system_properties=system,
        source="twins",
        partition="1",
        sequence_number=9,
        enqueued_time="2026-11-26T09:00:00.15Z",
    )


def only_event(msg: IngressMessage) -> Event:
    [result] = classify(msg)
    assert isinstance(result, Event), result
    return result


def endpoint(endpoint_type: str, **more: Any) -> Endpoint:
    raw = {"name": "ep", "type": endpoint_type, "eventTypes": ["microsoft.iot.telemetry"], "connection": "C"}
    [parsed] = parse_routes([{**raw, "path": "p", **more}]).endpoints
    return parsed


EVENT_GRID = {"format": "CloudEventSchemaV1_0"}


def cloud_event(msg: IngressMessage, **more: Any) -> dict[str, Any]:
    out = build(only_event(msg), endpoint("EventGrid", **EVENT_GRID, **more))
    assert out.content_type is not None and out.content_type.startswith("application/cloudevents+json")
    assert out.properties == {}
    # The strict receiver takes it, as Event Grid would.
    assert problem_with(b"[" + out.body + b"]", "application/cloudevents-batch+json") == (200, None)
    event = orjson.loads(out.body)
    assert isinstance(event, dict)
    return event


def test_service_bus_gets_the_telemetry_as_it_came_in_the_twins_session() -> None:
    msg = binary(b'{ "Temperature" : 10.50 }')
    out = build(only_event(msg), endpoint("ServiceBus"))
    assert (out.body, out.content_type, out.order_key) == (msg.body, "application/json", "room1")
    assert out.properties == msg.properties


def test_event_grid_gets_the_cloud_event_its_properties_describe_with_the_body_as_json_data() -> None:
    assert cloud_event(binary(b'{ "Temperature" : 10.50 }')) == {
        "specversion": "1.0",
        "id": "df5a5992-817b-4e8a-b12c-e0b18d4bf8fb",
        "type": "microsoft.iot.telemetry",
        "source": SOURCE,
        "dataschema": MODEL,
        "traceparent": TRACE,
        "datacontenttype": "application/json",
        "time": "2026-11-26T09:00:00.15Z",  # none given: when it reached the hub
        "data": {"Temperature": 10.5},
    }


def test_its_own_time_and_extensions_are_kept_as_cloud_events_types() -> None:
    msg = binary(
        b"{}",
        properties={
            "cloudEvents:time": "2026-11-26T08:59:59",
            "cloudEvents:tracestate": "a=1",
            "cloudEvents:hops": 2.5,
        },
    )
    event = cloud_event(msg)
    # A time without an offset is UTC, and says so: Event Grid refuses one without.
    assert (event["time"], event["tracestate"]) == ("2026-11-26T08:59:59Z", "a=1")
    assert event["hops"] == "2.5"  # CloudEvents has no float: its JSON text


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\x00 binary", "application/octet-stream"),
        (b'{"json": "but not said to be"}', "application/octet-stream"),
        (b"\xff\x00 binary", None),
        (b"{not json", "application/json"),  # says JSON, is not: its bytes still arrive
    ],
)
def test_a_body_that_is_not_json_data_travels_as_its_bytes(body: bytes, content_type: str | None) -> None:
    event = cloud_event(binary(body, content_type))
    assert "data" not in event
    assert base64.b64decode(event["data_base64"]) == body
    assert event.get("datacontenttype") == content_type


def test_json_of_another_media_type_is_json_data() -> None:
    event = cloud_event(binary(b"[1, 2]", "application/senml+json"))
    assert (event["data"], event["datacontenttype"]) == ([1, 2], "application/senml+json")


def test_a_structured_cloud_event_goes_to_event_grid_as_it_came() -> None:
    # The docs' example telemetry message, as a structured CloudEvent on the hub.
    sent = {
        "specversion": "1.0",
        "id": "df5a5992-817b-4e8a-b12c-e0b18d4bf8fb",
        "type": "microsoft.iot.telemetry",
        "source": SOURCE,
        "data": {"Temperature": 10},
        "dataschema": MODEL,
        "datacontenttype": "application/json",
        "traceparent": TRACE,
    }
    msg = IngressMessage(body=json.dumps(sent).encode(), properties={}, system_properties={}, source="twins")
    assert cloud_event(msg) == sent
    # Its time, if it has one without an offset, is UTC and says so.
    msg = IngressMessage(
        body=json.dumps({**sent, "time": "2026-11-26T08:00:00.5"}).encode(),
        properties={},
        system_properties={},
        source="twins",
    )
    assert cloud_event(msg) == {**sent, "time": "2026-11-26T08:00:00.5Z"}


def test_enrichments_join_its_attributes() -> None:
    event = cloud_event(binary(b"{}"), enrichments={"site": "plant7", "twin": "$subject"})
    assert event["site"] == "plant7" and event["traceparent"] == TRACE


def test_an_attribute_event_grid_would_refuse_fails_that_event_alone() -> None:
    out = build(
        only_event(binary(b"{}", properties={"cloudEvents:Bad-Name": "x"})), endpoint("EventGrid", **EVENT_GRID)
    )
    event = orjson.loads(out.body)
    assert problem_with(b"[" + out.body + b"]", "application/cloudevents-batch+json")[0] == 400
    assert extension_problem(event) == (
        "CloudEvents attribute name 'Bad-Name' is not lower-case letters a-z and digits 0-9"
    )
    assert extension_problem({**event, "Bad-Name": None, "n": 2**31}) == (
        "CloudEvents attribute 'n' is an integer beyond 32 bits, not a string, boolean or 32-bit integer"
    )
