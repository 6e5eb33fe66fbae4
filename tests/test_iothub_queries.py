"""IoT Hub routing queries (`filterLanguage: iothub`): what each operand reads, `$body` only for UTF
JSON, undefined as IoT Hub treats it, the routing functions, errors with positions, and the endpoint
field through validation, the table row, the index, the pipeline and the CLI. Also the CloudEvents
operands Digital Twins filters gained. The docs' own examples are in tests/test_filter_docs.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import routing.routes.iothub_queries
from routing.errors import RouteTableError
from routing.ingest.classify import classify
from routing.model import Event, EventType, IngressMessage
from routing.routes.filters import FilterLanguage, FilterSyntaxError, compile_filter
from routing.routes.iothub_queries import compile_iot_hub_query
from routing.routes.table import Endpoint, parse_endpoint, parse_routes
from routing.routes.tables import parse_row, to_entity
from tests.conftest import twin_event
from tests.test_filters import Table, make_router, read, table  # noqa: F401 - `table` is a fixture

BODY = {"t": 30, "name": "Hot", "tags": ["a", "b"], "nested": {"odd-key": 1}, "flag": True, "nothing": None}


def message(
    body: Any = BODY,
    *,
    content_type: str | None = "application/json",
    encoding: str | None = "utf-8",
    properties: dict[str, Any] | None = None,
    **system: Any,
) -> Event:
    system_properties: dict[str, Any] = {"iothub-connection-device-id": "dev-1", "iothub-message-source": "Telemetry"}
    if content_type is not None:
        system_properties["content-type"] = content_type
    if encoding is not None:
        system_properties["content-encoding"] = encoding
    system_properties.update(system)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    [event] = classify(
        IngressMessage(body=raw, properties=properties or {}, system_properties=system_properties, source="hub")
    )
    assert isinstance(event, Event)
    return event


def passes(text: str, event: Event | None = None) -> bool:
    return compile_iot_hub_query(text).matches(event if event is not None else message())


# --- operands -------------------------------------------------------------------------------------------


def test_system_properties_by_iot_hub_keyword_map_to_the_names_event_hubs_consumers_see() -> None:
    event = message(
        properties={"Unit": "C"},
        **{
            "iothub-connection-module-id": "mod-1",
            "iothub-connection-auth-generation-id": "637",
            "iothub-connection-auth-method": '{"scope":"device","type":"sas","issuer":"iothub"}',
            "message-id": "m-1",
            "correlation-id": "c-1",
            "user-id": "hub-1",
            "to": "/devices/dev-1/messages/events",
            "dt-dataschema": "dtmi:com:example:Thermostat;1",
            "dt-subject": "thermostat1",
        },
    )
    for text in [
        "$connectionDeviceId = 'dev-1'",
        "$connectionModuleId = 'mod-1'",
        "$connectionDeviceGenerationId = '637'",
        'STARTS_WITH($connectionAuthMethod, \'{"scope":"device"\')',
        "$messageId = 'm-1' AND $correlationId = 'c-1' AND $userId = 'hub-1'",
        "$to = '/devices/dev-1/messages/events'",
        "$contentType = 'application/json' AND $contentEncoding = 'utf-8'",
        "$dt-dataschema = 'dtmi:com:example:Thermostat;1' AND $dt-subject = 'thermostat1'",
        "$CONNECTIONDEVICEID = 'dev-1'",  # keywords ignore case, as IoT Hub's names do
        "$iothub-connection-device-id = 'dev-1'",  # the name itself works too
        "$iothub-message-source = 'Telemetry'",
        "Unit = 'C' AND unit = 'C'",  # application properties by bare name, ignoring case
    ]:
        assert passes(text, event), text
    assert not passes("$connectionDeviceId = 'DEV-1'", event)  # values compare case-sensitively
    assert not passes("IS_DEFINED(connectionDeviceId)", event)  # without `$` it is an application property


def test_a_dollar_name_no_system_property_has_is_the_application_property_of_that_name() -> None:
    event = message(properties={"$custom": "x", "iothub-connection-device-id": "spoofed"})
    assert passes("$custom = 'x'", event)
    assert passes("$connectionDeviceId = 'dev-1'", event)  # the system property comes first


@pytest.mark.parametrize(
    "enqueued",
    ["2022-06-09T00:00:00Z", "2022-06-09T00:00:00.1234567Z", "2022-06-09T00:00:00", 1654732800000],
    ids=["rfc3339", "seven-digits", "no-offset", "amqp-milliseconds"],
)
def test_the_enqueued_time_compares_as_a_time_in_any_form_the_router_gets_it(enqueued: Any) -> None:
    event = message(**{"iothub-enqueuedtime": enqueued})
    assert passes("$enqueuedTime > '2022-06-06T22:56:06Z'", event)
    assert passes("$enqueuedTime < '2022-06-09T00:00:01Z'", event)
    assert passes("$enqueuedTime >= '2022-06-09T02:00:00+02:00'", event)  # an offset is a time, not text
    assert not passes("$enqueuedTime > 'next week'", event)  # not a time: undefined


def test_a_datetime_enqueued_time_compares_too() -> None:
    enqueued: dict[str, Any] = {"iothub-enqueuedtime": datetime(2022, 6, 9, tzinfo=UTC)}
    event = message(**enqueued)
    assert passes("$enqueuedTime > '2022-06-06'", event)


# --- the body -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "encoding", "readable"),
    [
        ("application/json", "utf-8", True),
        ("application/JSON", "UTF-8", True),  # as IoT Hub's docs write them
        ("application/json", "utf-16", True),
        ("application/json", "UTF-32", True),
        ("application/json; charset=utf-8", None, True),  # IoT Hub's message-format page
        ("application/json", None, False),
        (None, "utf-8", False),
        ("text/plain", "utf-8", False),
        ("application/json", "iso-8859-1", False),
        ("application/jsonx", "utf-8", False),
    ],
)
def test_the_body_is_queried_only_when_the_message_says_it_is_utf_json(
    content_type: str | None, encoding: str | None, readable: bool
) -> None:
    codec = (encoding or "utf-8").lower() if readable else "utf-8"
    event = message(json.dumps(BODY).encode(codec), content_type=content_type, encoding=encoding)
    assert passes("$body.t = 30", event) is readable
    assert passes("IS_DEFINED($body.t)", event) is readable
    assert passes("$body.t = 30 OR $connectionDeviceId = 'dev-1'", event)  # the rest of the query still counts


def test_a_body_that_says_json_but_is_not_is_undefined_not_an_error() -> None:
    event = message(b"\xff not json")
    assert not passes("$body.t = 30", event)
    assert not passes("NOT ($body.t = 30)", event)
    assert passes("NOT IS_DEFINED($body.t)", event)
    assert passes("$connectionDeviceId = 'dev-1'", event)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$body.tags[1] = 'b'", True),
        ("$body.tags[2] = 'b'", False),
        ("$body.nested.odd-key = 1", True),  # IoT Hub's names may hold '-'
        ("$body.flag", True),  # a condition that is the boolean true
        ("$body.name", False),  # any other value is not true
        ("$body.nothing = null", True),
        ("$body.Name = 'Hot'", False),  # body names are case-sensitive
    ],
)
def test_body_paths(text: str, expected: bool) -> None:
    assert passes(text) is expected


# --- undefined ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A comparison with an undefined operand is undefined, and so is its negation: neither routes.
        ("$body.missing = 1", False),
        ("NOT ($body.missing = 1)", False),
        ("$body.missing != 1", False),
        ("nope = 'x'", False),
        ("NOT (nope = 'x')", False),
        # Three-valued AND / OR.
        ("$body.missing = 1 OR $body.t = 30", True),
        ("$body.missing = 1 AND $body.t = 30", False),
        ("NOT ($body.missing = 1 AND $body.t = 31)", True),  # false AND undefined is false
        ("NOT ($body.missing = 1 OR $body.t = 31)", False),  # false OR undefined is undefined
        # Different types are undefined, unequal too; numbers compare as numbers.
        ("$body.t = '30'", False),
        ("NOT ($body.t = '30')", False),
        ("$body.t != null", False),
        ("$body.t = 30.0", True),
        ("$body.flag = true AND NOT ($body.flag = false)", True),
        ("$body.flag > false", False),  # booleans have equality only
        ("$body.tags = $body.tags", False),  # arrays and objects do not compare
        ("$body.name < 'I' AND $body.name > 'G'", True),  # strings by code point
        ("undefined", False),
        ("NOT undefined", False),
        ("IS_DEFINED(undefined)", False),
    ],
)
def test_undefined_works_as_in_iot_hub(text: str, expected: bool) -> None:
    assert passes(text) is expected


def test_an_application_property_is_a_string_and_as_number_makes_it_a_number() -> None:
    event = message(properties={"severity": "2"})
    assert not passes("severity <= 2", event)
    assert passes("as_number(severity) <= 2", event)
    assert passes("severity = '2'", event)


# --- functions and operators ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "ABS(-3) = 3",
        "EXP(0) = 1",
        "POWER(2, 10) = 1024",
        "SQUARE($body.t) = 900",
        "CEILING(1.2) = 2 AND FLOOR(1.8) = 1",
        "SIGN(-4) = -1 AND SIGN(0) = 0 AND SIGN($body.t) = 1",
        "SQRT(16) = 4",
        "AS_NUMBER('1.5e1') = 15 AND AS_NUMBER(3) = 3 AND NOT IS_DEFINED(AS_NUMBER('x'))",
        "IS_ARRAY($body.tags) AND NOT IS_ARRAY($body.t)",
        "IS_BOOL($body.flag) AND NOT IS_BOOL($body.name)",
        "IS_DEFINED($body.nothing) AND NOT IS_DEFINED($body.missing)",
        "IS_NULL($body.nothing) AND NOT IS_NULL($body.missing)",
        "IS_NUMBER($body.t) AND NOT IS_NUMBER('30')",
        "IS_OBJECT($body.nested) AND NOT IS_OBJECT($body.tags)",
        "IS_PRIMITIVE($body.nothing) AND IS_PRIMITIVE($body.name) AND NOT IS_PRIMITIVE($body.tags)",
        "IS_STRING($body.name) AND NOT IS_STRING($body.missing)",
        "CONCAT($body.name, '-', $connectionDeviceId) = 'Hot-dev-1'",
        "LENGTH($body.name) = 3",
        "LOWER($body.name) = 'hot' AND UPPER($body.name) = 'HOT'",
        "SUBSTRING('plant-7-line', 6) = '7-line' AND SUBSTRING('plant-7-line', 6, 1) = '7'",
        "INDEX_OF('plant-7', '-') = 5 AND INDEX_OF('plant', 'x') = -1",
        "STARTS_WITH($body.name, 'Ho') AND ENDS_WITH($body.name, 'ot') AND CONTAINS($body.name, 'o')",
        "starts_with($connectionDeviceId, 'dev-')",  # function names ignore case
        "$body.t + 5 = 35 AND $body.t - 5 = 25 AND $body.t * 2 = 60 AND $body.t / 4 = 7.5 AND $body.t % 7 = 2",
        "-$body.t = -30 AND 2 + 3 * 4 = 14 AND (2 + 3) * 4 = 20",
        "0x1F = 31",
        "'it\\'s' = \"it's\" AND '\\u0041' = 'A' AND 'a\\\\b' = CONCAT('a', '\\\\', 'b')",
        "$body.t <> 31",
    ],
)
def test_the_routing_functions_and_operators_iot_hub_documents(text: str) -> None:
    assert passes(text), text


@pytest.mark.parametrize(
    "text",
    [
        "LENGTH($body.t) = 2",  # not a string
        "ABS('x') = 1",
        "$body.t / 0 = 1",
        "SQRT(-1) = 1",
        "$body.name + 1 = 1",  # `+` adds numbers only
        "CONCAT($body.name, $body.t) = 'Hot30'",
        "LENGTH($body.missing) = 0",
    ],
)
def test_a_function_of_the_wrong_type_is_undefined(text: str) -> None:
    assert not passes(text)
    assert not passes(f"NOT ({text})")


# --- malformed queries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("STARTSWITH($body.x, 'a')", "unknown function 'STARTSWITH' at position 1 (did you mean STARTS_WITH?)", 1),
        ("LENGTH()", "LENGTH takes 1 argument, got 0, at position 8", 8),
        ("SUBSTRING('a')", "SUBSTRING takes 2 to 3 arguments, got 1", 14),
        ("CONCAT('a')", "CONCAT takes at least 2 arguments, got 1", 11),
        ("$body = 1", "$body at position 1 needs a property", 1),
        ("$body[0] = 'Feb'", "IoT Hub runs no query on the whole body or an index of it", 6),
        ("$twin.tags.x = 1", "twin queries ($twin) are not supported, at position 1", 1),
        ("processingPath.x = 1", "unexpected '.' at position 15: processingPath is a message property", 15),
        ("x = 'a\\n'", "unknown escape '\\n' at position 7", 7),
        ("x = 'open", "unterminated string starting at position 5", 5),
        ("x = 1)", "unexpected ')' at position 6", 6),
        ("(x = 1", "unexpected end of query at position 7: expected ')' to close the '(' at position 1", 7),
        ("x = ", "unexpected end of query at position 5", 5),
        ("x # 1", "unexpected '#' at position 3", 3),
        ("$body.a[x] = 1", "unexpected 'x' at position 9: expected an array index", 9),
        ("", "is empty", 1),
    ],
)
def test_malformed_queries_name_the_position(text: str, message: str, position: int) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        compile_iot_hub_query(text)
    assert message in str(caught.value)
    assert caught.value.position == position


def test_queries_are_compiled_when_the_table_loads_never_per_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = make_router(tmp_path, [iot_hub_endpoint("hot", "$body.t > 25 AND $connectionDeviceId = 'dev-1'")])

    def no_parsing(text: str) -> Any:
        raise AssertionError("a query was parsed while routing")

    monkeypatch.setattr(routing.routes.iothub_queries, "_tokenize", no_parsing)
    report = router.route([raw_message({"t": t}, seq=t) for t in range(20, 31)])
    assert report.delivered[("hot", EventType.DEVICE_MESSAGES)] == 5


# --- the endpoint field --------------------------------------------------------------------------------


def iot_hub_endpoint(name: str, query: str | None, **more: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": name,
        "type": "EventHub",
        "eventTypes": ["DeviceMessages"],
        "connection": "C",
        "path": name,
        "filterLanguage": "iothub",
        **more,
    }
    if query is not None:
        raw["filter"] = query
    return raw


def raw_message(body: Any, *, seq: int, device: str = "dev-1", **properties: Any) -> IngressMessage:
    return IngressMessage(
        body=json.dumps(body).encode(),
        properties=properties,
        system_properties={
            "iothub-connection-device-id": device,
            "iothub-message-source": "Telemetry",
            "content-type": "application/json",
            "content-encoding": "utf-8",
        },
        source="hub",
        partition="0",
        sequence_number=seq,
    )


@pytest.mark.parametrize("written", ["iothub", "IoTHub", "iot-hub", "IOT_HUB"])
def test_the_filter_language_is_read_in_any_spelling_and_written_back_as_iothub(written: str) -> None:
    parsed = parse_endpoint(iot_hub_endpoint("hot", "processingPath = 'hot'", filterLanguage=written), "#1")
    assert isinstance(parsed, Endpoint) and parsed.filter is not None
    assert parsed.filter_language is FilterLanguage.IOT_HUB and parsed.filter.language is FilterLanguage.IOT_HUB
    assert parsed.to_dict()["filterLanguage"] == "iothub"


def test_the_filter_language_round_trips_through_the_routes_file_and_the_table_row_as_filter_language() -> None:
    parsed = parse_endpoint(iot_hub_endpoint("Hot", "$body.t > 25 AND processingPath = 'hot'"), "#1")
    assert isinstance(parsed, Endpoint)
    assert parse_endpoint(parsed.to_dict(), "#1") == parsed
    entity = to_entity(parsed)
    assert entity["FilterLanguage"] == "iothub"
    assert entity["Filter"] == "$body.t > 25 AND processingPath = 'hot'"
    assert parse_row(entity) == parsed
    default = parse_endpoint({**iot_hub_endpoint("plain", "$body.t > 25"), "filterLanguage": None}, "#1")
    assert isinstance(default, Endpoint) and default.filter_language is FilterLanguage.DIGITAL_TWINS
    assert "filterLanguage" not in default.to_dict() and "FilterLanguage" not in to_entity(default)


def test_a_bad_language_or_query_names_the_endpoint_field_and_position() -> None:
    with pytest.raises(RouteTableError) as caught:
        parse_routes(
            [
                iot_hub_endpoint("typo", "x = 1", filterLanguage="iothb"),
                iot_hub_endpoint("broken", "$body.t > "),
                iot_hub_endpoint("twins", "x = 1", eventTypes=["DeviceMessages", "SensorChange", "Twin.Update"]),
            ]
        )
    assert [str(p) for p in caught.value.problems] == [
        "endpoint 'typo', field 'filterLanguage': unknown filter language 'iothb' (did you mean 'iothub'?); "
        "expected 'digitaltwins' (a Digital Twins route filter, the default) or 'iothub' (an IoT Hub routing query)",
        "endpoint 'broken', field 'filter': unexpected end of query at position 11: expected a value, a property, "
        "$body or a function in '$body.t > '",
        "endpoint 'twins', field 'filterLanguage': an IoT Hub routing query describes IoT Hub's messages, and "
        "SensorChange, Microsoft.DigitalTwins.Twin.Update are Digital Twins events: give them an endpoint with a "
        "Digital Twins filter (filterLanguage 'digitaltwins')",
    ]


def test_an_iot_hub_query_routes_through_the_pipeline(tmp_path: Path) -> None:
    routes = [
        iot_hub_endpoint("hot", "$body.t > 25 AND processingPath = 'hot'"),
        iot_hub_endpoint("plant-7", "STARTS_WITH($connectionDeviceId, 'plant7-')"),
        iot_hub_endpoint("everything", None),
    ]
    batch = [
        raw_message({"t": 30}, seq=1, processingPath="hot"),
        raw_message({"t": 20}, seq=2, processingPath="hot"),
        raw_message({"t": 30}, seq=3, device="plant7-a", processingPath="cold"),
    ]
    report = make_router(tmp_path, routes).route(batch)
    assert [x["partitionKey"] for x in read(tmp_path / "hot.jsonl")] == ["dev-1"]
    assert [x["partitionKey"] for x in read(tmp_path / "plant-7.jsonl")] == ["plant7-a"]
    assert len(read(tmp_path / "everything.jsonl")) == 3
    assert not report.dead_letters


def test_the_same_text_in_each_language_is_two_filters_each_read_its_own_way(tmp_path: Path) -> None:
    # Undeclared JSON: a Digital Twins filter reads the body whatever its content type, IoT Hub does not.
    routes = [
        {**iot_hub_endpoint("twins-way", "$body.t = 30"), "filterLanguage": "digitaltwins"},
        iot_hub_endpoint("iot-hub-way", "$body.t = 30"),
    ]
    routes_table = parse_routes(routes)
    event = message(content_type=None, encoding=None)
    assert [e.name for e in routes_table.targets(event)] == ["twins-way"]
    assert [e.name for e in routes_table.targets(message())] == ["twins-way", "iot-hub-way"]
    # UTF-16 JSON: IoT Hub reads it, a Digital Twins filter finds no JSON (and the index must not ask it).
    utf16 = message(json.dumps(BODY).encode("utf-16"), encoding="utf-16")
    assert [e.name for e in routes_table.targets(utf16)] == ["iot-hub-way"]


def test_the_cli_adds_an_endpoint_with_an_iot_hub_query(table: Table) -> None:  # noqa: F811 - the fixture
    hub = ("--type", "EventHub", "--connection", "C", "--path", "hot", "--event-types", "DeviceMessages")
    query = "$body.Weather.Temperature = 50 AND processingPath = 'hot'"
    added = table.json("add", "hot", *hub, "--filter-language", "iothub", "--filter", query)
    assert (added["filterLanguage"], added["filter"]) == ("iothub", query)
    bad = table("add", "warm", *hub, "--filter-language", "iothub", "--filter", "STARTSWITH(x, 'a')")
    assert bad.exit_code == 2
    assert "field 'filter': unknown function 'STARTSWITH' at position 1 (did you mean STARTS_WITH?)" in bad.output
    changed = table.json("update", "hot", "--filter-language", "digitaltwins", "--filter", "$body.t > 1")
    assert "filterLanguage" not in changed and changed["filter"] == "$body.t > 1"


# --- Digital Twins' CloudEvents operands ---------------------------------------------------------------


def test_classic_telemetry_is_no_cloud_event_and_says_its_content_type_as_the_message_does() -> None:
    event = message()
    assert not compile_filter("IS_DEFINED(specversion) OR IS_DEFINED(dataschema)").matches(event)
    assert compile_filter("datacontenttype = 'application/json'").matches(event)
    assert not compile_filter("IS_DEFINED(datacontenttype)").matches(message(content_type=None))


def test_first_service_events_are_cloud_events_of_json_data_without_a_schema() -> None:
    [event] = classify(twin_event({"Id": "s1", "Value": 1}, seq=1, properties={"Type": "SensorChange"}))
    assert isinstance(event, Event)
    assert compile_filter("specversion = '1.0' AND datacontenttype = 'application/json'").matches(event)
    assert not compile_filter("IS_DEFINED(dataschema)").matches(event)


def test_a_v2_event_in_the_event_grid_schema_keeps_its_nested_dataschema_and_content_type() -> None:
    element = {
        "id": "e1",
        "subject": "room21",
        "eventType": "microsoft.iot.telemetry",
        "data": {"data": {"t": 1}, "contenttype": "application/json", "dataschema": "dtmi:example:Room;1"},
        "dataVersion": "1.0",
        "eventTime": "2021-12-09T20:28:52Z",
        "source": "x",
    }
    [event] = classify(twin_event(element, seq=1))
    assert isinstance(event, Event)
    assert compile_filter("dataschema = 'dtmi:example:Room;1' AND datacontenttype = 'application/json'").matches(event)
    assert compile_filter("$dataschema = 'dtmi:example:Room;1'").matches(event)  # with a `$`, as order keys write it
