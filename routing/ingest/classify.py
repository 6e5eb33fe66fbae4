"""Classification: which event type an ingress message is, what orders it, and (for Digital Twins
events) the fields of its envelope.

Pure functions of an `IngressMessage`. Telemetry, and IoT Hub's other sources (twin changes, lifecycle,
connection state, ...: `iothub-message-source`), are recognised from properties alone, so their bodies
are never parsed; everything else must be JSON in one of the wire forms Digital Twins events travel in.
Whatever cannot be classified comes back as a `Rejection` with a reason a person understands.

Bad input is bounded in cost: the rejected elements of one JSON array come back as one `Rejection`
(their count and first positions; one dead letter, not one per element each carrying the whole body),
a value quoted in a reason is cut to `SHOWN_CHARACTERS`, and an event nested deeper than `MAX_DEPTH`
levels (more than the router can serialise) is rejected here, at a byte count's cost for the others.

Two generations of events: the first service's five types, ordered by the object id in their data, and
today's (v2) CloudEvents types, ordered by twin id: the subject of a `Twin.*` event, the source twin of
a `Relationship.*` one, the twin a `microsoft.iot.telemetry` event came from (named in its source).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from routing.model import (
    EVENT_TYPE_TEXT,
    IOT_HUB_SOURCE_TYPES,
    IOT_HUB_SOURCES,
    KNOWN_EVENT_TYPES,
    POSITIONS_LISTED,
    V2_EVENT_TYPES,
    Event,
    EventType,
    IngressMessage,
    Rejection,
    message_id,
    opening_brackets,
)

Result = Event | Rejection

DEVICE_ID = "iothub-connection-device-id"
MESSAGE_SOURCE = "iothub-message-source"
# The application property IoT Hub sets on the messages of its other sources (and `moduleId` for a module).
IOT_HUB_DEVICE_ID = "deviceId"
TELEMETRY_MARK = "DigitalTwins-Telemetry"
SENSOR_HARDWARE_ID = "DigitalTwins-SensorHardwareId"

_TWIN_TYPES = frozenset({EventType.TWIN_CREATE, EventType.TWIN_UPDATE, EventType.TWIN_DELETE})
# Azure Digital Twins names a relationship `<source-twin-id>/relationships/<relationship-id>`.
RELATIONSHIPS = "/relationships/"
# ... and the twin a telemetry message came from in its source: `<instance-host>/digitaltwins/<twin-id>`.
TWIN_PATH = "/digitaltwins/"
# Publishing in the Event Grid schema, Digital Twins nests each event's data with the CloudEvents
# attributes that schema has no field for: `"data": {"data": ..., "contenttype": ..., "traceparent": ...}`.
_NESTED_DATA_KEYS = frozenset({"data", "contenttype", "datacontenttype", "dataschema", "traceparent", "tracestate"})
# The only CloudEvents version there is a mapping for here; another version's attributes may mean
# other things, so such an event is dead-lettered rather than relabelled 1.0 on the way out.
SPEC_VERSION = "1.0"
# An RFC 3339 date-time (the form Event Grid and CloudEvents require), its offset optional here: a
# time without one is UTC (the Functions host hands enqueued times over without a zone) and gets `Z`.
_DATE_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?P<offset>Z|[+-]\d\d:\d\d)?")
# orjson parses 1,024 levels of nested arrays and objects but serialises only 254, and an envelope puts
# an event's data one level below its own: an event (the body, or its element of an array) nesting
# deeper than this could be read but never sent, so it is rejected as `too-deep`. A body with fewer
# brackets than this cannot nest so deep: only such bodies are walked, at most once per element.
MAX_DEPTH = 253
PARSER_DEPTH = 1024
# Input quoted in a reason (a type name, a source) is cut to this many characters: a reason stays a
# line, whatever the message carries.
SHOWN_CHARACTERS = 120


class _Properties:
    """Application properties by name; producers vary the case, so a miss looks again case-insensitively
    (in a lower-cased copy made once per message, on its first miss: several names are tried per message)."""

    __slots__ = ("_lower", "_props")

    def __init__(self, props: Mapping[str, Any]) -> None:
        self._props = props
        self._lower: dict[str, Any] | None = None

    def get(self, name: str, lowered: str | None = None) -> Any:
        """The value of property `name` (`lowered`: the name lower-cased, when the caller has it)."""
        value = self._props.get(name)
        if value is not None or not self._props:
            return value
        lower = self._lower
        if lower is None:
            lower = self._lower = {}
            for key, candidate in self._props.items():
                if isinstance(key, str):
                    lower.setdefault(key.lower(), candidate)  # the first spelling wins, as it always did
        return lower.get(name.lower() if lowered is None else lowered)


def _shown(text: str) -> str:
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return f"{text[:SHOWN_CHARACTERS]}... ({len(text)} characters)"


def _may_nest_deeper(body: bytes) -> bool:
    """Whether `body` holds enough brackets to nest deeper than `MAX_DEPTH`: two byte counts."""
    return len(body) > 2 * MAX_DEPTH and opening_brackets(body) > MAX_DEPTH


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests arrays and objects more than `limit` levels deep (a walk, not a recursion)."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _too_deep(what: str, index: int = 0) -> Rejection:
    return Rejection(
        code="too-deep",
        reason=f"{what} nests JSON arrays and objects deeper than {MAX_DEPTH} levels: the router can parse it "
        f"but not serialise it (its envelope adds a level; orjson writes at most {MAX_DEPTH + 1})",
        index=index,
    )


def _text(value: Any) -> str | None:
    if value is None or type(value) is str:  # nearly every value asked for: as it is
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def classify(msg: IngressMessage) -> list[Result]:
    """Every event in `msg` (one, or several for a JSON array of events), or why not."""
    system = msg.system_properties
    # IoT Hub's own names are looked up exactly; producers' names case-insensitively.
    device_id = system.get(DEVICE_ID) or msg.properties.get(DEVICE_ID)
    if device_id:
        source = system.get(MESSAGE_SOURCE) or msg.properties.get(MESSAGE_SOURCE)
        if source is None or source == "Telemetry" or str(source).lower() == "telemetry":  # IoT Hub's spelling first
            return [_telemetry(msg, str(device_id))]
        return [_from_iot_hub_source(msg, str(source), str(device_id))]

    source = system.get(MESSAGE_SOURCE)
    if source is not None and str(source).lower() in IOT_HUB_SOURCES:
        # The device id is in an application property too (`deviceId`): IoT Hub sets both.
        return [_from_iot_hub_source(msg, str(source), _text(msg.properties.get(IOT_HUB_DEVICE_ID)))]

    if not msg.properties:  # a structured event (or junk): nothing to look up by name
        return _from_body(msg)
    props = _Properties(msg.properties)
    if props.get(TELEMETRY_MARK) is not None:
        return [_telemetry_from_properties(msg, props)]

    type_name = _text(props.get("Type")) or _text(props.get("EventType"))
    if type_name is not None:
        return [_from_type_property(msg, props, type_name)]

    ce_type = _text(props.get("cloudEvents:type")) or _text(props.get("ce-type")) or _text(props.get("ce_type"))
    if ce_type is not None:
        return [_from_binary_cloud_event(msg, props, ce_type)]

    return _from_body(msg)


def _from_body(msg: IngressMessage) -> list[Result]:
    """The events of a message no property classifies: its body's structured event, or JSON array of them."""
    body, rejection = _parse_body(msg)
    if rejection is not None:
        return [rejection]
    deep = _may_nest_deeper(msg.body)
    if isinstance(body, list):
        if not body:
            return [Rejection(code="empty-array", reason="body is an empty JSON array: no events in it")]
        count = len(body)
        return _grouped(
            [
                _too_deep(f"event {index} of the JSON array", index)
                if deep and _deeper_than(element, MAX_DEPTH)
                else _from_structured(msg, element, index, count)
                for index, element in enumerate(body)
            ],
            count,
        )
    if deep and _deeper_than(body, MAX_DEPTH):
        return [_too_deep("body")]
    return [_from_structured(msg, body, 0, 1)]


