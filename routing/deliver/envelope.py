"""Envelopes: the bytes and properties each endpoint receives for an event.

Raw events (telemetry, IoT Hub's other sources) are forwarded unprocessed (body bytes and application
properties as they came); towards Event Grid, which has no application properties, v2 telemetry is
the CloudEvent its `cloudEvents:*` properties describe, its body the data. Digital Twins events are
wrapped in the Event Grid schema, or CloudEvents 1.0 where the endpoint asks for it.
Pure functions; the pipeline caches one body per event and format, so an event routed to many
endpoints is serialised once. What cannot be serialised (JSON nested deeper than orjson writes, which
classification already rejects for twin events but not for telemetry an enrichment reads into) raises
`UnserialisableError` with why, never a bare encoder error: the pipeline dead-letters the event alone.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from routing.errors import RoutingError
from routing.ingest import trace
from routing.ingest.classify import timestamp
from routing.model import (
    EVENT_TYPE_TEXT,
    RAW_TYPES,
    EndpointType,
    EnvelopeFormat,
    Event,
    EventType,
    Outgoing,
    shaped_message_id,
)
from routing.routes.filters import MISSING, EventBody
from routing.routes.table import Endpoint
from routing.routes.templates import as_extension, enrich

JSON = "application/json"
CLOUD_EVENT_JSON = "application/cloudevents+json; charset=utf-8"
# A CloudEvent needs a source; an event that arrived without one is named after its ingress hub.
CLOUD_EVENT_SOURCE_PREFIX = "/routing/"
# How deep orjson serialises arrays and objects (it parses 1,024).
SERIALISED_DEPTH = 254
# Where a binary-mode CloudEvent's attributes travel as application properties: `cloudEvents:` in the AMQP
# binding (what Digital Twins sets on Event Hubs and Service Bus), `ce-` and `ce_` in the HTTP and Kafka
# ones; classification reads the same three.
CLOUD_EVENT_PREFIXES = ("cloudEvents:", "ce-", "ce_")
# The attributes the event itself gives (classification read them from the same properties).
_FROM_EVENT = frozenset({"specversion", "id", "source", "type", "subject", "time", "dataschema"})


class UnserialisableError(RoutingError):
    """An event whose message for an endpoint cannot be written as JSON: the event's fault, not a bug."""

    def __init__(self, event: Event, endpoint: str | None, error: Exception) -> None:
        why = str(error)
        if "Recursion limit" in why:
            why = f"it nests arrays and objects deeper than the {SERIALISED_DEPTH} levels orjson writes"
        where = f" for '{endpoint}'" if endpoint else ""
        super().__init__(f"{event.event_type} event {event.index} cannot be serialised as JSON{where}: {why}")


def event_grid_envelope(event: Event, *, topic: bool = True) -> dict[str, Any]:
    """The event in the Event Grid schema; `topic` (when the event had one) only where asked for.

    Event Grid refuses (400) an event whose `topic` is present and is not exactly the ARM id of the
    topic it is published to, and stamps its own when the field is absent: an event that came in
    through one topic must not carry that topic's id to another. Event Hubs and Service Bus consumers
    get the topic the event came from, when it had one.
    """
    envelope: dict[str, Any] = {
        "id": event.event_id,
        "subject": event.subject,
        "data": event.data,
        "eventType": EVENT_TYPE_TEXT[event.event_type],
        "eventTime": event.event_time,
        "dataVersion": event.data_version,
        "metadataVersion": "1",
    }
    if topic and event.topic is not None:
        envelope["topic"] = event.topic
    return envelope


def cloud_event_envelope(event: Event) -> dict[str, Any]:
    return _cloud_event(event, trace.of_event(event))


