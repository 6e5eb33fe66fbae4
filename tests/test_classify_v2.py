"""Today's Azure Digital Twins (v2) events: the seven CloudEvents types in each wire form they reach the
hub in (binary mode on Event Hubs, structured JSON, the Event Grid schema), ordered by twin id, which
endpoints may take them, and route filters on them.

The messages follow the service's documented notifications ("Event notifications", Azure Digital
Twins docs): expected types and keys are written out here by hand, never computed by the code."""

from __future__ import annotations

from typing import Any

import pytest

from routing.errors import RouteTableError
from routing.ingest.classify import classify
from routing.model import KNOWN_EVENT_TYPES, TELEMETRY_TYPES, Event, EventType, IngressMessage, Rejection
from routing.routes.filters import compile_filter
from routing.routes.table import parse_routes
from tests.conftest import twin_event

HOST = "my-example-digital-twin.api.sea.digitaltwins.azure.net"
TOPIC = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.EventGrid/topics/adt-events"
TIME = "2021-12-09T20:28:52.6745538Z"
TRACE = "00-2aa957558db348f387ef704b37631a1d-a158c39c72ec1049-01"
ETAG = 'W/"ecf81d6c-8c1a-4a95-afd8-13bd4cea436f"'
MODEL = "dtmi:examplecom:interfaceName;1"

FLOOR = {"$dtId": "floor1", "$etag": ETAG, "$metadata": {"$model": "dtmi:example:Floor;1"}}
PATCH = {"modelId": MODEL, "patch": [{"value": 40, "path": "/Temperature", "op": "replace"}]}
DEVICE = {
    "$dtId": "device-digitaltwin-01",
    "$etag": ETAG,
    "thermostat": {"temperature": 80, "$metadata": {"$model": "dtmi:com:contoso:Thermostat;1"}},
    "$metadata": {"$model": "dtmi:com:contoso:Thermostat_X500;1"},
}
CONNECTED = {
    "$relationshipId": "device_to_device",
    "$etag": ETAG,
    "$relationshipName": "Connected",
    "$sourceId": "device1",
    "$targetId": "device2",
    "connectionType": "WIFI",
}
EDGE_PATCH = {"modelId": MODEL, "patch": [{"value": "new value", "path": "/prop1", "op": "replace"}]}
CONTAINS = {"$relationshipId": "contains-room21", "$sourceId": "floor1", "$targetId": "room21", "$etag": ETAG}

# (wire type, subject, data, the order key: the twin id, or the source twin of a relationship)
TWIN_AND_RELATIONSHIP_EVENTS = [
    ("Microsoft.DigitalTwins.Twin.Create", "floor1", FLOOR, "floor1"),
    ("Microsoft.DigitalTwins.Twin.Update", "room21", PATCH, "room21"),
    ("Microsoft.DigitalTwins.Twin.Delete", "device-digitaltwin-01", DEVICE, "device-digitaltwin-01"),
    ("Microsoft.DigitalTwins.Relationship.Create", "device1/relationships/device_to_device", CONNECTED, "device1"),
    ("Microsoft.DigitalTwins.Relationship.Update", "example-twin1/relationships/edge", EDGE_PATCH, "example-twin1"),
    ("Microsoft.DigitalTwins.Relationship.Delete", "floor1/relationships/contains-room21", CONTAINS, "floor1"),
]


def ce_properties(**attributes: str) -> dict[str, str]:
    """CloudEvents attributes as Digital Twins sets them on Event Hubs and Service Bus messages."""
    return {"cloudEvents:specversion": "1.0", **{f"cloudEvents:{k}": v for k, v in attributes.items()}}


def binary(event_type: str, data: Any, *, raw: bytes | None = None, **attributes: str) -> IngressMessage:
    return twin_event(data, seq=7, raw=raw, properties=ce_properties(type=event_type, **attributes))


def structured(event_type: str, data: Any, **attributes: str) -> IngressMessage:
    body = {"specversion": "1.0", "type": event_type, "datacontenttype": "application/json", **attributes}
    return twin_event({**body, "data": data, "traceparent": TRACE}, seq=7)


def event_grid_event(event_type: str, data: Any, **fields: Any) -> dict[str, Any]:
    """As Digital Twins publishes to an Event Grid topic in its own schema: the data nested with the
    CloudEvents attributes the schema has no field for."""
    return {
        **fields,
        "data": {"data": data, "contenttype": "application/json", "traceparent": TRACE},
        "eventType": event_type,
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "topic": TOPIC,
    }


