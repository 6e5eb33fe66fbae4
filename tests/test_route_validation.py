"""Route validation as declared (`RouteFields`, one msgspec type check per field, then the rules): every
field of the wrong type is reported at once, in field order, naming the field and the value; the
fields are the struct's; and a list is a list, as the validator always required."""

from __future__ import annotations

from typing import Any

from routing.routes.table import FIELDS, REQUIRED, Endpoint, parse_endpoint


def problems(raw: Any) -> list[str]:
    parsed = parse_endpoint(raw, "endpoint #3")
    assert isinstance(parsed, list), parsed
    return [str(p) for p in parsed]


def test_every_field_of_the_wrong_type_is_reported_at_once_in_field_order() -> None:
    raw = {
        "name": 7,
        "type": 1,
        "eventTypes": "SensorChange",
        "connection": 3,
        "secondaryConnection": [],
        "path": 5,
        "format": 2,
        "enabled": "yes",
        "filterLanguage": 3,
        "filter": 1,
        "orderKey": 2,
        "enrichments": [1],
        "partitioning": 9,
        "fileNameFormat": ["{iothub}"],
        "colour": "red",
    }
    assert problems(raw) == [
        "endpoint #3, field 'colour': unknown field",
        "endpoint #3, field 'name': must be a non-empty string",
        "endpoint #3, field 'type': unknown endpoint type 1; expected EventHub, ServiceBus, EventGrid or Storage",
        "endpoint #3, field 'eventTypes': must be a non-empty list of event types",
        "endpoint #3, field 'connection': must name an app setting (a non-empty string)",
        "endpoint #3, field 'secondaryConnection': must name an app setting (a non-empty string)",
        "endpoint #3, field 'path': must be a non-empty string (the hub, queue or topic name, the Event Grid "
        "topic host, or the Blob container)",
        "endpoint #3, field 'format': unknown format 2; expected EventGridSchema or CloudEventSchemaV1_0",
        "endpoint #3, field 'enabled': must be true or false, got 'yes'",
        "endpoint #3, field 'filterLanguage': must be 'digitaltwins' (a Digital Twins route filter, the default) or "
        "'iothub' (an IoT Hub routing query), got 3",
        "endpoint #3, field 'filter': must be a string (a route filter, see docs/FILTERS.md), got 1",
        "endpoint #3, field 'orderKey': must be a string (a path or a template, see docs/FILTERS.md), got 2",
        "endpoint #3, field 'enrichments': must be an object of property name -> value, got list",
        "endpoint #3, field 'partitioning': must be 'router' or 'service', got 9",
        "endpoint #3, field 'fileNameFormat': must be a string (IoT Hub's blob name format), got ['{iothub}']",
    ]


def test_the_fields_are_the_routes_file_fields_in_camel_case() -> None:
    assert FIELDS == (
        "name",
        "type",
        "eventTypes",
        "connection",
        "secondaryConnection",
        "path",
        "format",
        "enabled",
        "filterLanguage",
        "filter",
        "orderKey",
        "enrichments",
        "partitioning",
        "timeToLiveMinutes",
        "fallback",
        "fileNameFormat",
    )
    assert REQUIRED == ("name", "type", "eventTypes", "connection", "path")
    assert problems({"name": "x", "order_key": "$body.Id"})[0] == (
        "endpoint 'x', field 'order_key': unknown field (did you mean 'orderKey'?)"
    )


def test_an_item_of_the_wrong_type_is_named_among_the_good_ones() -> None:
    raw = {
        "name": "x",
        "type": "EventHub",
        "eventTypes": ["SensorChange", 2, "Weather"],
        "connection": "C",
        "path": "p",
    }
    assert problems(raw) == [
        "endpoint 'x', field 'eventTypes': unknown event type 2; expected one of " + _KNOWN,
        "endpoint 'x', field 'eventTypes': unknown event type 'Weather'; expected one of " + _KNOWN,
    ]


def test_event_types_must_be_a_list_not_another_sequence() -> None:
    for value in (("SensorChange",), {"SensorChange"}):
        raw = {"name": "x", "type": "EventHub", "eventTypes": value, "connection": "C", "path": "p"}
        assert problems(raw) == ["endpoint 'x', field 'eventTypes': must be a non-empty list of event types"]
    ok = {"name": "x", "type": "EventHub", "eventTypes": ["SensorChange"], "connection": "C", "path": "p"}
    assert isinstance(parse_endpoint(ok, "x"), Endpoint)


_KNOWN = (
    "DeviceMessages, TopologyOperation, SpaceChange, SensorChange, UdfCustom; or today's "
    "Microsoft.DigitalTwins.Twin.Create|Update|Delete, Microsoft.DigitalTwins.Relationship.Create|Update|Delete, "
    "microsoft.iot.telemetry; or IoT Hub's TwinChangeEvents, DeviceLifecycleEvents, DeviceConnectionStateEvents, "
    "DigitalTwinChangeEvents, DeviceJobLifecycleEvents"
)


def test_an_endpoint_name_may_not_start_with_an_underscore_the_stores_folders_have() -> None:
    problems = parse_endpoint(
        {"name": "_archive", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "C", "path": "p"},
        "endpoint #1",
    )
    assert isinstance(problems, list)
    [problem] = problems
    assert problem.message == "must not start with '_' (reserved for the dead-letter store's own folders)"