def _cloud_event(event: Event, context: trace.TraceContext | None) -> dict[str, Any]:
    envelope = {
        "specversion": "1.0",
        "id": event.event_id,
        "source": event.source or event.topic or CLOUD_EVENT_SOURCE_PREFIX + event.ingress.source,
        "type": EVENT_TYPE_TEXT[event.event_type],
        "subject": event.subject,
        "time": event.event_time,
        "datacontenttype": JSON,
        "data": event.data,
    }
    _add_trace(envelope, context)
    return envelope


def _add_trace(target: dict[str, Any], context: trace.TraceContext | None) -> None:
    """The trace context as W3C names it: CloudEvents' distributed-tracing extension attributes, or
    application properties (Event Hubs and Service Bus)."""
    if context is not None:
        target["traceparent"] = context.traceparent
        if context.tracestate:
            target["tracestate"] = context.tracestate


def telemetry_cloud_event(event: Event) -> dict[str, Any]:
    """v2 telemetry as the CloudEvent it came as, for Event Grid.

    A structured CloudEvent goes as it came (its `time` given an offset, as everywhere). In binary mode
    the attributes are its `cloudEvents:*` properties (extensions such as `traceparent` too, each as a
    CloudEvents type: `as_extension`) and its data the body: the JSON value when the content type is
    JSON (or absent: Digital Twins' telemetry is `application/json`) and the body parses, else the bytes
    as they came, in `data_base64`. Event Grid re-serialises JSON data, so JSON keeps its value, not its
    spacing. An Event Grid schema event gives its fields and data.
    """
    ingress = event.ingress
    if event.cloud_event is not None:
        structured = dict(event.cloud_event)
        if structured.get("time"):
            structured["time"] = timestamp(str(structured["time"]), ingress.enqueued_time)
        return structured
    cloud_event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event.event_id or event.message_id,
        "source": event.source or event.topic or CLOUD_EVENT_SOURCE_PREFIX + ingress.source,
        "type": EVENT_TYPE_TEXT[event.event_type],
    }
    if event.subject:
        cloud_event["subject"] = event.subject
    if event.event_time:
        # RFC 3339 with an offset, as Event Grid requires (a time that is none gives way to the enqueued time).
        cloud_event["time"] = timestamp(event.event_time, ingress.enqueued_time)
    if event.data_version and event.data_version != "1.0":  # classification's default when there is none
        cloud_event["dataschema"] = event.data_version
    content_type = ingress.system_properties.get("content-type")
    for name, value in ingress.properties.items():
        for prefix in CLOUD_EVENT_PREFIXES:
            if name.startswith(prefix):
                attribute = name[len(prefix) :]
                if attribute == "datacontenttype":
                    content_type = content_type or value
                elif attribute not in _FROM_EVENT and (converted := as_extension(value)) is not MISSING:
                    cloud_event[attribute] = converted
                break
    if content_type:
        cloud_event["datacontenttype"] = str(content_type)
    if "traceparent" not in cloud_event:  # a plain `traceparent` or `Diagnostic-Id` property
        _add_trace(cloud_event, trace.of_event(event))
    if event.data is not None:  # it came inside a JSON envelope, its data already parsed
        cloud_event["data"] = event.data
        return cloud_event
    media = str(content_type or "").split(";", 1)[0].strip().lower()
    if not media or media == "application/json" or media.endswith("+json"):
        try:
            cloud_event["data"] = orjson.loads(ingress.body)
        except orjson.JSONDecodeError:
            pass
        else:
            return cloud_event
    cloud_event["data_base64"] = base64.b64encode(ingress.body).decode("ascii")
    return cloud_event


def envelope_body(event: Event, envelope_format: EnvelopeFormat) -> bytes:
    return _envelope_body(event, envelope_format, lambda: trace.of_event(event))


def _envelope_body(
    event: Event, envelope_format: EnvelopeFormat, context: Callable[[], trace.TraceContext | None]
) -> bytes:
    """The envelope's bytes; `context` gives the trace context, asked only for a CloudEvent."""
    try:
        if envelope_format is EnvelopeFormat.CLOUD_EVENTS:
            return orjson.dumps(_cloud_event(event, context()))
        return orjson.dumps(event_grid_envelope(event))
    except orjson.JSONEncodeError as exc:
        raise UnserialisableError(event, None, exc) from exc