def _grouped(results: list[Result], count: int) -> list[Result]:
    """The results of a JSON array of `count` events, its rejections made one (at the first's place).

    One letter per bad message, whatever its size: N junk elements as N letters, each carrying the whole
    body, cost N x the body to write (a 1 MB array of zeros: half a million letters of 1.4 MB each).
    """
    rejections = [r for r in results if isinstance(r, Rejection)]
    if len(rejections) < 2:
        return results
    first = rejections[0]
    positions = tuple(r.index for r in rejections[:POSITIONS_LISTED])
    codes = ", ".join(f"{code} x{n}" for code, n in Counter(r.code for r in rejections).items())
    listed = ", ".join(_runs(positions))
    more = (
        f" (the first {len(positions)} listed; {len(rejections) - len(positions)} more)"
        if len(rejections) > len(positions)
        else ""
    )
    group = Rejection(
        code=first.code,
        reason=f"{len(rejections)} of the {count} events of the JSON array cannot be routed ({codes}), at "
        f"positions {listed}{more}; the first, at position {first.index}: {first.reason}",
        index=first.index,
        count=len(rejections),
        positions=positions,
    )
    return [group if r is first else r for r in results if r is first or not isinstance(r, Rejection)]


def _runs(positions: tuple[int, ...]) -> list[str]:
    """`0-99, 101, 103-104`: ascending positions as runs."""
    out: list[str] = []
    start = previous = positions[0]
    for position in (*positions[1:], None):
        if position is not None and position == previous + 1:
            previous = position
            continue
        out.append(str(start) if start == previous else f"{start}-{previous}")
        if position is not None:
            start = previous = position
    return out