def only_event(msg: IngressMessage) -> Event:
    [result] = classify(msg)
    assert isinstance(result, Event), result
    return result


def only_rejection(msg: IngressMessage) -> Rejection:
    [result] = classify(msg)
    assert isinstance(result, Rejection), result
    return result


@pytest.mark.parametrize(("wire_type", "subject", "data", "key"), TWIN_AND_RELATIONSHIP_EVENTS)
def test_binary_mode_twin_and_relationship_events_are_keyed_by_twin(
    wire_type: str, subject: str, data: dict[str, Any], key: str
) -> None:
    msg = binary(wire_type, data, id="6ccdb1cd", source=HOST, time=TIME, subject=subject, traceparent=TRACE)
    event = only_event(msg)
    assert (event.event_type.value, event.order_key) == (wire_type, key)
    assert (event.event_id, event.subject, event.source, event.event_time) == ("6ccdb1cd", subject, HOST, TIME)
    assert event.data == data


@pytest.mark.parametrize(("wire_type", "subject", "data", "key"), TWIN_AND_RELATIONSHIP_EVENTS)
def test_structured_cloud_event_twin_and_relationship_events_are_keyed_by_twin(
    wire_type: str, subject: str, data: dict[str, Any], key: str
) -> None:
    event = only_event(structured(wire_type, data, id="39d4abb9", source=HOST, time=TIME, subject=subject))
    assert (event.event_type.value, event.order_key) == (wire_type, key)
    assert (event.event_id, event.subject, event.source, event.event_time) == ("39d4abb9", subject, HOST, TIME)
    assert event.data == data


@pytest.mark.parametrize(("wire_type", "subject", "data", "key"), TWIN_AND_RELATIONSHIP_EVENTS)
def test_event_grid_schema_twin_and_relationship_events_are_keyed_by_twin_and_their_data_unnested(
    wire_type: str, subject: str, data: dict[str, Any], key: str
) -> None:
    # Event Grid delivers to an Event Hub as a JSON array.
    msg = twin_event([event_grid_event(wire_type, data, id="4d850574", subject=subject, eventTime=TIME)], seq=7)
    event = only_event(msg)
    assert (event.event_type.value, event.order_key) == (wire_type, key)
    assert (event.event_id, event.subject, event.event_time, event.topic) == ("4d850574", subject, TIME, TOPIC)
    assert event.data == data


def test_binary_telemetry_is_keyed_by_the_twin_in_its_source_and_its_body_never_parsed() -> None:
    # As Digital Twins sends it to Event Hubs: no subject; the twin is the end of the source.
    msg = binary(
        "microsoft.iot.telemetry",
        None,
        raw=b"\xff not even UTF-8",
        id="6f6635d8",
        source=f"{HOST}/digitaltwins/example-twin1",
        dataschema=MODEL,
        traceparent=TRACE,
    )
    event = only_event(msg)
    assert (event.event_type, event.order_key) == (EventType.TWIN_TELEMETRY, "example-twin1")
    assert event.event_type in TELEMETRY_TYPES  # forwarded raw
    assert (event.event_id, event.source, event.data_version, event.data) == (
        "6f6635d8",
        f"{HOST}/digitaltwins/example-twin1",
        MODEL,
        None,
    )


def test_structured_telemetry_from_a_component_is_keyed_by_its_twin_not_the_component_subject() -> None:
    source = f"{HOST}/digitaltwins/thermostat-67"
    msg = structured(
        "microsoft.iot.telemetry",
        {"prop": "hello"},
        id="622e6818",
        source=source,
        subject="component1",
        dataschema=MODEL,
    )
    event = only_event(msg)
    assert (event.event_type, event.order_key, event.subject) == (
        EventType.TWIN_TELEMETRY,
        "thermostat-67",
        "component1",
    )
    assert (event.data, event.data_version) == ({"prop": "hello"}, MODEL)


def test_event_grid_schema_telemetry_is_keyed_by_its_subject() -> None:
    element = event_grid_event("microsoft.iot.telemetry", {"prop": "hello"}, id="6f6635d8", subject="example-twin1")
    element["data"]["dataschema"] = MODEL
    event = only_event(twin_event([element], seq=7))
    assert (event.event_type, event.order_key) == (EventType.TWIN_TELEMETRY, "example-twin1")
    assert (event.data, event.data_version, event.topic) == ({"prop": "hello"}, MODEL, TOPIC)