def twin_properties(event: Event) -> dict[str, Any]:
    """What Event Hubs and Service Bus consumers can filter on without parsing the body, and the trace
    context the event came with (W3C `traceparent`/`tracestate`, and `Diagnostic-Id`, which the Azure
    SDKs' consumers read), so the consumer's work joins the device's or twin's trace."""
    return _twin_properties(event, trace.of_event(event))


def _twin_properties(event: Event, context: trace.TraceContext | None) -> dict[str, Any]:
    properties: dict[str, Any] = {"EventType": EVENT_TYPE_TEXT[event.event_type], "Subject": event.subject}
    if event.correlation_id:
        properties["CorrelationId"] = event.correlation_id
    if context is not None:
        _add_trace(properties, context)
        properties["Diagnostic-Id"] = context.traceparent
    return properties


_UNSET: Any = object()


class _Shared:
    """What all of one event's endpoints get alike, each made on first use and once per event: its
    envelope per format, the properties Event Hubs and Service Bus carry (before enrichments), its trace
    context. The properties are one dict for all of them: the senders copy what they give the SDKs."""

    __slots__ = ("_context", "_properties", "bodies", "event")

    def __init__(self, event: Event, bodies: dict[EnvelopeFormat, bytes]) -> None:
        self.event = event
        self.bodies = bodies
        self._context: Any = _UNSET
        self._properties: dict[str, Any] | None = None

    def context(self) -> trace.TraceContext | None:
        if self._context is _UNSET:
            self._context = trace.of_event(self.event)
        return self._context  # type: ignore[no-any-return]

    def body(self, envelope_format: EnvelopeFormat) -> bytes:
        body = self.bodies.get(envelope_format)
        if body is None:
            body = self.bodies[envelope_format] = _envelope_body(self.event, envelope_format, self.context)
        return body

    def properties(self) -> dict[str, Any]:
        if self._properties is None:
            self._properties = _twin_properties(self.event, self.context())
        return self._properties


def build(event: Event, endpoint: Endpoint, body: bytes | None = None, event_body: EventBody | None = None) -> Outgoing:
    """The message `endpoint` gets for `event`.

    `body` is the cached envelope for the endpoint's format, as `envelope_body` made it (unused when the
    endpoint adds CloudEvents extensions); `event_body` the event's lazily parsed body, shared by all of
    an event's endpoints.
    Raises `UnserialisableError` for an event that cannot be written as JSON.
    """
    return _built(event, endpoint, _Shared(event, {} if body is None else {endpoint.format: body}), event_body)


def build_all(event: Event, endpoints: Sequence[Endpoint], event_body: EventBody | None = None) -> list[Outgoing]:
    """The message each of `endpoints` gets for `event`, in their order, what they get alike made once
    (`_Shared`): an event routed to many endpoints is serialised once per envelope format, its properties
    built once."""
    shared = _Shared(event, {})
    built = []
    for endpoint in endpoints:  # `_built` of each, its `try` once for them all
        try:
            built.append(_build(event, endpoint, shared, event_body))
        except orjson.JSONEncodeError as exc:
            raise UnserialisableError(event, endpoint.name, exc) from exc
    return built


def forward_all(event: Event, endpoints: Sequence[Endpoint]) -> list[Outgoing]:
    """The message each of `endpoints` gets for a raw `event` when each gets it as it came (the route
    table's `forwarded`: no order key template, no enrichment, not v2 telemetry for Event Grid): what
    `build_all` makes for them, without its steps for the endpoints that reshape an event."""
    content_type = _content_type(event)
    order_key = event.order_key
    return [_forwarded(event, endpoint, content_type, order_key) for endpoint in endpoints]