def _telemetry(msg: IngressMessage, key: str) -> Event:
    return Event(
        event_type=EventType.DEVICE_MESSAGES,
        order_key=key,
        message_id=message_id(msg, 0),
        ingress=msg,
    )


def _from_iot_hub_source(msg: IngressMessage, source: str, device_id: str | None) -> Result:
    """A message of one of IoT Hub's other routing sources (twin changes, lifecycle, connection state,
    ...): raw like telemetry, ordered by its device.

    The key is the device id alone, also for a module's events: the key of the device's (and its
    modules') telemetry, so that a device's connection state, twin changes and telemetry keep one order
    per endpoint, as IoT Hub keeps them on one partition of its built-in endpoint (partitioned by device).
    """
    event_type = IOT_HUB_SOURCES.get(source.lower())
    if event_type is None:
        return Rejection(
            code="not-telemetry",
            reason=f"IoT Hub message source '{_shown(source)}'"
            + (f" from device '{_shown(device_id)}'" if device_id else "")
            + " is not routed: expected Telemetry or one of IoT Hub's sources "
            + ", ".join(sorted(t.value for t in IOT_HUB_SOURCES.values())),
        )
    if not device_id:
        return Rejection(
            code="no-order-key",
            reason=f"{event_type} message has no device id to order by: neither '{DEVICE_ID}' nor the "
            f"'{IOT_HUB_DEVICE_ID}' application property (IoT Hub sets both)",
        )
    return Event(event_type=event_type, order_key=device_id, message_id=message_id(msg, 0), ingress=msg)


def _telemetry_from_properties(msg: IngressMessage, props: _Properties) -> Result:
    key = _text(props.get(SENSOR_HARDWARE_ID))
    if not key:
        return Rejection(
            code="no-order-key",
            reason=f"telemetry has no device id to order by: set '{DEVICE_ID}' (IoT Hub does) "
            f"or the '{SENSOR_HARDWARE_ID}' application property",
        )
    return _telemetry(msg, key)


def _parse_body(msg: IngressMessage, event_type: EventType | None = None) -> tuple[Any, Rejection | None]:
    try:
        return orjson.loads(msg.body), None
    except orjson.JSONDecodeError as exc:
        # Name what the message claimed to be, so the reason says which producer to look at.
        what = f"{event_type} event's body" if event_type else "body"
        no_marks = (
            ""
            if event_type
            else (f" and the message carries no telemetry properties ('{DEVICE_ID}' or '{TELEMETRY_MARK}')")
        )
        if not msg.body.strip():
            return None, Rejection(code="empty-body", reason=f"{what} is empty{no_marks}")
        if "depth limit" in str(exc):
            reason = f"{what} nests JSON arrays and objects deeper than {PARSER_DEPTH} levels, which the parser refuses"
            return None, Rejection(code="too-deep", reason=reason)
        return None, Rejection(code="not-json", reason=f"{what} is not JSON ({exc}){no_marks}")


