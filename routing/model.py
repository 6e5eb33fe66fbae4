"""The values that flow through the router: event and endpoint types, ingress messages, events,
outgoing messages and dead letters.

Plain immutable values; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec


class EventType(StrEnum):
    """The event types: the five of the first Digital Twins service, the seven of today's (v2), each
    spelled as its service spells it on the wire (`microsoft.iot.telemetry` is lower-case there), and
    IoT Hub's other routing sources, named as its routes name them (`RoutingSource` of the IoT Hub
    resource API; the first, `DeviceMessages`, is the telemetry the first service also calls so)."""

    DEVICE_MESSAGES = "DeviceMessages"
    TOPOLOGY_OPERATION = "TopologyOperation"
    SPACE_CHANGE = "SpaceChange"
    SENSOR_CHANGE = "SensorChange"
    UDF_CUSTOM = "UdfCustom"
    TWIN_CREATE = "Microsoft.DigitalTwins.Twin.Create"
    TWIN_UPDATE = "Microsoft.DigitalTwins.Twin.Update"
    TWIN_DELETE = "Microsoft.DigitalTwins.Twin.Delete"
    RELATIONSHIP_CREATE = "Microsoft.DigitalTwins.Relationship.Create"
    RELATIONSHIP_UPDATE = "Microsoft.DigitalTwins.Relationship.Update"
    RELATIONSHIP_DELETE = "Microsoft.DigitalTwins.Relationship.Delete"
    TWIN_TELEMETRY = "microsoft.iot.telemetry"
    TWIN_CHANGE_EVENTS = "TwinChangeEvents"
    DEVICE_LIFECYCLE_EVENTS = "DeviceLifecycleEvents"
    DEVICE_CONNECTION_STATE_EVENTS = "DeviceConnectionStateEvents"
    DIGITAL_TWIN_CHANGE_EVENTS = "DigitalTwinChangeEvents"
    DEVICE_JOB_LIFECYCLE_EVENTS = "DeviceJobLifecycleEvents"

    # Hashed as the text it equals (Enum hashes its name in Python, per look-up): the types are keys and
    # set members on every event's path, and a member and its value are then one key, as they are equal.
    __hash__ = str.__hash__

    @classmethod
    def parse(cls, name: str) -> EventType | None:
        """The type a user or a producer means by `name`: case-insensitive, `DeviceMessage` too, and the
        v2 names without their `Microsoft.DigitalTwins.` prefix (`Twin.Update`), but never a bare `Update`."""
        return _EVENT_TYPE_NAMES.get(name.strip().lower())


_V2_PREFIX = "microsoft.digitaltwins."
_EVENT_TYPE_NAMES: dict[str, EventType] = {t.value.lower(): t for t in EventType}
_EVENT_TYPE_NAMES["devicemessage"] = EventType.DEVICE_MESSAGES
_EVENT_TYPE_NAMES.update({name.removeprefix(_V2_PREFIX): t for name, t in list(_EVENT_TYPE_NAMES.items())})
# Each type's text, looked up: an enum's `.value` is a Python-level property, and every envelope, record
# and classic subject asks for it.
EVENT_TYPE_TEXT: dict[EventType, str] = {t: t.value for t in EventType}

# Today's service (Azure Digital Twins v2): CloudEvents about twins, ordered by twin id.
V2_EVENT_TYPES = frozenset({
    EventType.TWIN_CREATE,
    EventType.TWIN_UPDATE,
    EventType.TWIN_DELETE,
    EventType.RELATIONSHIP_CREATE,
    EventType.RELATIONSHIP_UPDATE,
    EventType.RELATIONSHIP_DELETE,
    EventType.TWIN_TELEMETRY,
})  # fmt: skip

# IoT Hub's routing sources other than telemetry. IoT Hub marks each message with the source in the
# system property `iothub-message-source`, spelled as the routing name with a lower-case first letter
# (`twinChangeEvents`; docs "IoT Hub non-telemetry event schemas"): looked up case-insensitively.
IOT_HUB_SOURCE_TYPES = frozenset({
    EventType.TWIN_CHANGE_EVENTS,
    EventType.DEVICE_LIFECYCLE_EVENTS,
    EventType.DEVICE_CONNECTION_STATE_EVENTS,
    EventType.DIGITAL_TWIN_CHANGE_EVENTS,
    EventType.DEVICE_JOB_LIFECYCLE_EVENTS,
})  # fmt: skip
IOT_HUB_SOURCES: dict[str, EventType] = {t.value.lower(): t for t in IOT_HUB_SOURCE_TYPES}

# For messages that list the known types, grouped: seventeen full names in a row are hard to read.
KNOWN_EVENT_TYPES = (
    "DeviceMessages, TopologyOperation, SpaceChange, SensorChange, UdfCustom; or today's "
    "Microsoft.DigitalTwins.Twin.Create|Update|Delete, Microsoft.DigitalTwins.Relationship.Create|Update|Delete, "
    "microsoft.iot.telemetry; or IoT Hub's TwinChangeEvents, DeviceLifecycleEvents, DeviceConnectionStateEvents, "
    "DigitalTwinChangeEvents, DeviceJobLifecycleEvents"
)

# Telemetry (the first service's DeviceMessages and today's microsoft.iot.telemetry) and IoT Hub's other
# sources are raw: forwarded as they came (bytes and properties), never wrapped. The rest are Digital
# Twins events, wrapped in an envelope per endpoint.
TELEMETRY_TYPES = frozenset({EventType.DEVICE_MESSAGES, EventType.TWIN_TELEMETRY})
RAW_TYPES = TELEMETRY_TYPES | IOT_HUB_SOURCE_TYPES
TWIN_EVENT_TYPES = frozenset(EventType) - RAW_TYPES
# What Digital Twins itself emits (both generations, telemetry included): the events a Digital Twins
# route filter describes as CloudEvents. The rest come from IoT Hub, where IoT Hub's routing queries apply.
DIGITAL_TWINS_EVENT_TYPES = V2_EVENT_TYPES | {
    EventType.TOPOLOGY_OPERATION,
    EventType.SPACE_CHANGE,
    EventType.SENSOR_CHANGE,
    EventType.UDF_CUSTOM,
}


class EndpointType(StrEnum):
    EVENT_HUB = "EventHub"
    SERVICE_BUS = "ServiceBus"
    EVENT_GRID = "EventGrid"
    # IoT Hub's storage container endpoint: a Blob container, one blob per batch per ingress partition.
    STORAGE = "Storage"

    __hash__ = str.__hash__  # as EventType's

    @classmethod
    def parse(cls, name: str) -> EndpointType | None:
        return _ENDPOINT_TYPE_NAMES.get(name.strip().lower())

    @property
    def accepts(self) -> frozenset[EventType]:
        """What each endpoint kind may take, as the service an event comes from routes it:

        - Event Hubs and Storage (the cold path, as IoT Hub's storage endpoint): everything.
        - Service Bus: all but the first service's DeviceMessages, which it forwarded to Event Hubs only;
          v2 telemetry as Digital Twins routes it there, IoT Hub's sources as IoT Hub routes them to
          Service Bus queues and topics.
        - Event Grid: Digital Twins events and v2 telemetry (as a CloudEvent), as Digital Twins routes
          them. Not IoT Hub's sources: IoT Hub routes none to Event Grid (its Event Grid integration
          publishes events of its own, `Microsoft.Devices.*`, in shapes of its own), and Event Grid has no
          application properties to carry theirs unprocessed.
        """
        return _ACCEPTS[self]


_ENDPOINT_TYPE_NAMES = {t.value.lower(): t for t in EndpointType}
_ACCEPTS = {
    EndpointType.EVENT_HUB: frozenset(EventType),
    EndpointType.SERVICE_BUS: frozenset(EventType) - {EventType.DEVICE_MESSAGES},
    EndpointType.EVENT_GRID: TWIN_EVENT_TYPES | {EventType.TWIN_TELEMETRY},
    EndpointType.STORAGE: frozenset(EventType),
}
# For messages that list the endpoint types.
KNOWN_ENDPOINT_TYPES = "EventHub, ServiceBus, EventGrid or Storage"


class EnvelopeFormat(StrEnum):
    """How a Digital Twins event is wrapped for an endpoint (telemetry is never wrapped)."""

    EVENT_GRID = "EventGridSchema"
    CLOUD_EVENTS = "CloudEventSchemaV1_0"

    __hash__ = str.__hash__  # as EventType's

    @classmethod
    def parse(cls, name: str) -> EnvelopeFormat | None:
        return _FORMAT_NAMES.get(name.strip().lower())


_FORMAT_NAMES = {
    "eventgridschema": EnvelopeFormat.EVENT_GRID,
    "eventgrid": EnvelopeFormat.EVENT_GRID,
    "cloudeventschemav1_0": EnvelopeFormat.CLOUD_EVENTS,
    "cloudevents": EnvelopeFormat.CLOUD_EVENTS,
    "cloudevent": EnvelopeFormat.CLOUD_EVENTS,
}


# The values made per message (`IngressMessage`, `Event`, `Rejection`, `Outgoing`; `KeyGroup` in senders)
# are `gc=False`: not tracked by the cycle collector. A batch keeps thousands of them alive until it is
# sent, and tracked they set off its full passes over the whole heap (a 1,000-endpoint table cost ~2x
# per message sent for it). They hold plain values and the dicts they are given, which never refer back
# to them, so no cycle can pass through one (msgspec: a cycle through `gc=False` structs is never freed).
class IngressMessage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One message as it came off an ingress hub (or a line of a local events file).

    `source` names the ingress (the hub) so that ids stay unique across hubs whose partitions and
    sequence numbers overlap.
    """

    body: bytes
    properties: Mapping[str, Any]
    system_properties: Mapping[str, Any]
    source: str
    partition: str | None = None
    sequence_number: int | None = None
    offset: str | None = None
    enqueued_time: str | None = None
    # True when `body` is JSON as `orjson.dumps` writes it (a local events line's `body`, which the runner
    # wrote out so): the messages that carry it as it came say so too (`Outgoing.body_json`).
    body_json: bool = False