def _content_type(event: Event) -> str | None:
    content_type = event.ingress.system_properties.get("content-type")
    return str(content_type) if content_type is not None else None


def _forwarded(event: Event, endpoint: Endpoint, content_type: str | None, order_key: str) -> Outgoing:
    ingress = event.ingress
    return Outgoing(
        endpoint=endpoint.name,
        event=event,
        body=ingress.body,
        content_type=content_type,
        properties=ingress.properties,
        order_key=order_key,
        message_id=shaped_message_id(event.message_id, endpoint.id_seed),
        body_json=ingress.body_json,
    )


def _built(event: Event, endpoint: Endpoint, shared: _Shared, event_body: EventBody | None) -> Outgoing:
    try:
        return _build(event, endpoint, shared, event_body)
    except orjson.JSONEncodeError as exc:  # an enrichment's value, or an envelope (a try costs nothing)
        raise UnserialisableError(event, endpoint.name, exc) from exc


def _build(event: Event, endpoint: Endpoint, shared: _Shared, event_body: EventBody | None) -> Outgoing:
    order_key = event.order_key
    if endpoint.order_key is not None:
        if event_body is None:
            event_body = EventBody(event)
        # A template the event cannot fill keeps the event's own key: the message is still ordered.
        order_key = endpoint.order_key.text(event, event_body) or order_key
    event_type = event.event_type
    if event_type in RAW_TYPES:
        if event_type is EventType.TWIN_TELEMETRY and endpoint.type is EndpointType.EVENT_GRID:
            cloud_event = telemetry_cloud_event(event)
            if endpoint.enrichments:
                cloud_event.update(
                    enrich({}, endpoint.enrichments, event, event_body or EventBody(event), convert=as_extension)
                )
            return Outgoing(
                endpoint=endpoint.name,
                event=event,
                body=orjson.dumps(cloud_event),
                content_type=CLOUD_EVENT_JSON,
                properties={},
                order_key=order_key,
                message_id=shaped_message_id(event.message_id, endpoint.id_seed),
                body_json=True,
            )
        if not endpoint.enrichments:
            return _forwarded(event, endpoint, _content_type(event), order_key)
        ingress = event.ingress
        return Outgoing(
            endpoint=endpoint.name,
            event=event,
            body=ingress.body,
            content_type=_content_type(event),
            properties=enrich(ingress.properties, endpoint.enrichments, event, event_body or EventBody(event)),
            order_key=order_key,
            message_id=shaped_message_id(event.message_id, endpoint.id_seed),
            body_json=ingress.body_json,
        )
    body = None
    if endpoint.type is EndpointType.EVENT_GRID:
        properties = {}
        if endpoint.enrichments:
            # Event Grid carries no application properties: CloudEvents extension attributes instead.
            extensions = enrich({}, endpoint.enrichments, event, event_body or EventBody(event), convert=as_extension)
            body = orjson.dumps({**_cloud_event(event, shared.context()), **extensions})
        elif endpoint.format is EnvelopeFormat.EVENT_GRID and event.topic is not None:
            body = orjson.dumps(event_grid_envelope(event, topic=False))  # the service stamps its own
    elif endpoint.enrichments:
        properties = enrich(shared.properties(), endpoint.enrichments, event, event_body or EventBody(event))
    else:
        properties = shared.properties()
    envelope_format, seed = endpoint.format, endpoint.id_seed
    return Outgoing(
        endpoint=endpoint.name,
        event=event,
        body=shared.body(envelope_format) if body is None else body,
        content_type=CLOUD_EVENT_JSON if envelope_format is EnvelopeFormat.CLOUD_EVENTS else JSON,
        properties=properties,
        order_key=order_key,
        message_id=event.message_id if seed is None else shaped_message_id(event.message_id, seed),
        body_json=True,  # an envelope: `orjson.dumps` made it (`_envelope_body`, above)
    )
