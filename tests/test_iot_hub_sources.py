"""IoT Hub's other routing sources (twin changes, lifecycle, connection state, digital twin changes, job
lifecycle): recognised from their system properties, ordered by device, forwarded unprocessed to the
endpoint kinds IoT Hub routes them to.

The messages are Microsoft's own examples, property for property: "Azure IoT Hub non-telemetry event
schemas" (MicrosoftDocs/azure-docs, articles/iot-hub/iot-hub-non-telemetry-event-schema.md: system
properties `iothub-message-source`, `iothub-connection-device-id`, `iothub-connection-module-id`,
`content-type`, `content-encoding`, `correlation-id`; application properties `hubName`, `deviceId`,
`moduleId`, `opType`, `iothub-message-schema`, `operationTimestamp`) and, for digital twin change events,
"Understand IoT Plug and Play digital twins" (articles/iot/concepts-digital-twin.md: a JSON Patch body,
`application/json-patch+json`). The routing names are the IoT Hub resource API's `RoutingSource` values.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from routing.deliver.envelope import build
from routing.errors import RouteTableError
from routing.ingest.classify import classify
from routing.model import IOT_HUB_SOURCE_TYPES, RAW_TYPES, Event, EventType, IngressMessage, Rejection
from routing.routes.filters import compile_filter
from routing.routes.table import parse_routes
from tests.conftest import telemetry

HUB = "contoso-routing-hub"

# "Connection state events": a device disconnects. The body is a sequence number.
CONNECTION_STATE = {
    "system": {
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "correlation-id": "aaaa0000-bb11-2222-33cc-444444dddddd",
        "iothub-connection-device-id": "contoso-device-1",
        "iothub-message-source": "deviceConnectionStateEvents",
    },
    "application": {
        "hubName": HUB,
        "deviceId": "contoso-device-1",
        "opType": "deviceDisconnected",
        "iothub-message-schema": "deviceConnectionStateNotification",
        "operationTimestamp": "2022-06-01T18:43:04.5561024Z",
    },
    "payload": {"sequenceNumber": "000000000000000001D8713FF7E0851400000002000000000000000000000007"},
}
# "Device lifecycle events": a module is created. The body is the module twin.
MODULE_CREATED = {
    "system": {
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "correlation-id": "c5a4e6986c",
        "iothub-connection-device-id": "contoso-device-2",
        "iothub-connection-module-id": "module-1",
        "iothub-message-source": "deviceLifecycleEvents",
    },
    "application": {
        "hubName": HUB,
        "deviceId": "contoso-device-2",
        "operationTimestamp": "2022-05-27T18:49:38.4904785Z",
        "moduleId": "module-1",
        "opType": "createDeviceIdentity",
        "iothub-message-schema": "deviceLifecycleNotification",
    },
    "payload": {
        "deviceId": "contoso-device-2",
        "moduleId": "module-1",
        "etag": "AAAAAAAAAAE=",
        "version": 2,
        "properties": {
            "desired": {"$metadata": {"$lastUpdated": "0001-01-01T00:00:00Z"}, "$version": 1},
            "reported": {"$metadata": {"$lastUpdated": "0001-01-01T00:00:00Z"}, "$version": 1},
        },
    },
}
# "Device twin change events": a desired property and a tag of a module twin are updated.
TWIN_CHANGED = {
    "system": {
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "correlation-id": "4d1f1e2e74f",
        "iothub-connection-device-id": "contoso-device-3",
        "iothub-connection-module-id": "module-1",
        "iothub-message-source": "twinChangeEvents",
    },
    "application": {
        "hubName": HUB,
        "deviceId": "contoso-device-3",
        "operationTimestamp": "2022-06-01T22:27:50.2612586Z",
        "moduleId": "module-1",
        "iothub-message-schema": "twinChangeNotification",
        "opType": "updateTwin",
    },
    "payload": {
        "version": 7,
        "tags": {"tag1": "new value"},
        "properties": {
            "desired": {
                "property1": "new value",
                "$metadata": {
                    "$lastUpdated": "2022-06-01T22:27:50.2612586Z",
                    "$lastUpdatedVersion": 6,
                    "property1": {"$lastUpdated": "2022-06-01T22:27:50.2612586Z", "$lastUpdatedVersion": 6},
                },
                "$version": 6,
            }
        },
    },
}
# "Digital twin change events": the solution sets targetTemperature (concepts-digital-twin.md shows the
# system properties only).
DIGITAL_TWIN_CHANGED = {
    "system": {
        "iothub-connection-device-id": "sample-device",
        "iothub-message-source": "digitalTwinChangeEvents",
        "correlation-id": "275d463fa034",
        "content-type": "application/json-patch+json",
        "content-encoding": "utf-8",
    },
    "application": {},
    "payload": [
        {
            "op": "add",
            "path": "/thermostat1/$metadata/targetTemperature",
            "value": {"desiredValue": 21.8, "desiredVersion": 4},
        }
    ],
}
# (example, its type, the device it is ordered by)
EXAMPLES = [
    (CONNECTION_STATE, EventType.DEVICE_CONNECTION_STATE_EVENTS, "contoso-device-1"),
    (MODULE_CREATED, EventType.DEVICE_LIFECYCLE_EVENTS, "contoso-device-2"),
    (TWIN_CHANGED, EventType.TWIN_CHANGE_EVENTS, "contoso-device-3"),
    (DIGITAL_TWIN_CHANGED, EventType.DIGITAL_TWIN_CHANGE_EVENTS, "sample-device"),
]


def message(
    example: dict[str, Any], *, body: bytes | None = None, system: dict[str, Any] | None = None
) -> IngressMessage:
    """The example as it reaches the router's hub: IoT Hub's annotations and AMQP properties among the
    system properties, the application properties apart, the payload the body."""
    return IngressMessage(
        body=json.dumps(example["payload"]).encode() if body is None else body,
        properties=example["application"],
        system_properties={**example["system"], **(system or {})},
        source="telemetry",
        partition="2",
        sequence_number=72,
        enqueued_time="2022-06-01T18:43:38.051Z",
    )


def only_event(msg: IngressMessage) -> Event:
    [result] = classify(msg)
    assert isinstance(result, Event), result
    return result


def only_rejection(msg: IngressMessage) -> Rejection:
    [result] = classify(msg)
    assert isinstance(result, Rejection), result
    return result


@pytest.mark.parametrize(("example", "event_type", "device"), EXAMPLES)
def test_each_documented_source_is_its_routing_type_ordered_by_device_its_body_unparsed(
    example: dict[str, Any], event_type: EventType, device: str
) -> None:
    event = only_event(message(example))
    assert (event.event_type, event.order_key, event.data) == (event_type, device, None)
    assert event.event_type in RAW_TYPES


def test_a_modules_events_are_ordered_by_its_device_as_its_telemetry_is() -> None:
    # A module's twin change and the module's own telemetry share the device's key: one order per device.
    module_telemetry = telemetry("contoso-device-3", b"{}", seq=1)
    module_telemetry = IngressMessage(
        body=b"{}",
        properties={},
        system_properties={**module_telemetry.system_properties, "iothub-connection-module-id": "module-1"},
        source="telemetry",
    )
    assert only_event(module_telemetry).order_key == "contoso-device-3"
    assert only_event(message(TWIN_CHANGED)).order_key == "contoso-device-3"


def test_a_body_that_is_not_json_is_still_routed() -> None:
    event = only_event(message(TWIN_CHANGED, body=b"\xff not JSON"))
    assert (event.event_type, event.order_key) == (EventType.TWIN_CHANGE_EVENTS, "contoso-device-3")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("twinChangeEvents", EventType.TWIN_CHANGE_EVENTS),
        ("TwinChangeEvents", EventType.TWIN_CHANGE_EVENTS),
        ("DEVICELIFECYCLEEVENTS", EventType.DEVICE_LIFECYCLE_EVENTS),
        ("deviceConnectionStateEvents", EventType.DEVICE_CONNECTION_STATE_EVENTS),
        ("digitalTwinChangeEvents", EventType.DIGITAL_TWIN_CHANGE_EVENTS),
        # Its payload is not documented; its source is spelled as the others are.
        ("deviceJobLifecycleEvents", EventType.DEVICE_JOB_LIFECYCLE_EVENTS),
    ],
)
def test_the_message_source_is_matched_case_insensitively(source: str, expected: EventType) -> None:
    event = only_event(message(CONNECTION_STATE, system={"iothub-message-source": source}))
    assert event.event_type is expected


def test_an_unknown_source_is_dead_lettered_naming_it_and_the_known_ones() -> None:
    rejection = only_rejection(message(CONNECTION_STATE, system={"iothub-message-source": "gatewayEvents"}))
    assert rejection.code == "not-telemetry"
    assert "'gatewayEvents' from device 'contoso-device-1'" in rejection.reason
    assert all(t.value in rejection.reason for t in IOT_HUB_SOURCE_TYPES)


def test_without_the_connection_device_id_the_device_id_property_orders_it() -> None:
    system = {k: v for k, v in CONNECTION_STATE["system"].items() if k != "iothub-connection-device-id"}
    event = only_event(message({**CONNECTION_STATE, "system": system}))
    assert (event.event_type, event.order_key) == (EventType.DEVICE_CONNECTION_STATE_EVENTS, "contoso-device-1")
    rejection = only_rejection(message({**CONNECTION_STATE, "system": system, "application": {"opType": "x"}}))
    assert rejection.code == "no-order-key"
    assert "iothub-connection-device-id" in rejection.reason and "'deviceId'" in rejection.reason


@pytest.mark.parametrize(
    "properties",
    [{"Type": "TwinChangeEvents"}, {"cloudEvents:specversion": "1.0", "cloudEvents:type": "DeviceLifecycleEvents"}],
)
def test_a_message_that_only_names_a_source_as_its_type_is_refused_saying_how_iot_hub_marks_them(
    properties: dict[str, str],
) -> None:
    msg = IngressMessage(body=b"{}", properties=properties, system_properties={}, source="twins")
    rejection = only_rejection(msg)
    assert rejection.code == "unknown-type"
    assert "IoT Hub routing source" in rejection.reason and "iothub-message-source" in rejection.reason


@pytest.mark.parametrize(
    "name",
    ["TwinChangeEvents", "twinchangeevents", " DEVICELIFECYCLEEVENTS ", "deviceConnectionStateEvents"],
)
def test_routes_name_the_sources_as_iot_hub_routes_do_in_any_case(name: str) -> None:
    assert EventType.parse(name) in IOT_HUB_SOURCE_TYPES


def endpoint(endpoint_type: str, event_types: list[str], **more: Any) -> dict[str, Any]:
    return {"name": "ep", "type": endpoint_type, "eventTypes": event_types, "connection": "C", "path": "p", **more}


SOURCES = [t.value for t in IOT_HUB_SOURCE_TYPES]


@pytest.mark.parametrize("endpoint_type", ["EventHub", "ServiceBus"])
def test_event_hubs_and_service_bus_take_every_source_as_iot_hub_routes_them(endpoint_type: str) -> None:
    table = parse_routes([endpoint(endpoint_type, SOURCES)])
    assert all([e.name for e in table.for_type(t)] == ["ep"] for t in IOT_HUB_SOURCE_TYPES)


def test_event_grid_refuses_every_source_saying_why() -> None:
    with pytest.raises(RouteTableError) as caught:
        parse_routes([endpoint("EventGrid", ["Twin.Update", *SOURCES], format="CloudEventSchemaV1_0")])
    text = str(caught.value)
    assert "5 problems" in text
    for source in SOURCES:
        assert f"EventGrid endpoints cannot take {source}: IoT Hub's sources are forwarded unprocessed" in text


@pytest.mark.parametrize(
    ("text", "example", "expected"),
    [
        # IoT Hub's own examples: route on the application properties, and on the body.
        ("$properties.opType = 'updateTwin'", TWIN_CHANGED, True),
        ("$properties.opType = 'deviceConnected'", CONNECTION_STATE, False),
        ("$body.version > 6 AND $body.tags.tag1 = 'new value'", TWIN_CHANGED, True),
        ("$system['iothub-connection-module-id'] = 'module-1'", MODULE_CREATED, True),
        ("$body[0].op = 'add'", DIGITAL_TWIN_CHANGED, True),
    ],
)
def test_filters_read_their_properties_and_body(text: str, example: dict[str, Any], expected: bool) -> None:
    assert compile_filter(text).matches(only_event(message(example))) is expected


@pytest.mark.parametrize("endpoint_type", ["EventHub", "ServiceBus"])
def test_endpoints_get_the_message_as_it_came_keyed_by_device(endpoint_type: str) -> None:
    msg = message(MODULE_CREATED, body=b'{ "deviceId" : "contoso-device-2" }')
    [target] = parse_routes([endpoint(endpoint_type, ["DeviceLifecycleEvents"])]).endpoints
    out = build(only_event(msg), target)
    assert (out.body, out.content_type, out.order_key) == (msg.body, "application/json", "contoso-device-2")
    assert out.properties == MODULE_CREATED["application"]


def test_an_order_key_template_can_order_a_devices_modules_apart() -> None:
    template = "{$system['iothub-connection-device-id']}/{$system['iothub-connection-module-id']}"
    [target] = parse_routes([endpoint("ServiceBus", SOURCES, orderKey=template)]).endpoints
    assert build(only_event(message(MODULE_CREATED)), target).order_key == "contoso-device-2/module-1"
    # A device's own event cannot fill the template: it keeps the device's key.
    assert build(only_event(message(CONNECTION_STATE)), target).order_key == "contoso-device-1"