def _twin_type(name: str, where: str) -> EventType | Rejection:
    # Producers write the classic names bare or behind a namespace ("Microsoft.DigitalTwins.SensorChange").
    event_type = EventType.parse(name) or EventType.parse(name.rsplit(".", 1)[-1])
    if event_type is None:
        return Rejection(
            code="unknown-type",
            reason=f"unknown event type '{_shown(name)}' in {where}; expected one of {KNOWN_EVENT_TYPES}",
        )
    if event_type in IOT_HUB_SOURCE_TYPES:
        return Rejection(
            code="unknown-type",
            reason=f"'{_shown(name)}' in {where} is an IoT Hub routing source, not an event type a message "
            f"names: IoT Hub marks its messages with the system properties '{MESSAGE_SOURCE}' and '{DEVICE_ID}'",
        )
    return event_type


def _from_type_property(msg: IngressMessage, props: _Properties, type_name: str) -> Result:
    event_type = _twin_type(type_name, "application property 'Type'")
    if isinstance(event_type, Rejection):
        return event_type
    if event_type is EventType.DEVICE_MESSAGES:
        return _telemetry_from_properties(msg, props)
    if event_type is EventType.TWIN_TELEMETRY:
        return _from_binary_cloud_event(msg, props, event_type.value)
    body, rejection = _parse_body(msg, event_type)
    if rejection is not None:
        return rejection
    if _may_nest_deeper(msg.body) and _deeper_than(body, MAX_DEPTH):
        return _too_deep(f"{event_type} event's body")
    if isinstance(body, dict) and "eventType" in body and "data" in body:
        return _from_event_grid(msg, body, 0, 1)
    return _event(msg, 0, event_type, body, correlation_id=_text(props.get("CorrelationId")))


# Each CloudEvents attribute's property names in the binary mode (AMQP's `cloudEvents:` prefix, then the
# `ce-` and `ce_` of other bindings), each with its lower-cased form: made once, not per message.
_CE_NAMES = {
    attribute: tuple(
        (name, name.lower()) for name in (f"cloudEvents:{attribute}", f"ce-{attribute}", f"ce_{attribute}")
    )
    for attribute in ("specversion", "id", "subject", "time", "dataschema", "source", "datacontenttype")
}


def _from_binary_cloud_event(msg: IngressMessage, props: _Properties, ce_type: str) -> Result:
    event_type = _twin_type(ce_type, "CloudEvents property 'type'")
    if isinstance(event_type, Rejection):
        return event_type
    if event_type is EventType.DEVICE_MESSAGES:
        return _telemetry_from_properties(msg, props)

    def ce(attribute: str) -> str | None:
        colon, dash, underscore = _CE_NAMES[attribute]
        return _text(props.get(*colon)) or _text(props.get(*dash) or props.get(*underscore))

    version = ce("specversion")
    if version is not None and version != SPEC_VERSION:
        return _unsupported_version(version, "CloudEvents property 'specversion'")
    data = None
    if event_type is not EventType.TWIN_TELEMETRY:
        # Telemetry's key is in its properties and its body is forwarded as it came: never parsed here.
        data, rejection = _parse_body(msg, event_type)
        if rejection is not None:
            return rejection
        if _may_nest_deeper(msg.body) and _deeper_than(data, MAX_DEPTH):
            return _too_deep(f"{event_type} event's body")
    dataschema = ce("dataschema")
    return _event(
        msg,
        0,
        event_type,
        data,
        event_id=ce("id"),
        subject=ce("subject"),
        event_time=ce("time"),
        schema=dataschema,
        source=ce("source"),
        correlation_id=_text(props.get("CorrelationId")),
        dataschema=dataschema,
        # In the binary mode the data's content type is the message's own (the CloudEvents AMQP binding).
        datacontenttype=ce("datacontenttype") or _text(msg.system_properties.get("content-type")),
    )


