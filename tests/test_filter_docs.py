"""Microsoft's own examples, verbatim: every route filter in the Digital Twins route-filter docs and
every routing query in IoT Hub's query docs loads here and selects what the service selects.

Sources (MicrosoftDocs/azure-docs; the Learn page each becomes is named beside it):
- DT-ROUTES: articles/digital-twins/how-to-create-routes.md (ms.date 1/3/2024), learn.microsoft.com/azure/
  digital-twins/how-to-create-routes, "Filter events": the supported route filters, data types,
  operators and functions tables.
- DT-ROUTES-2020: articles/digital-twins/how-to-manage-routes.md (ms.date 6/23/2020, the preview
  page it replaced), "Filter events": the combined-filter examples.
- IOTHUB-ROUTING: articles/iot-hub/iot-hub-devguide-routing-query-syntax.md (ms.date 02/22/2023),
  learn.microsoft.com/azure/iot-hub/iot-hub-devguide-routing-query-syntax.
- IOTHUB-QUERY: articles/iot-hub/iot-hub-devguide-query-language.md, "Message routing" (the
  `messageType` examples) and "Expressions and conditions" (the routing functions).
- IOTHUB-EVENTS: articles/iot-hub/iot-hub-non-telemetry-event-schema.md (ms.date 07/01/2022), "Common
  event properties".
- IOTHUB-MESSAGES: articles/iot-hub/iot-hub-devguide-messages-construct.md: the system property names
  an Event Hubs consumer sees, and `application/json;charset=utf-8`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from routing.errors import RouteTableError
from routing.ingest.classify import classify
from routing.model import Event, EventType, IngressMessage
from routing.routes.filters import FilterSyntaxError, compile_filter
from routing.routes.iothub_queries import compile_iot_hub_query
from routing.routes.table import parse_routes
from tests.conftest import twin_event

# --- Azure Digital Twins -------------------------------------------------------------------------------

HOST = "contoso-adt.api.wus2.digitaltwins.azure.net"
FLOOR_MODEL = "dtmi:example:com:floor;1"
# DT-ROUTES: "For telemetry: The data schema is the model ID of the twin or the component that emits the
# telemetry. For example, `dtmi:example:com:floor4;2`".
TELEMETRY_MODEL = "dtmi:example:com:floor4;2"


def only(msg: IngressMessage) -> Event:
    [event] = classify(msg)
    assert isinstance(event, Event), event
    return event


def cloud_event(event_type: str, data: Any, **attributes: Any) -> Event:
    """A structured CloudEvent as Digital Twins sends one."""
    body = {"specversion": "1.0", "id": "e1", "type": event_type, "source": HOST, "datacontenttype": "application/json"}
    return only(twin_event({**body, **attributes, "data": data}, seq=1))


def telemetry(content_type: str = "application/json", **data: Any) -> Event:
    """Twin telemetry in the binary mode, as Digital Twins puts it on Event Hubs."""
    properties = {
        "cloudEvents:specversion": "1.0",
        "cloudEvents:type": "microsoft.iot.telemetry",
        "cloudEvents:id": "t1",
        "cloudEvents:source": f"{HOST}/digitaltwins/floor4",
        "cloudEvents:dataschema": TELEMETRY_MODEL,
        "cloudEvents:datacontenttype": content_type,
    }
    return only(twin_event(None, seq=1, raw=json.dumps(data).encode(), properties=properties))


# Create and delete notifications carry the twin (its model at `$body.$metadata.$model`), update
# notifications a patch and `$body.modelId` (DT-ROUTES, "Data schema").
CREATE = cloud_event(
    "Microsoft.DigitalTwins.Twin.Create",
    {"$dtId": "floor4", "$metadata": {"$model": FLOOR_MODEL}, "errorCode": 404, "poweredOn": True, "prop": 1},
    subject="floor4",
)
DELETE = cloud_event(
    "Microsoft.DigitalTwins.Twin.Delete",
    {"$dtId": "room7", "$metadata": {"$model": "dtmi:example:com:room;1"}, "prop": None},
    subject="room7",
)
UPDATE = cloud_event(
    "Microsoft.DigitalTwins.Twin.Update",
    {"modelId": FLOOR_MODEL, "patch": [{"value": 40, "path": "/temperature", "op": "replace"}]},
    subject="floor4",
)
RELATIONSHIP = cloud_event(
    "Microsoft.DigitalTwins.Relationship.Create",
    {"$relationshipId": "r1", "$sourceId": "floor4", "$targetId": "room7", "$relationshipName": "contains"},
    subject="floor4/relationships/r1",
)
TELEMETRY = telemetry(temperature=4.5)
WARM_TELEMETRY = telemetry(temperature=21)
TEXT_TELEMETRY = telemetry("text/plain")
EVENTS = {
    "create": CREATE,
    "delete": DELETE,
    "update": UPDATE,
    "relationship": RELATIONSHIP,
    "telemetry": TELEMETRY,
    "warm": WARM_TELEMETRY,
    "text": TEXT_TELEMETRY,
}
NOTIFICATIONS = {"create", "delete", "update", "relationship"}
JSON_EVENTS = NOTIFICATIONS | {"telemetry", "warm"}  # all but the telemetry sent as text/plain
NESTED = "(type != 'microsoft.iot.telemetry' OR datacontenttype = 'application/json') OR (specversion != '1.0')"


@pytest.mark.parametrize(
    ("text", "selected"),
    [
        # DT-ROUTES, "True / False": `true` = route is enabled with no filtering, `false` = disabled.
        ("true", set(EVENTS)),
        ("false", set()),
        # DT-ROUTES, "Type": `type = '<event-type>'` with each of the possible event type values.
        ("type = 'Microsoft.DigitalTwins.Twin.Create'", {"create"}),
        ("type = 'Microsoft.DigitalTwins.Twin.Delete'", {"delete"}),
        ("type = 'Microsoft.DigitalTwins.Twin.Update'", {"update"}),
        ("type = 'Microsoft.DigitalTwins.Relationship.Create'", {"relationship"}),
        ("type = 'Microsoft.DigitalTwins.Relationship.Update'", set()),
        ("type = 'Microsoft.DigitalTwins.Relationship.Delete'", set()),
        ("type = 'microsoft.iot.telemetry'", {"telemetry", "warm", "text"}),
        # DT-ROUTES, "Source": `source = '<host-name>'`, the instance's host for notifications, the host
        # and twin for telemetry.
        (f"source = '{HOST}'", NOTIFICATIONS),
        (f"source = '{HOST}/digitaltwins/floor4'", {"telemetry", "warm", "text"}),
        # DT-ROUTES, "Subject": `subject = '<subject>'`: a twin id, or `<twin-ID>/relationships/<relationship-ID>`.
        ("subject = 'floor4'", {"create", "update"}),
        ("subject = 'floor4/relationships/r1'", {"relationship"}),
        # DT-ROUTES, "Data schema": `dataschema = '<model-dtmi-ID>'`, for telemetry; DT-ROUTES-2020 verbatim.
        ("dataschema = 'dtmi:example:com:floor4;2'", {"telemetry", "warm", "text"}),
        # DT-ROUTES, "Content type": `datacontenttype = '<content-type>'`; "The content type is application/json".
        ("datacontenttype = 'application/json'", JSON_EVENTS),
        # DT-ROUTES, "Spec version": `specversion = '<version>'`, "The version must be `1.0`".
        ("specversion = '1.0'", set(EVENTS)),
        # DT-ROUTES, the data types table.
        ("STARTS_WITH($body.$metadata.$model, 'dtmi:example:com:floor')", {"create"}),
        ("CONTAINS(subject, 'floor4')", {"create", "update", "relationship"}),  # `CONTAINS(subject, '<twin-ID>')`
        ("$body.errorCode > 200", {"create"}),
        ("$body.temperature <= 5.5", {"telemetry"}),
        ("$body.poweredOn = true", {"create"}),
        ("$body.prop != null", {"create"}),
        # DT-ROUTES, the operators table (and DT-ROUTES-2020, "Nested operations").
        (NESTED, JSON_EVENTS),
        # DT-ROUTES, the functions table.
        ("ENDS_WITH($body.$metadata.$model, 'floor;1')", {"create"}),
        # DT-ROUTES-2020, "AND / OR".
        ("type != 'microsoft.iot.telemetry' AND datacontenttype = 'application/json'", NOTIFICATIONS),
        ("type != 'microsoft.iot.telemetry' OR datacontenttype = 'application/json'", JSON_EVENTS),
        # DT-ROUTES, "Data schema": for update notifications the model is at `$body.modelId`.
        (f"$body.modelId = '{FLOOR_MODEL}'", {"update"}),
    ],
)  # fmt: skip
def test_the_digital_twins_docs_filters_select_what_digital_twins_selects(text: str, selected: set[str]) -> None:
    compiled = compile_filter(text)
    assert {name for name, event in EVENTS.items() if compiled.matches(event)} == selected


def test_a_digital_twins_filter_from_the_docs_loads_in_a_route_table_as_it_is() -> None:
    endpoint = {
        "name": "floors",
        "type": "EventHub",
        "eventTypes": ["Twin.Create", "Twin.Delete"],
        "connection": "C",
        "path": "floors",
        "filter": "STARTS_WITH($body.$metadata.$model, 'dtmi:example:com:floor')",
    }
    table = parse_routes([endpoint])
    assert [e.name for e in table.targets(CREATE)] == ["floors"]
    assert table.targets(DELETE) == ()


# --- IoT Hub ---------------------------------------------------------------------------------------------

# IOTHUB-ROUTING, "Query based on message body": the JavaScript sample's body, content type and
# encoding (`message.contentEncoding = "utf-8"; message.contentType = "application/json";`) and its
# application property `Status`.
WEATHER = {
    "Weather": {
        "Temperature": 50,
        "Time": "2017-03-09T00:00:00.000Z",
        "PrevTemperatures": [20, 30, 40],
        "IsEnabled": True,
        "Location": {"Street": "One Microsoft Way", "City": "Redmond", "State": "WA"},
        "HistoricalData": [{"Month": "Feb", "Temperature": 40}, {"Month": "Jan", "Temperature": 30}],
    }
}


def iot_hub_message(
    body: Any = WEATHER,
    *,
    encoding: str | None = "UTF-8",
    content_type: str | None = "application/json",
    properties: dict[str, Any] | None = None,
    **system: Any,
) -> Event:
    """A device-to-cloud message as IoT Hub puts it on its Event Hubs-compatible endpoint (IOTHUB-MESSAGES,
    "System Property Names", Event Hubs column)."""
    system_properties = {
        "iothub-connection-device-id": "contoso-device-1",
        "iothub-message-source": "Telemetry",
        "iothub-enqueuedtime": "2017-05-08T18:55:31.8514657Z",
        **system,
    }
    if content_type is not None:
        system_properties["content-type"] = content_type
    if encoding is not None:
        system_properties["content-encoding"] = encoding
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = IngressMessage(
        body=raw, properties=properties or {}, system_properties=system_properties, source="hub", sequence_number=1
    )
    if system_properties["iothub-message-source"] != "Telemetry":
        # IoT Hub's other sources are classified elsewhere; a query reads only the message, whatever its type.
        return Event(event_type=EventType.DEVICE_MESSAGES, order_key="contoso-device-1", message_id="m", ingress=msg)
    return only(msg)


# IOTHUB-ROUTING's message: `processingPath` one of cold | warm | hot, `verbose`, `severity` 1-5, `testDevice`.
HOT = iot_hub_message(properties={"processingPath": "hot", "verbose": "true", "severity": "1", "testDevice": "false"})
COLD = iot_hub_message(
    {"Weather": {"Temperature": 20, "IsEnabled": False, "Location": {"State": "Oregon"}}},
    encoding="UTF-16",
    properties={"processingPath": "cold", "severity": "4"},
)
NOT_DECLARED = iot_hub_message(content_type=None, encoding=None, properties={"processingPath": "hot"})
# IOTHUB-QUERY, "Message routing": a `messageType` property telling telemetry from alerts.
ALERT = iot_hub_message(properties={"messageType": "alerts", "severity": "2"})
TELEMETRY_TYPED = iot_hub_message(properties={"messageType": "telemetry", "severity": "5"})
# IOTHUB-ROUTING: "To filter a twin notification payload based on what changed, run your query on the
# message body": a twin change event (IOTHUB-EVENTS' example, its desired property changed), enqueued
# 2022-06-09T00:00:00Z, in AMQP's milliseconds as IoT Hub annotates it.
TWIN_CHANGE_SYSTEM: dict[str, Any] = {"iothub-message-source": "twinChangeEvents", "iothub-enqueuedtime": 1654732800000}
TWIN_CHANGE = iot_hub_message(
    {"version": 7, "properties": {"desired": {"telemetryConfig": {"sendFrequency": 15}, "$version": 6}}},
    encoding="utf-8",
    properties={"hubName": "contoso-routing-hub", "deviceId": "my-device", "opType": "updateTwin"},
    **TWIN_CHANGE_SYSTEM,
)
MESSAGES = {
    "hot": HOT,
    "cold": COLD,
    "not-declared": NOT_DECLARED,
    "alert": ALERT,
    "telemetry": TELEMETRY_TYPED,
    "twin-change": TWIN_CHANGE,
}


@pytest.mark.parametrize(
    ("text", "selected"),
    [
        # IOTHUB-ROUTING, "Message properties query expressions".
        ("$contentEncoding = 'UTF-8'", {"hot", "alert", "telemetry"}),
        ("processingPath = 'hot'", {"hot", "not-declared"}),
        ("$contentEncoding = 'UTF-8' AND processingPath = 'hot'", {"hot"}),
        # IOTHUB-ROUTING, "Message body query expressions": the body only where the message says it is
        # UTF JSON (`not-declared` carries the same JSON without saying so).
        ("$body.Weather.HistoricalData[0].Month = 'Feb'", {"hot", "alert", "telemetry"}),
        ("$body.Weather.Temperature = 50 AND $body.Weather.IsEnabled", {"hot", "alert", "telemetry"}),
        ("length($body.Weather.Location.State) = 2", {"hot", "alert", "telemetry"}),
        ("$body.Weather.Temperature = 50 AND processingPath = 'hot'", {"hot"}),
        ("$body.properties.desired.telemetryConfig.sendFrequency > 10", {"twin-change"}),
        ("is_defined($body.properties.desired.telemetryConfig.sendFrequency)", {"twin-change"}),
        # IOTHUB-QUERY, "Message routing".
        ("messageType = 'telemetry'", {"telemetry"}),
        ("messageType = 'alert'", set()),  # the docs' own alerts say 'alerts'
        ("messageType = 'alerts' AND as_number(severity) <= 2", {"alert"}),
        # IOTHUB-EVENTS, "System properties" and "Application properties".
        ('$enqueuedTime > "2022-06-06T22:56:06Z"', {"twin-change"}),
        ('deviceId = "my-device"', {"twin-change"}),
    ],
)
def test_the_iot_hub_docs_queries_select_what_iot_hub_selects(text: str, selected: set[str]) -> None:
    compiled = compile_iot_hub_query(text)
    assert {name for name, event in MESSAGES.items() if compiled.matches(event)} == selected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # IOTHUB-ROUTING: "the following query is *not* supported and returns `undefined`".
        ("$body[0] = 'Feb'", "IoT Hub runs no query on the whole body or an index of it"),
        # IOTHUB-ROUTING, "Twin query expressions": the router has no twins to query.
        ("$twin.properties.desired.telemetryConfig.sendFrequency = '5m'", "twin queries ($twin) are not supported"),
        (
            "$body.Weather.Temperature = 50 AND $twin.properties.desired.telemetryConfig.sendFrequency = '5m'",
            "twin queries ($twin) are not supported, at position 36",
        ),
        ("$twin.tags.deploymentLocation.floor = 1", "twin queries ($twin) are not supported"),
    ],
)
def test_iot_hub_docs_queries_the_router_cannot_answer_are_refused_saying_why(text: str, message: str) -> None:
    with pytest.raises(FilterSyntaxError, match=message.replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")):
        compile_iot_hub_query(text)


def test_an_iot_hub_route_query_from_the_docs_loads_in_a_route_table_as_it_is() -> None:
    endpoint = {
        "name": "hot-path",
        "type": "EventHub",
        "eventTypes": ["DeviceMessages"],
        "connection": "C",
        "path": "hot",
        "filterLanguage": "iothub",
        "filter": "$body.Weather.Temperature = 50 AND processingPath = 'hot'",
    }
    table = parse_routes([endpoint])
    assert [e.name for e in table.targets(HOT)] == ["hot-path"]
    assert table.targets(COLD) == ()
    # The same text as a Digital Twins filter is refused: there a property needs `$properties.`.
    with pytest.raises(RouteTableError, match="unknown operand 'processingPath'"):
        parse_routes([{**endpoint, "filterLanguage": "digitaltwins"}])