# A fixed namespace: the same ingress position always hashes to the same message id.
_ID_NAMESPACE = uuid.UUID("6f1d3c52-5a8e-4b8e-9d55-3a1f0c7e2b90")


# uuid5 is sha1(namespace + name) with version and variant bits set; hashing the namespace once and
# formatting by hand gives the same ids at a fifth of uuid.uuid5's cost, on every message.
_NAMESPACE_SHA1 = hashlib.sha1(_ID_NAMESPACE.bytes, usedforsecurity=False)


def message_id(ingress: IngressMessage, index: int) -> str:
    """The deterministic id of event `index` of an ingress message (replays keep their ids): a UUID5."""
    seed = f"{ingress.source}|{ingress.partition}|{ingress.sequence_number}|{index}"
    if ingress.partition is None:
        # Sequence numbers repeat across partitions; the enqueued time tells them apart.
        seed += f"|{ingress.offset}|{ingress.enqueued_time}"
    digest = _NAMESPACE_SHA1.copy()
    digest.update(seed.encode())
    return _uuid5_text(digest.hexdigest())


def _uuid5_text(h: str) -> str:
    # The version nibble is 5; the variant's top two bits are 10 (RFC 4122), looked up per hex digit.
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_VARIANT = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}

# The namespace of the ids of an event's other shapes (see `shape_seed`).
_SHAPE_NAMESPACE = uuid.UUID("0b7a4f2e-93c1-4d6a-8e25-c4f1a9d3e760")