def _from_structured(msg: IngressMessage, body: Any, index: int, count: int) -> Result:
    if not isinstance(body, dict):
        return Rejection(
            code="not-an-event",
            reason=f"body is JSON {type(body).__name__}, not an event object",
            index=index,
        )
    if "specversion" in body:
        return _from_structured_cloud_event(msg, body, index, count)
    if "eventType" in body and "data" in body:
        return _from_event_grid(msg, body, index, count)
    return Rejection(
        code="no-event-type",
        reason="JSON object has no event type: expected an Event Grid event (eventType, data), "
        "a CloudEvent (specversion, type) or a 'Type' application property",
        index=index,
    )


def _structured_type(name: Any, where: str, what: str, index: int) -> EventType | Rejection:
    event_type = _twin_type(str(name), where)
    if isinstance(event_type, Rejection):
        return Rejection(code=event_type.code, reason=event_type.reason, index=index)
    if event_type is EventType.DEVICE_MESSAGES:
        return Rejection(
            code="unknown-type",
            reason=f"{what} of type DeviceMessages cannot be routed: telemetry must carry "
            f"'{DEVICE_ID}' or '{TELEMETRY_MARK}' properties",
            index=index,
        )
    return event_type


def _from_event_grid(msg: IngressMessage, body: dict[str, Any], index: int, count: int) -> Result:
    event_type = _structured_type(body.get("eventType"), "Event Grid field 'eventType'", "an Event Grid event", index)
    if isinstance(event_type, Rejection):
        return event_type
    data, schema = body.get("data"), _text(body.get("dataVersion"))
    nested_schema = content_type = None
    if event_type in V2_EVENT_TYPES:
        data, nested_schema, content_type = _unnested(data)
        schema = nested_schema or schema
    return _event(
        msg,
        index,
        event_type,
        data,
        count=count,
        event_id=_text(body.get("id")),
        subject=_text(body.get("subject")),
        event_time=_text(body.get("eventTime")),
        schema=schema,
        topic=_text(body.get("topic")),
        dataschema=nested_schema,
        datacontenttype=content_type,
    )


def _unsupported_version(version: Any, where: str, index: int = 0) -> Rejection:
    return Rejection(
        code="unsupported-specversion",
        reason=f"CloudEvents specversion {_shown(repr(version))} in {where} is not supported: only '{SPEC_VERSION}' is "
        "(the router forwards CloudEvents 1.0 and will not relabel another version as it)",
        index=index,
    )


def _from_structured_cloud_event(msg: IngressMessage, body: dict[str, Any], index: int, count: int) -> Result:
    if body["specversion"] != SPEC_VERSION:
        return _unsupported_version(body["specversion"], "CloudEvents field 'specversion'", index)
    event_type = _structured_type(body.get("type"), "CloudEvents field 'type'", "a CloudEvent", index)
    if isinstance(event_type, Rejection):
        return event_type
    return _event(
        msg,
        index,
        event_type,
        body.get("data"),
        count=count,
        event_id=_text(body.get("id")),
        subject=_text(body.get("subject")),
        event_time=_text(body.get("time")),
        schema=_text(body.get("dataschema")),
        source=_text(body.get("source")),
        dataschema=_text(body.get("dataschema")),
        datacontenttype=_text(body.get("datacontenttype")),
        cloud_event=body,
    )


def _event(
    msg: IngressMessage,
    index: int,
    event_type: EventType,
    data: Any,
    *,
    count: int = 1,
    event_id: str | None = None,
    subject: str | None = None,
    event_time: str | None = None,
    schema: str | None = None,
    topic: str | None = None,
    source: str | None = None,
    correlation_id: str | None = None,
    dataschema: str | None = None,
    datacontenttype: str | None = None,
    cloud_event: dict[str, Any] | None = None,
) -> Result:
    """An event of either generation from what its wire form gave (None: the form has no such field);
    `cloud_event` the structured CloudEvent it came as, if it did."""
    if event_type in V2_EVENT_TYPES:
        return _v2_event(
            msg,
            index,
            count=count,
            event_type=event_type,
            data=data,
            event_id=event_id,
            subject=subject,
            event_time=event_time,
            dataschema=schema,
            topic=topic,
            source=source,
            correlation_id=correlation_id,
            cloud_schema=dataschema,
            datacontenttype=datacontenttype,
            cloud_event=cloud_event,
        )
    return _twin_event(
        msg,
        index,
        event_type=event_type,
        data=data,
        event_id=event_id,
        subject=subject,
        event_time=event_time,
        data_version=schema,
        topic=topic,
        source=source,
        correlation_id=correlation_id,
        dataschema=dataschema,
        datacontenttype=datacontenttype,
    )