def test_telemetry_sharing_a_json_array_with_other_events_is_dead_lettered_and_the_others_routed() -> None:
    # Telemetry is forwarded as the message it came in: here that would carry the other events too.
    telemetry = event_grid_event("microsoft.iot.telemetry", {"t": 1}, id="a", subject="room21")
    update = event_grid_event("Microsoft.DigitalTwins.Twin.Update", PATCH, id="b", subject="room21")
    first, second = classify(twin_event([update, telemetry], seq=7))
    assert isinstance(first, Event) and first.order_key == "room21"
    assert isinstance(second, Rejection)
    assert (second.code, second.index) == ("telemetry-in-array", 1)
    assert "microsoft.iot.telemetry" in second.reason and "alone" in second.reason


def test_relationship_key_falls_back_to_source_id_without_a_subject() -> None:
    event = only_event(structured("Microsoft.DigitalTwins.Relationship.Create", CONNECTED, id="r1", source=HOST))
    assert event.order_key == "device1"
    # The subject the service would have given it.
    assert event.subject == "device1/relationships/device_to_device"


def test_relationship_key_falls_back_to_source_id_when_the_subject_names_no_relationship() -> None:
    event = only_event(binary("Microsoft.DigitalTwins.Relationship.Delete", CONTAINS, subject="contains-room21"))
    assert event.order_key == "floor1"


def test_twin_key_falls_back_to_dt_id_and_the_type_property_form_works_too() -> None:
    event = only_event(twin_event(FLOOR, seq=1, properties={"Type": "Microsoft.DigitalTwins.Twin.Create"}))
    assert (event.event_type, event.order_key, event.subject) == (EventType.TWIN_CREATE, "floor1", "floor1")


@pytest.mark.parametrize(
    ("msg", "words"),
    [
        # A twin update's data is a JSON Patch: no $dtId to fall back on.
        (structured("Microsoft.DigitalTwins.Twin.Update", PATCH, id="u", source=HOST), "no subject and no data.$dtId"),
        (binary("Microsoft.DigitalTwins.Twin.Delete", {"$etag": ETAG}), "no subject and no data.$dtId"),
        (binary("Microsoft.DigitalTwins.Relationship.Update", EDGE_PATCH), "no subject and no data.$sourceId"),
        (
            binary("Microsoft.DigitalTwins.Relationship.Update", EDGE_PATCH, subject="edge"),
            "subject 'edge' has no '/relationships/' and no data.$sourceId",
        ),
        (binary("microsoft.iot.telemetry", None, raw=b"{}", source=HOST), f"its source ({HOST}) does not end in"),
        (binary("microsoft.iot.telemetry", None, raw=b"{}"), "its source (none)"),
    ],
)
def test_v2_events_without_a_twin_to_order_by_are_dead_lettered_naming_what_is_missing(
    msg: IngressMessage, words: str
) -> None:
    rejection = only_rejection(msg)
    assert rejection.code == "no-order-key"
    assert words in rejection.reason


def test_v2_twin_event_data_must_be_an_object() -> None:
    rejection = only_rejection(structured("Microsoft.DigitalTwins.Twin.Create", [1, 2], subject="floor1"))
    assert (rejection.code, "must be a JSON object" in rejection.reason) == ("bad-data", True)


@pytest.mark.parametrize(
    ("wire_type", "data", "subject", "expected", "key"),
    [
        ("microsoft.digitaltwins.twin.update", PATCH, "room21", EventType.TWIN_UPDATE, "room21"),
        ("MICROSOFT.DIGITALTWINS.RELATIONSHIP.CREATE", CONNECTED, "", EventType.RELATIONSHIP_CREATE, "device1"),
        ("Microsoft.IoT.Telemetry", {}, "", EventType.TWIN_TELEMETRY, "floor1"),
        ("Twin.Delete", FLOOR, "floor1", EventType.TWIN_DELETE, "floor1"),
    ],
)
def test_v2_type_names_are_case_insensitive(
    wire_type: str, data: dict[str, Any], subject: str, expected: EventType, key: str
) -> None:
    event = only_event(binary(wire_type, data, subject=subject, source=f"{HOST}/digitaltwins/floor1"))
    assert (event.event_type, event.order_key) == (expected, key)