def shape_seed(
    envelope_format: EnvelopeFormat, order_key: str | None, enrichments: Sequence[tuple[str, Any]]
) -> bytes | None:
    """What an endpoint's message ids are derived from, computed once per endpoint: None for the default
    shape (Event Grid schema, the event's own order key, nothing added), whose ids are the event's own.

    Service Bus duplicate detection compares MessageId only (+ PartitionKey on partitioned entities), and
    takes a repeat as sent, then drops it: two shapes of one event sent to one entity need two ids, each
    the same on every redelivery and replay. The shape is its canonical text (format, the order key
    template and the enrichments as written, enrichments sorted by name, as `Endpoint.destination`
    compares them); JSON escapes newlines, so the newline after it cannot be part of it.
    """
    if envelope_format is EnvelopeFormat.EVENT_GRID and order_key is None and not enrichments:
        return None
    spec = [envelope_format.value, order_key, sorted(([name, value] for name, value in enrichments), key=_name)]
    text = json.dumps(spec, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=repr)
    return _SHAPE_NAMESPACE.bytes + text.encode() + b"\n"


def _name(pair: list[Any]) -> str:
    return str(pair[0])


def shaped_message_id(event_message_id: str, seed: bytes | None) -> str:
    """The id of an event in an endpoint's shape: `uuid5(shape namespace, shape text + "\\n" + event id)`,
    or the event's own id for the default shape."""
    if seed is None:
        return event_message_id
    return _uuid5_text(hashlib.sha1(seed + event_message_id.encode(), usedforsecurity=False).hexdigest())


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A classified event, ready to be matched against routes.

    Raw events (telemetry, IoT Hub's other sources) carry only the type, key and ingress (v2 telemetry
    its CloudEvents attributes too); Digital Twins events also carry the fields of their Event Grid envelope.
    """

    event_type: EventType
    order_key: str
    message_id: str
    ingress: IngressMessage
    index: int = 0
    event_id: str = ""
    subject: str = ""
    data: Any = None
    event_time: str = ""
    data_version: str = "1.0"
    topic: str | None = None
    source: str | None = None
    correlation_id: str | None = None
    # The CloudEvents `dataschema` and `datacontenttype` the event came with (None: it had none).
    dataschema: str | None = None
    datacontenttype: str | None = None
    # v2 telemetry that came as a structured CloudEvent: that CloudEvent, which Event Grid gets as it came.
    cloud_event: Mapping[str, Any] | None = None
    # A structured CloudEvent's W3C trace context, as it came (routing/ingest/trace.py validates it).
    traceparent: str | None = None
    tracestate: str | None = None


def opening_brackets(text: bytes | str) -> int:
    """How many `[` and `{` `text` holds: JSON in it cannot nest deeper than that (brackets inside strings
    count too), so a count under a depth limit spares walking or re-serialising the value to check it."""
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{")
    return text.count("[") + text.count("{")


# A rejection or dead letter standing for many events of one message lists this many of their positions
# (and counts them all): what a person needs to find them, at a size that does not grow with the message.
POSITIONS_LISTED = 100


class Rejection(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Why (part of) an ingress message could not be classified. `code` groups reasons in reports.

    The rejected events of one message come as one rejection (the junk of an Event Grid array is one
    dead letter, not one per element, each with the whole body): `index` is the first one's position,
    `count` how many there are, `positions` the first `POSITIONS_LISTED` of their positions (empty for
    a rejection of one event, which is at `index`).
    """

    code: str
    reason: str
    index: int = 0
    count: int = 1
    positions: tuple[int, ...] = ()


