"""The route table contract: which endpoint types take which event types, and validation that reports
every problem at once, naming the endpoint, the field and the value."""

from __future__ import annotations

from typing import Any

import pytest

from routing.errors import RouteTableError
from routing.model import EndpointType, EnvelopeFormat, EventType
from routing.routes.table import Endpoint, parse_endpoint, parse_routes

ALL_TYPES = ["DeviceMessages", "TopologyOperation", "SpaceChange", "SensorChange", "UdfCustom"]
# The contract, written out rather than derived from the code: Event Hubs takes everything,
# Service Bus and Event Grid take everything but raw telemetry.
ACCEPTS = {
    "EventHub": set(ALL_TYPES),
    "ServiceBus": set(ALL_TYPES) - {"DeviceMessages"},
    "EventGrid": set(ALL_TYPES) - {"DeviceMessages"},
}


def endpoint(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "ep",
        "type": "EventHub",
        "eventTypes": ["SensorChange"],
        "connection": "EP_CONNECTION",
        "path": "hub",
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize("endpoint_type", sorted(ACCEPTS))
@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_endpoint_type_and_event_type_matrix(endpoint_type: str, event_type: str) -> None:
    raw = [endpoint(type=endpoint_type, eventTypes=[event_type])]
    if event_type in ACCEPTS[endpoint_type]:
        table = parse_routes(raw)
        assert [e.name for e in table.for_type(EventType(event_type))] == ["ep"]
    else:
        with pytest.raises(RouteTableError) as caught:
            parse_routes(raw)
        text = str(caught.value)
        assert "'ep'" in text and endpoint_type in text and event_type in text


def test_every_problem_in_the_table_is_reported_at_once() -> None:
    raw = [
        endpoint(name="bus", type="ServiceBus", eventTypes=["DeviceMessages"]),
        endpoint(name="grid", type="EventGrid", eventTypes=["SensorChange", "Weather"]),
        endpoint(name="hub", type="EventHubs"),
        endpoint(name="bus"),
        {"name": "nothing"},
        "not an object",
    ]
    with pytest.raises(RouteTableError) as caught:
        parse_routes(raw, "routes.json")
    problems = [str(p) for p in caught.value.problems]
    text = "\n".join(problems)
    assert "endpoint 'bus', field 'eventTypes': ServiceBus endpoints cannot take DeviceMessages" in text
    assert "endpoint 'grid', field 'eventTypes': unknown event type 'Weather'" in text
    assert "endpoint 'hub', field 'type': unknown endpoint type 'EventHubs'" in text
    assert "duplicate name" in text
    for missing in ("type", "eventTypes", "connection", "path"):
        assert f"endpoint 'nothing', field '{missing}': is required" in text
    assert "endpoint #6: must be a JSON object" in text
    assert str(caught.value).startswith("routes.json has 9 problems")


def test_names_and_types_are_matched_case_insensitively_and_device_message_is_accepted() -> None:
    table = parse_routes([endpoint(type="eventhub", eventTypes=["devicemessage", "SENSORCHANGE"])])
    ep = table.endpoints[0]
    assert ep.type is EndpointType.EVENT_HUB
    assert ep.event_types == (EventType.DEVICE_MESSAGES, EventType.SENSOR_CHANGE)


def test_unknown_field_suggests_the_right_one() -> None:
    problems = parse_endpoint(endpoint(evenTypes=["SensorChange"]), "endpoint #1")
    assert isinstance(problems, list)
    assert any("unknown field (did you mean 'eventTypes'?)" in str(p) for p in problems)


@pytest.mark.parametrize(
    "value",
    [
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=x;SharedAccessKey=abc=",
        "https://topic.westeurope-1.eventgrid.azure.net/api/events",
        "",
    ],
)
def test_connection_must_name_a_setting_never_hold_a_secret(value: str) -> None:
    problems = parse_endpoint(endpoint(connection=value), "endpoint #1")
    assert isinstance(problems, list)
    assert any("connection" in str(p) and "app setting" in str(p) for p in problems)
    # The secret itself is never echoed back into an error that may be logged.
    assert all("SharedAccessKey=abc" not in str(p) for p in problems)


@pytest.mark.parametrize("name", ["a/b", "deadletter", "DeadLetter", " padded", "x" * 129, "..", "tab\there"])
def test_bad_endpoint_names_are_refused(name: str) -> None:
    problems = parse_endpoint(endpoint(name=name), "endpoint #1")
    assert isinstance(problems, list)
    assert any("field 'name'" in str(p) for p in problems)


def test_duplicate_names_differing_only_in_case_are_refused() -> None:
    with pytest.raises(RouteTableError, match="duplicate name"):
        parse_routes([endpoint(name="Alerts"), endpoint(name="alerts")])


def test_disabled_endpoints_stay_in_the_table_but_receive_nothing() -> None:
    table = parse_routes([endpoint(name="off", enabled=False), endpoint(name="on")])
    assert [e.name for e in table.endpoints] == ["off", "on"]
    assert [e.name for e in table.for_type(EventType.SENSOR_CHANGE)] == ["on"]


def test_format_defaults_to_event_grid_schema_and_accepts_cloud_events() -> None:
    table = parse_routes([endpoint(name="a"), endpoint(name="b", format="CloudEvents")])
    assert [e.format for e in table.endpoints] == [EnvelopeFormat.EVENT_GRID, EnvelopeFormat.CLOUD_EVENTS]
    with pytest.raises(RouteTableError, match="unknown format 'Avro'"):
        parse_routes([endpoint(format="Avro")])


def test_an_endpoint_round_trips_through_its_routes_file_form() -> None:
    raw = endpoint(name="it's-mine", secondaryConnection="EP_SECONDARY", format="CloudEventSchemaV1_0", enabled=False)
    parsed = parse_endpoint(raw, "endpoint #1")
    assert isinstance(parsed, Endpoint)
    assert parse_endpoint(parsed.to_dict(), "endpoint #1") == parsed
    assert parsed.to_dict() == {**raw, "enabled": False}
