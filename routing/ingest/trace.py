"""W3C trace context an ingress message carries, so that one trace runs from the device or twin through
the router to the consumer.

Where it travels: an application property `traceparent` (and `tracestate`), as W3C Trace Context names
it; a binary-mode CloudEvent's distributed-tracing extension (`cloudEvents:traceparent` on Event Hubs
and Service Bus, as Digital Twins sets it; `ce-`/`ce_` in the HTTP and Kafka bindings); a structured
CloudEvent's `traceparent` attribute; and `Diagnostic-Id`, the property the Azure SDKs (and IoT Hub's
distributed tracing) stamp with a W3C `traceparent`. The first valid one wins, in that order. Pure
functions of the message; nothing here touches OpenTelemetry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from routing.model import Event, IngressMessage

# version-traceid-parentid-flags, lower-case hex; all-zero ids are invalid (W3C Trace Context, 3.2).
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
# Where each is looked for, in order: W3C names, then the CloudEvents bindings, then the Azure SDKs'.
_PARENT_NAMES = ("traceparent", "cloudEvents:traceparent", "ce-traceparent", "ce_traceparent", "Diagnostic-Id")
_STATE_NAMES = {
    "traceparent": "tracestate",
    "cloudEvents:traceparent": "cloudEvents:tracestate",
    "ce-traceparent": "ce-tracestate",
    "ce_traceparent": "ce_tracestate",
    "Diagnostic-Id": "tracestate",
}
# W3C caps tracestate at 32 list members of at most 256 characters each: a longer one is not passed on.
_MAX_TRACESTATE = 32 * 257


class TraceContext(NamedTuple):
    traceparent: str
    tracestate: str | None = None


def _valid(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    value = value.strip().lower()
    return value if _TRACEPARENT.match(value) and not value.startswith("ff") else None


def _state(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value.strip() if isinstance(value, str) and value.strip() and len(value) <= _MAX_TRACESTATE else None


def of_properties(properties: Mapping[str, Any]) -> TraceContext | None:
    """The trace context in a message's application properties, if a valid one is there."""
    if not properties:
        return None
    for name in _PARENT_NAMES:
        value = properties.get(name)
        if value is None:
            continue
        parent = _valid(value)
        if parent is not None:
            return TraceContext(parent, _state(properties.get(_STATE_NAMES[name])))
    return None


def of_message(message: IngressMessage) -> TraceContext | None:
    return of_properties(message.properties)


def of_event(event: Event) -> TraceContext | None:
    """The event's trace context: its message's, else the structured CloudEvent's it came as."""
    found = of_properties(event.ingress.properties)
    if found is not None:
        return found
    structured = event.cloud_event
    parent, state = (
        (structured.get("traceparent"), structured.get("tracestate"))
        if structured is not None
        else (event.traceparent, event.tracestate)
    )
    valid = _valid(parent)
    return TraceContext(valid, _state(state)) if valid is not None else None