def test_classic_names_behind_the_namespace_still_mean_the_classic_types() -> None:
    data = {"Id": "s-1", "Type": "Sensor", "Value": "1"}
    event = only_event(binary("Microsoft.DigitalTwins.SensorChange", data))
    assert (event.event_type, event.order_key) == (EventType.SENSOR_CHANGE, "s-1")


def test_an_unknown_v2_looking_type_is_rejected_listing_the_known_types_grouped() -> None:
    rejection = only_rejection(binary("Microsoft.DigitalTwins.Twin.Updated", PATCH, subject="room21"))
    assert rejection.code == "unknown-type"
    assert "'Microsoft.DigitalTwins.Twin.Updated'" in rejection.reason
    assert "Microsoft.DigitalTwins.Twin.Create|Update|Delete" in rejection.reason
    assert "microsoft.iot.telemetry" in rejection.reason and "UdfCustom" in rejection.reason


def test_the_known_types_text_names_every_type() -> None:
    for event_type in EventType:
        stem, _, last = event_type.value.rpartition(".")
        assert (stem or last) in KNOWN_EVENT_TYPES and last in KNOWN_EVENT_TYPES


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Twin.Create", EventType.TWIN_CREATE),
        ("twin.update", EventType.TWIN_UPDATE),
        (" Relationship.Update ", EventType.RELATIONSHIP_UPDATE),
        ("RELATIONSHIP.DELETE", EventType.RELATIONSHIP_DELETE),
        ("Microsoft.DigitalTwins.Relationship.Create", EventType.RELATIONSHIP_CREATE),
        ("microsoft.iot.telemetry", EventType.TWIN_TELEMETRY),
        ("Create", None),
        ("Update", None),
        ("Delete", None),
        ("Telemetry", None),
        ("DigitalTwins.Twin.Create", None),
    ],
)
def test_parse_takes_the_short_v2_forms_but_not_a_bare_verb(name: str, expected: EventType | None) -> None:
    assert EventType.parse(name) is expected


# The contract, written out: Event Hubs, Service Bus and Event Grid take all seven, as Digital Twins routes
# them ("Endpoints and event routes": Event Grid, Event Hubs and Service Bus endpoints, any type); Event
# Grid takes telemetry as a CloudEvent only.
V2_TYPES = [
    "Microsoft.DigitalTwins.Twin.Create",
    "Microsoft.DigitalTwins.Twin.Update",
    "Microsoft.DigitalTwins.Twin.Delete",
    "Microsoft.DigitalTwins.Relationship.Create",
    "Microsoft.DigitalTwins.Relationship.Update",
    "Microsoft.DigitalTwins.Relationship.Delete",
    "microsoft.iot.telemetry",
]


def endpoint(endpoint_type: str, event_types: list[str], **more: Any) -> dict[str, Any]:
    return {"name": "ep", "type": endpoint_type, "eventTypes": event_types, "connection": "C", "path": "p", **more}


def test_event_hubs_take_all_seven_v2_types_on_one_endpoint() -> None:
    table = parse_routes([endpoint("EventHub", V2_TYPES)])
    assert all([e.name for e in table.for_type(EventType(t))] == ["ep"] for t in V2_TYPES)


@pytest.mark.parametrize("endpoint_type", ["ServiceBus", "EventGrid"])
def test_service_bus_and_event_grid_take_all_seven_v2_types_on_one_endpoint(endpoint_type: str) -> None:
    table = parse_routes([endpoint(endpoint_type, V2_TYPES, format="CloudEventSchemaV1_0")])
    assert all([e.name for e in table.for_type(EventType(t))] == ["ep"] for t in V2_TYPES)


def test_an_event_grid_endpoint_in_the_event_grid_schema_is_told_to_take_telemetry_as_cloud_events() -> None:
    for given in ({}, {"format": "EventGridSchema"}):
        with pytest.raises(RouteTableError) as caught:
            parse_routes([endpoint("EventGrid", ["Twin.Update", "microsoft.iot.telemetry"], **given)])
        text = str(caught.value)
        assert "1 problem" in text
        assert "field 'format'" in text and "set format CloudEventSchemaV1_0" in text
    # Twin events alone may still use the Event Grid schema.
    assert parse_routes([endpoint("EventGrid", V2_TYPES[:6])]).endpoints[0].event_types[0] is EventType.TWIN_CREATE


