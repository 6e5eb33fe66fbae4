"""The Event Grid sender: Event Grid schema or CloudEvents 1.0 (the envelope stage chose per endpoint),
published with `EventGridPublisherClient`, in requests under Event Grid's 1 MB limit.

Event Grid keeps no order; each event carries its `eventTime`, and a key's events are published in
order, one request after another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.eventgrid import EventGridPublisherClient

from routing.connections import resolve
from routing.model import Outgoing
from routing.senders import BatchFailed, ClientSender

# Event Grid refuses requests over 1 MB; the brackets and commas of the JSON array count too.
MAX_REQUEST_BYTES = 1024 * 1024
# Statuses no retry will cure: bad request, not found, too large.
_PERMANENT_STATUSES = frozenset({400, 403, 404, 413})


def topic_endpoint(path: str) -> str:
    """`path` as a publish URL: a topic host (the old service's form), or a full URL."""
    url = path if "://" in path else f"https://{path}"
    return url if url.rstrip("/").endswith("/api/events") else url.rstrip("/") + "/api/events"


class EventGridSender(ClientSender[EventGridPublisherClient]):
    def _new_client(self, setting: str) -> EventGridPublisherClient:
        connection = resolve(setting, "topicEndpointUri", self.env)
        if connection.secret:
            return EventGridPublisherClient(
                topic_endpoint(self.endpoint.path),
                AzureKeyCredential(connection.secret),
                retry_total=0,  # the sender retries itself, see ClientSender
            )
        assert connection.address is not None
        return EventGridPublisherClient(
            topic_endpoint(connection.address),
            connection.credential(),
            retry_total=0,  # the sender retries itself, see ClientSender
        )

    def _prepare(
        self, client: EventGridPublisherClient, key: str, messages: Sequence[Outgoing]
    ) -> tuple[list[Any], int]:
        size = 2
        count = 0
        for message in messages:
            size += len(message.body) + 1
            if size > MAX_REQUEST_BYTES:
                if count == 0:
                    raise BatchFailed(
                        f"event of {len(message.body)} bytes is larger than Event Grid's 1 MB limit",
                        count=1,
                        permanent=True,
                    )
                break
            count += 1
        return [orjson.loads(m.body) for m in messages[:count]], count

    def _transmit(self, client: EventGridPublisherClient, batch: list[Any]) -> None:
        # The publisher ignores retry options given to its constructor: they must come with each send.
        client.send(batch, retry_total=0)

    def _is_refused(self, error: Exception) -> bool:
        return isinstance(error, ClientAuthenticationError)

    def _describe(self, error: Exception) -> tuple[str, bool]:
        status = getattr(error, "status_code", None)
        text = f"{type(error).__name__}: HTTP {status}" if status else f"{type(error).__name__}: {error}"
        return text, isinstance(error, HttpResponseError) and status in _PERMANENT_STATUSES