# The camel-case spellings of the data fields `_field` reads, made once (each twin event asks for three).
_CAMEL = {name: name[0].lower() + name[1:] for name in ("Id", "TopologyObjectId", "EventTimestamp", "CorrelationId")}


def _field(data: dict[str, Any], name: str) -> Any:
    value = data.get(name)
    if value is None:
        value = data.get(_CAMEL.get(name) or name[0].lower() + name[1:])
    return value


def _twin_event(
    msg: IngressMessage,
    index: int,
    *,
    event_type: EventType,
    data: Any,
    event_id: str | None,
    subject: str | None,
    event_time: str | None,
    data_version: str | None,
    topic: str | None,
    source: str | None,
    correlation_id: str | None,
    dataschema: str | None,
    datacontenttype: str | None,
) -> Result:
    if not isinstance(data, dict):
        return Rejection(
            code="bad-data",
            reason=f"{event_type} event data must be a JSON object, got {type(data).__name__}",
            index=index,
        )
    key_field = "TopologyObjectId" if event_type is EventType.UDF_CUSTOM else "Id"
    key = _field(data, key_field)
    if key is None or key == "" or isinstance(key, (dict, list)):
        return Rejection(
            code="no-order-key",
            reason=f"{event_type} event has no data.{key_field} to order by",
            index=index,
        )
    if subject is None:
        # The old service's subject: the object type for topology operations, else the event type.
        if event_type is EventType.TOPOLOGY_OPERATION:
            subject = str(data.get("Type") or event_type)
        else:
            subject = EVENT_TYPE_TEXT[event_type]
    identity = message_id(msg, index)
    return Event(
        event_type=event_type,
        order_key=str(key),
        message_id=identity,
        ingress=msg,
        index=index,
        event_id=event_id or identity,
        subject=subject,
        data=data,
        event_time=timestamp(event_time, _text(_field(data, "EventTimestamp")), msg.enqueued_time),
        data_version=data_version or "1.0",
        topic=topic,
        source=source,
        correlation_id=correlation_id or _text(_field(data, "CorrelationId")),
        dataschema=dataschema,
        datacontenttype=datacontenttype,
    )


def _unnested(data: Any) -> tuple[Any, str | None, str | None]:
    """The data of a Digital Twins event published in the Event Grid schema, its dataschema and content type."""
    if isinstance(data, dict) and "data" in data and len(data) > 1 and data.keys() <= _NESTED_DATA_KEYS:
        content_type = _text(data.get("datacontenttype")) or _text(data.get("contenttype"))
        return data["data"], _text(data.get("dataschema")), content_type
    return data, None, None


def _twin_in_source(source: str | None) -> str | None:
    if not source:
        return None
    _, found, twin = source.partition(TWIN_PATH)
    return twin if found and twin else None


