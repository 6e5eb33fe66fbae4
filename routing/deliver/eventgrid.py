"""The Event Grid sender: Event Grid schema or CloudEvents 1.0 (the envelope stage chose per endpoint),
published with the Event Grid publisher client, all of a batch's events in one request (more only
above Event Grid's 1 MB limit).

Event Grid keeps no order, across requests or within one; each event carries its `eventTime`. A key's
events still go out in order, in one request or in requests sent one after another.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

import orjson
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

# The publisher `azure.eventgrid.EventGridPublisherClient` uses for a topic (not a namespace): the public
# client builds it without passing on its keyword arguments, so a retry setting given to the public
# client is lost, and one given to `send` is also handed to each CloudEvent's model, which logs a warning
# per event ("retry_total is not a known attribute of class CloudEvent"). Built directly, it takes
# `retry_total` into its pipeline's RetryPolicy. Pinned with azure-eventgrid (constraints.txt).
from azure.eventgrid._legacy import EventGridPublisherClient

from routing.connections import resolve
from routing.deliver.senders import ClientSender, Prepared, Unsendable
from routing.model import Outgoing

# Event Grid refuses requests over 1 MB; the brackets and separators of the JSON array count too.
MAX_REQUEST_BYTES = 1024 * 1024
# What a request is filled to: room kept for what `serialized_size` cannot see (a float's exponent that
# Python writes a character longer than orjson did, `1e-07` for `1e-7`).
_FILL_BYTES = MAX_REQUEST_BYTES - 16 * 1024
# Statuses no retry will cure: bad request, not found, too large.
_PERMANENT_STATUSES = frozenset({400, 403, 404, 413})
_ASCII = bytes(range(128))
_CONTEXT_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data", "data_base64"}
)
_EXTENSION_NAME = re.compile(r"[a-z0-9]+")


def topic_endpoint(path: str) -> str:
    """`path` as a publish URL: a topic host (the old service's form), or a full URL."""
    url = path if "://" in path else f"https://{path}"
    return url if url.rstrip("/").endswith("/api/events") else url.rstrip("/") + "/api/events"


def serialized_size(body: bytes) -> int:
    """At most the bytes the publisher writes for the event whose compact JSON is `body`.

    It serialises with `json.dumps`: a space after each `:` and `,`, and non-ASCII characters escaped
    (`\\uXXXX`: at most 2 more bytes per UTF-8 byte). Counting every `:` and `,` (those in strings too)
    over-counts, which is the safe side.
    """
    size = len(body) + body.count(b":") + body.count(b",")
    if not body.isascii():
        size += 2 * len(body.translate(None, _ASCII))
    return size


def extension_problem(event: dict[str, Any]) -> str | None:
    """Why Event Grid would refuse this CloudEvent's extension attributes, or None.

    The router writes its own attributes right (enrichments are checked when the table loads); what
    v2 telemetry brings along from its producer (`cloudEvents:*` properties, a structured CloudEvent's
    fields) may not be: CloudEvents names are lower-case a-z and 0-9, and its types have no float,
    object or array.
    """
    for name, value in event.items():
        if name in _CONTEXT_ATTRIBUTES or value is None:
            continue
        if not _EXTENSION_NAME.fullmatch(name):
            return f"CloudEvents attribute name {name!r} is not lower-case letters a-z and digits 0-9"
        if not (isinstance(value, str | bool) or (isinstance(value, int) and -(2**31) <= value < 2**31)):
            kind = "an integer beyond 32 bits" if isinstance(value, int) else f"a {type(value).__name__}"
            return f"CloudEvents attribute {name!r} is {kind}, not a string, boolean or 32-bit integer"
    return None


class Request:
    """The events of one publish request and the bytes they will take."""

    __slots__ = ("events", "size")

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.size = 2  # []


class EventGridSender(ClientSender[EventGridPublisherClient]):
    def _new_client(self, setting: str) -> EventGridPublisherClient:
        connection = resolve(setting, "topicEndpointUri", self.env)
        if connection.secret:
            return EventGridPublisherClient(
                topic_endpoint(self.endpoint.path), AzureKeyCredential(connection.secret), **self._options()
            )
        assert connection.address is not None
        return EventGridPublisherClient(topic_endpoint(connection.address), connection.credential(), **self._options())

    def _options(self) -> dict[str, Any]:
        return {
            "retry_total": 0,  # the sender retries itself, see ClientSender
            # azure-core's transport waits 300 s for a response by default; each try gets the sender's
            # timeout for connecting and for each read instead (ConnectionConfiguration, every request).
            "connection_timeout": self.retry.timeout,
            "read_timeout": self.retry.timeout,
        }

    def _open(self, client: EventGridPublisherClient, route: Hashable) -> Request:
        return Request()

    def _add(self, request: Request, message: Outgoing) -> bool:
        size = request.size + serialized_size(message.body) + (2 if request.events else 0)  # ", "
        if size > _FILL_BYTES:
            return False
        event = orjson.loads(message.body)
        if "specversion" in event and (problem := extension_problem(event)):
            # Event Grid would refuse the whole request for it (400): this event fails alone.
            raise Unsendable(f"event cannot be published to Event Grid: {problem}")
        request.events.append(event)
        request.size = size
        return True

    def _too_large(self, message: Outgoing, request: Request) -> str:
        return f"event of {len(message.body)} bytes is larger than Event Grid's 1 MB limit"

    def _transmit(self, client: EventGridPublisherClient, prepared: Prepared, timeout: float) -> None:
        client.send(prepared.payload.events)

    def _is_refused(self, error: Exception) -> bool:
        return isinstance(error, ClientAuthenticationError)

    def _describe(self, error: Exception) -> tuple[str, bool]:
        status = getattr(error, "status_code", None)
        text = f"{type(error).__name__}: HTTP {status}" if status else f"{type(error).__name__}: {error}"
        # The service says what it refused (a 400 names the event and the property); keep it in the letter.
        said = getattr(getattr(error, "error", None), "message", None)
        if status and said:
            text += f" ({said})"
        return text, isinstance(error, HttpResponseError) and status in _PERMANENT_STATUSES