class Outgoing(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A message built for one endpoint: exactly what a sender puts on the wire."""

    endpoint: str
    event: Event
    body: bytes
    content_type: str | None
    properties: Mapping[str, Any]
    # The event's own key (device or twin id) unless the endpoint has an order key template.
    order_key: str
    # The event's id in this endpoint's shape (`shaped_message_id`): what Service Bus deduplicates on.
    message_id: str
    # True when `body` is what `orjson.dumps` wrote (an envelope, or a raw event's body the runner wrote
    # from a line's JSON: `IngressMessage.body_json`): reading it back and writing it again gives the same
    # bytes, so the local runner's output records take it as it is.
    # A copy with another body must say False again (`msgspec.structs.replace(..., body_json=False)`).
    body_json: bool = False

    @property
    def event_type(self) -> EventType:
        return self.event.event_type


@dataclass(frozen=True, slots=True)
class Attempt:
    """One failed try at delivering a message: when, and what the endpoint said."""

    time: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """An ingress message, or one event of it, that could not be routed or delivered, and why."""

    code: str
    reason: str
    ingress: IngressMessage | None
    index: int = 0
    endpoint: str | None = None
    # The raw input, for a line of an events file that could not even be read as a message.
    raw_line: str | None = None
    # The message that could not be delivered, for delivery failures, and every try at it.
    message: Outgoing | None = None
    attempts: tuple[Attempt, ...] = ()
    # A letter for several rejected events of one message (`Rejection`): how many, and the first
    # `POSITIONS_LISTED` of their positions; `index` is the first. Empty for a letter of one event.
    count: int = 1
    positions: tuple[int, ...] = ()

    @classmethod
    def of_message(cls, message: Outgoing, *, code: str, reason: str, attempts: Sequence[Attempt] = ()) -> DeadLetter:
        """A letter for a message built for an endpoint (a delivery failure, a parked or expired message)."""
        return cls(
            code=code,
            reason=reason,
            ingress=message.event.ingress,
            index=message.event.index,
            endpoint=message.endpoint,
            message=message,
            attempts=tuple(attempts),
        )