def _v2_event(
    msg: IngressMessage,
    index: int,
    *,
    count: int = 1,
    event_type: EventType,
    data: Any,
    event_id: str | None,
    subject: str | None,
    event_time: str | None,
    dataschema: str | None,
    topic: str | None,
    source: str | None,
    correlation_id: str | None,
    cloud_schema: str | None = None,
    datacontenttype: str | None = None,
    cloud_event: dict[str, Any] | None = None,
) -> Result:
    """A v2 event, ordered by the twin it is about; `data` is None for telemetry whose body went unparsed."""
    if event_type is EventType.TWIN_TELEMETRY:
        if count > 1:
            # Telemetry is forwarded as the message it came in, and this message carries other events too.
            return Rejection(
                code="telemetry-in-array",
                reason=f"{event_type} event {index} of a JSON array of {count} events: telemetry is forwarded "
                "as the message it came in, so it must come alone (Event Grid delivers one event per message)",
                index=index,
            )
        key = _twin_in_source(source) or subject
        if not key:
            return Rejection(
                code="no-order-key",
                reason=f"{event_type} event has no twin id to order by: its source ({_shown(source or 'none')}) "
                f"does not end in '{TWIN_PATH}<twin-id>' and it has no subject",
                index=index,
            )
        return Event(
            event_type=event_type,
            order_key=key,
            message_id=message_id(msg, index),
            ingress=msg,
            index=index,
            event_id=event_id or "",
            subject=subject or "",
            data=data,
            # As it came: made RFC 3339 only where a CloudEvent is built of it (`timestamp`), off this path.
            event_time=event_time or msg.enqueued_time or "",
            data_version=dataschema or "1.0",
            topic=topic,
            source=source,
            correlation_id=correlation_id,
            dataschema=cloud_schema,
            datacontenttype=datacontenttype,
            cloud_event=cloud_event,
        )

    if not isinstance(data, dict):
        return Rejection(
            code="bad-data",
            reason=f"{event_type} event data must be a JSON object, got {type(data).__name__}",
            index=index,
        )
    if event_type in _TWIN_TYPES:
        key = subject or _id(data.get("$dtId"))
        if not key:
            return Rejection(
                code="no-order-key",
                reason=f"{event_type} event has no twin id to order by: no subject and no data.$dtId",
                index=index,
            )
    else:
        twin, found, _ = (subject or "").partition(RELATIONSHIPS)
        key = (twin if found else None) or _id(data.get("$sourceId"))
        if not key:
            what = f"subject '{_shown(subject)}' has no '{RELATIONSHIPS}'" if subject else "no subject"
            return Rejection(
                code="no-order-key",
                reason=f"{event_type} event has no source twin to order by: {what} and no data.$sourceId",
                index=index,
            )
        if not subject:
            relationship = _id(data.get("$relationshipId"))
            subject = f"{key}{RELATIONSHIPS}{relationship}" if relationship else key
    identity = message_id(msg, index)
    return Event(
        event_type=event_type,
        order_key=key,
        message_id=identity,
        ingress=msg,
        index=index,
        event_id=event_id or identity,
        subject=subject or key,
        data=data,
        event_time=timestamp(event_time, msg.enqueued_time),
        data_version=dataschema or "1.0",
        topic=topic,
        source=source,
        correlation_id=correlation_id,
        dataschema=cloud_schema,
        datacontenttype=datacontenttype,
        # A structured CloudEvent's distributed-tracing extension (binary mode: its properties carry it).
        traceparent=_text(cloud_event.get("traceparent")) if cloud_event is not None else None,
        tracestate=_text(cloud_event.get("tracestate")) if cloud_event is not None else None,
    )


def _id(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def timestamp(*candidates: str | None) -> str:
    """The first candidate that is a time, as RFC 3339 with an offset; else now.

    Event Grid refuses an event whose time lacks an offset (and with it the whole request), and
    CloudEvents' Timestamp is RFC 3339, so every time the router emits carries one. A payload's time
    that is no time at all gives way to the next candidate (the enqueued time, then now) rather than
    losing the event; the payload's own fields (`EventTimestamp` in data) are forwarded untouched.
    """
    for text in candidates:
        if text:
            stamp = _rfc3339(text)
            if stamp is not None:
                return stamp
    return _now()


def _rfc3339(text: str) -> str | None:
    match = _DATE_TIME.fullmatch(text)
    try:
        parsed = datetime.fromisoformat(text)  # also what the pattern cannot see: month 13, hour 24
    except ValueError:
        return None
    if match is not None:
        # Kept as written (digits beyond microseconds too), the separator the one RFC 3339 requires.
        text = text if text[10] == "T" else f"{text[:10]}T{text[11:]}"
        return text if match["offset"] else text + "Z"
    # Other ISO 8601 forms (a date alone, `+0100`, the basic format): rewritten, naive ones as UTC.
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.isoformat().replace("+00:00", "Z")


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
