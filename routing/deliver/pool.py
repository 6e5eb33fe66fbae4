"""The senders of a process: one per endpoint destination, created on first use and reused across
invocations (reconnecting per invocation is slow and times out under load)."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from routing.deliver.eventgrid import EventGridSender
from routing.deliver.eventhubs import EventHubSender
from routing.deliver.senders import ClientSender, RetryOptions, Sender
from routing.deliver.servicebus import ServiceBusEndpointSender
from routing.deliver.storage import StorageSender
from routing.model import EndpointType
from routing.routes.table import Endpoint

_KINDS: dict[EndpointType, type[ClientSender[object]]] = {
    EndpointType.EVENT_HUB: EventHubSender,  # type: ignore[dict-item]
    EndpointType.SERVICE_BUS: ServiceBusEndpointSender,  # type: ignore[dict-item]
    EndpointType.EVENT_GRID: EventGridSender,  # type: ignore[dict-item]
    EndpointType.STORAGE: StorageSender,  # type: ignore[dict-item]
}


class SenderPool:
    def __init__(self, *, retry: RetryOptions | None = None, env: Mapping[str, str] | None = None) -> None:
        self.retry = retry or RetryOptions()
        self.env = env
        self._senders: dict[tuple[str, ...], Sender] = {}
        self._lock = threading.Lock()

    def __call__(self, endpoint: Endpoint) -> Sender:
        # Keyed by where messages go: an edit to an endpoint's event types or format keeps its connection.
        key = (
            endpoint.name,
            endpoint.type,
            endpoint.connection,
            endpoint.secondary_connection or "",
            endpoint.path,
            endpoint.partitioning,
            endpoint.file_name_format,
        )
        with self._lock:
            sender = self._senders.get(key)
            if sender is None:
                sender = self._senders[key] = _KINDS[endpoint.type](endpoint, retry=self.retry, env=self.env)
            return sender

    def close(self) -> None:
        with self._lock:
            for sender in self._senders.values():
                sender.close()
            self._senders.clear()