@pytest.mark.parametrize("endpoint_type", ["ServiceBus", "EventGrid"])
def test_the_first_services_device_messages_stay_event_hubs_only(endpoint_type: str) -> None:
    with pytest.raises(RouteTableError) as caught:
        parse_routes([endpoint(endpoint_type, ["DeviceMessages"], format="CloudEventSchemaV1_0")])
    text = str(caught.value)
    assert "1 problem" in text
    assert f"{endpoint_type} endpoints cannot take DeviceMessages: the first service's raw telemetry" in text


def test_routes_take_the_short_forms_and_name_unknown_types_with_the_list() -> None:
    table = parse_routes([endpoint("EventHub", ["twin.update", "Relationship.Create"])])
    assert table.endpoints[0].event_types == (EventType.TWIN_UPDATE, EventType.RELATIONSHIP_CREATE)
    with pytest.raises(RouteTableError) as caught:
        parse_routes([endpoint("EventHub", ["Update"])])
    assert "unknown event type 'Update'" in str(caught.value)
    assert "Microsoft.DigitalTwins.Relationship.Create|Update|Delete" in str(caught.value)


TWIN_UPDATE = structured("Microsoft.DigitalTwins.Twin.Update", PATCH, id="u1", source=HOST, subject="room21")
RELATIONSHIP = binary("Microsoft.DigitalTwins.Relationship.Create", CONNECTED, subject="device1/relationships/x")
BINARY_TELEMETRY = binary(
    "microsoft.iot.telemetry", None, raw=b'{"Temperature": 50}', source=f"{HOST}/digitaltwins/room21"
)
STRUCTURED_TELEMETRY = structured(
    "microsoft.iot.telemetry", {"Temperature": 50}, source=f"{HOST}/digitaltwins/room21", subject="thermostat"
)


@pytest.mark.parametrize(
    ("text", "msg", "expected"),
    [
        ("type = 'Microsoft.DigitalTwins.Twin.Update'", TWIN_UPDATE, True),
        ("type = 'Microsoft.DigitalTwins.Twin.Update'", RELATIONSHIP, False),
        ("type = 'microsoft.iot.telemetry'", BINARY_TELEMETRY, True),
        ("$body.patch[0].path = '/Temperature'", TWIN_UPDATE, True),
        ("$body.patch[0].path = '/Humidity'", TWIN_UPDATE, False),
        ("ANY($body.patch, p, p.path = '/Temperature' AND p.value > 30)", TWIN_UPDATE, True),
        ("ANY($body.patch, p, p.op = 'add')", TWIN_UPDATE, False),
        ("$body.modelId = 'dtmi:examplecom:interfaceName;1' AND subject = 'room21'", TWIN_UPDATE, True),
        (f"source = '{HOST}'", TWIN_UPDATE, True),
        ("$body['$targetId'] = 'device2'", RELATIONSHIP, True),
        ("STARTS_WITH(subject, 'device1/relationships/')", RELATIONSHIP, True),
        # Telemetry's $body is its data, however it came: parsed from the bytes, or already parsed.
        ("$body.Temperature > 40", BINARY_TELEMETRY, True),
        ("$body.Temperature > 40", STRUCTURED_TELEMETRY, True),
        ("IS_DEFINED($body.specversion)", STRUCTURED_TELEMETRY, False),
        ("$properties['cloudEvents:type'] = 'microsoft.iot.telemetry'", BINARY_TELEMETRY, True),
    ],
)
def test_filters_on_v2_events(text: str, msg: IngressMessage, expected: bool) -> None:
    assert compile_filter(text).matches(only_event(msg)) is expected


def test_a_dollar_key_in_a_filter_path_is_written_dotted_as_digital_twins_does_or_in_brackets() -> None:
    # Twin and relationship data keys start with `$`; Digital Twins' docs write them dotted
    # (`$body.$metadata.$model`), and `['$name']` says the same.
    event = only_event(RELATIONSHIP)
    assert compile_filter("$body.$targetId = 'device2'").matches(event)
    assert compile_filter("$body['$targetId'] = 'device2'").matches(event)
    assert not compile_filter("$body.$targetId = 'room21'").matches(event)
