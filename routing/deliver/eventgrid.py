"""The Event Grid sender: Event Grid schema or CloudEvents 1.0 (the envelope stage chose per endpoint),
posted to the topic as one JSON array per request (more requests only above Event Grid's 1 MB limit).

Each message's body is already its event's compact JSON, so a request is those bytes joined, posted
through the Event Grid publisher client's own azure-core pipeline (its credential, retry, user agent and
tracing policies) as the client's `send` would post them, without `send`'s per-event model serialising.

Event Grid keeps no order, across requests or within one; each event carries its `eventTime`. A key's
events still go out in order, in one request or in requests sent one after another.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

import orjson
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    map_error,
)
from azure.core.rest import HttpRequest

# The publisher `azure.eventgrid.EventGridPublisherClient` uses for a topic (not a namespace): the public
# client builds it without passing on its keyword arguments, so a retry setting given to the public
# client is lost. Built directly, it takes `retry_total` and the timeouts into its pipeline. What is
# used of it: its constructor (which picks the credential policy: `aeg-sas-key`, `aeg-sas-token`, or a
# Bearer token for https://eventgrid.azure.net/.default) and, in `Publisher.post`, its pipeline, as
# `_client.send_request` (public on the generated client, behind the wrapper's private `_client`), not
# `send`. An upgrade that moves `_legacy` or renames `_client` breaks every send at once (an ImportError
# here, an AttributeError in `post`) and the sender's tests with it; pinned in constraints.txt.
from azure.eventgrid._legacy import EventGridPublisherClient

from routing.connections import resolve
from routing.deliver.envelope import CLOUD_EVENT_JSON
from routing.deliver.senders import ClientSender, Prepared, Unsendable
from routing.model import EventType, Outgoing

# Event Grid refuses requests over 1 MB; the brackets and commas of the JSON array count too.
MAX_REQUEST_BYTES = 1024 * 1024
# The api-version `send` asks for (the SDK's default), pinned here so an upgrade cannot change it unseen.
API_VERSION = "2018-01-01"
# The content types `send` gives a list of Event Grid schema events and a list of CloudEvents.
EVENT_GRID_BATCH = "application/json; charset=utf-8"
CLOUD_EVENTS_BATCH = "application/cloudevents-batch+json; charset=utf-8"
# How `send` maps an answer other than 200 (anything else is an HttpResponseError).
_ERROR_MAP: dict[int, type[HttpResponseError]] = {
    401: ClientAuthenticationError,
    404: ResourceNotFoundError,
    409: ResourceExistsError,
}
# Statuses no retry will cure: bad request, not found, too large.
_PERMANENT_STATUSES = frozenset({400, 403, 404, 413})
# Server errors whose first retry goes at once (429 and 503 ask the client to slow down: they back off).
_AT_ONCE_STATUSES = frozenset({500, 502, 504})
_CONTEXT_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema", "data", "data_base64"}
)
_EXTENSION_NAME = re.compile(r"[a-z0-9]+")


def topic_endpoint(path: str) -> str:
    """`path` as a publish URL: a topic host (the old service's form), or a full URL."""
    url = path if "://" in path else f"https://{path}"
    return url if url.rstrip("/").endswith("/api/events") else url.rstrip("/") + "/api/events"


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
    """The events of one publish request (their JSON), its exact size, and its content type."""

    __slots__ = ("bodies", "content_type", "size")

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.size = 2  # []
        self.content_type: str | None = None


class Publisher(EventGridPublisherClient):
    """The SDK's publisher, posting JSON the router already has the way its `send` posts events."""

    def __init__(self, endpoint: str, credential: Any, **options: Any) -> None:
        super().__init__(endpoint, credential, **options)
        self.url = endpoint

    def post(self, body: bytes, content_type: str, timeout: float) -> None:
        """What `send` posts (the SDK's `_build_request`), with `body` as the JSON array; raises what it raises."""
        request = HttpRequest(
            "POST", self.url, params={"api-version": API_VERSION}, headers={"Content-Type": content_type}, content=body
        )
        # This try's timeouts: the client's, or less when little of the send's budget is left.
        response = self._client.send_request(request, connection_timeout=timeout, read_timeout=timeout)
        if response.status_code != 200:
            map_error(status_code=response.status_code, response=response, error_map=_ERROR_MAP)
            raise HttpResponseError(response=response)


class EventGridSender(ClientSender[Publisher]):
    def _new_client(self, setting: str) -> Publisher:
        connection = resolve(setting, "topicEndpointUri", self.env)
        if connection.secret:
            return Publisher(
                topic_endpoint(self.endpoint.path), AzureKeyCredential(connection.secret), **self._options()
            )
        assert connection.address is not None
        return Publisher(topic_endpoint(connection.address), connection.credential(), **self._options())

    def _options(self) -> dict[str, Any]:
        return {
            "retry_total": 0,  # the sender retries itself, see ClientSender
            # azure-core's transport waits 300 s for a response by default; each try gets the sender's
            # timeout for connecting and for each read instead (ConnectionConfiguration, every request).
            "connection_timeout": self.retry.timeout,
            "read_timeout": self.retry.timeout,
        }

    def _packs_offline(self, client: Publisher) -> bool:
        return True  # a request is a list of the events' JSON: nothing asks the service

    def _open(self, client: Publisher, route: Hashable) -> Request:
        return Request()

    def _add(self, request: Request, message: Outgoing) -> bool:
        size = request.size + len(message.body) + (1 if request.bodies else 0)  # ","
        content_type = CLOUD_EVENTS_BATCH if message.content_type == CLOUD_EVENT_JSON else EVENT_GRID_BATCH
        if size > MAX_REQUEST_BYTES or (request.content_type not in (None, content_type)):
            return False  # full, or of the other schema (one request has one content type)
        # Only telemetry's CloudEvents carry attributes the router did not write (see extension_problem).
        if message.event_type is EventType.TWIN_TELEMETRY and content_type == CLOUD_EVENTS_BATCH:
            event = orjson.loads(message.body)
            if isinstance(event, dict) and (problem := extension_problem(event)):
                # Event Grid would refuse the whole request for it (400): this event fails alone.
                raise Unsendable(f"event cannot be published to Event Grid: {problem}")
        request.bodies.append(message.body)
        request.size = size
        request.content_type = content_type
        return True

    def _too_large(self, message: Outgoing, request: Request) -> str:
        return f"event of {len(message.body)} bytes is larger than Event Grid's 1 MB limit"

    def _transmit(self, client: Publisher, prepared: Prepared, timeout: float) -> None:
        request: Request = prepared.payload
        client.post(b"[" + b",".join(request.bodies) + b"]", request.content_type or EVENT_GRID_BATCH, timeout)

    def _is_refused(self, error: Exception) -> bool:
        return isinstance(error, ClientAuthenticationError)

    def _retry_at_once(self, error: Exception) -> bool:
        return isinstance(error, HttpResponseError) and error.status_code in _AT_ONCE_STATUSES

    def _describe(self, error: Exception) -> tuple[str, bool]:
        status = getattr(error, "status_code", None)
        text = f"{type(error).__name__}: HTTP {status}" if status else f"{type(error).__name__}: {error}"
        # The service says what it refused (a 400 names the event and the property); keep it in the letter.
        said = getattr(getattr(error, "error", None), "message", None)
        if status and said:
            text += f" ({said})"
        return text, isinstance(error, HttpResponseError) and status in _PERMANENT_STATUSES
