"""The Service Bus sender: queues and topics, `session_id` = order key, `message_id` = the
deterministic id, application properties and content type set.

One `ServiceBusMessageBatch` carries many sessions (each message its own `session_id`), split when
full: Service Bus takes such batches on entities without partitioning. A partitioned entity refuses a
batch whose messages have distinct session ids (or partition keys) with `amqp:not-allowed`, taking none
of it; the sender then sends one batch per session to that endpoint from then on, starting with the
refused batch's messages.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from typing import Any, cast

from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusMessageBatch, ServiceBusSender
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
)

from routing.connections import resolve
from routing.model import Outgoing
from routing.routes import Endpoint
from routing.senders import DEFAULT_LANES, ClientSender, PackingRefused, Prepared, RetryOptions, Unsendable

log = logging.getLogger(__name__)


def _not_found(error: Exception) -> bool:
    text = str(error).lower()
    return isinstance(error, MessagingEntityNotFoundError) or "404" in text or "not found" in text


def _not_allowed(error: Exception) -> bool:
    # The service's words: "Batching brokered messages with distinct SessionId, PartitionKey, or MessageId
    # is not supported for an entity with partitioning ...", condition amqp:not-allowed.
    text = str(error).lower()
    return "not-allowed" in text or "batching brokered messages with distinct" in text


def service_bus_message(message: Outgoing) -> ServiceBusMessage:
    return ServiceBusMessage(
        message.body,
        session_id=message.order_key,
        message_id=message.message_id,
        application_properties=cast(Any, dict(message.properties)) or None,
        content_type=message.content_type,
    )


class ServiceBusEndpointSender(ClientSender[ServiceBusSender]):
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        retry: RetryOptions,
        env: Mapping[str, str] | None = None,
        lanes: int = DEFAULT_LANES,
        mixed_sessions: bool = True,
    ) -> None:
        super().__init__(endpoint, retry=retry, env=env, lanes=lanes)
        # Whether one batch may carry several sessions; False once the entity refused it (partitioned).
        self.mixed_sessions = mixed_sessions

    def _new_client(self, setting: str) -> ServiceBusSender:
        connection = resolve(setting, "fullyQualifiedNamespace", self.env)
        if connection.secret:
            client = ServiceBusClient.from_connection_string(
                connection.secret,
                retry_total=0,  # the sender retries itself, see ClientSender
            )
        else:
            assert connection.address is not None
            client = ServiceBusClient(
                connection.address,
                connection.credential(),
                retry_total=0,  # the sender retries itself, see ClientSender
            )
        # A queue and a topic are the same AMQP address to a sender, so one call serves both.
        return client.get_queue_sender(queue_name=self.endpoint.path)

    def _route(self, client: ServiceBusSender, key: str) -> Hashable:
        return None if self.mixed_sessions else key

    def _open(self, client: ServiceBusSender, route: Hashable) -> ServiceBusMessageBatch:
        return client.create_message_batch()

    def _add(self, batch: ServiceBusMessageBatch, message: Outgoing) -> bool:
        try:
            built = service_bus_message(message)
        except ValueError as error:  # the SDK checks what the service would refuse: a session id > 128 characters
            raise Unsendable(f"message cannot be sent to '{self.endpoint.path}': {error}") from error
        try:
            batch.add_message(built)
        except MessageSizeExceededError:
            return False
        return True

    def _too_large(self, message: Outgoing, batch: ServiceBusMessageBatch) -> str:
        return (
            f"message of {len(message.body)} bytes is larger than '{self.endpoint.path}' allows "
            f"({batch.max_size_in_bytes} bytes per batch)"
        )

    def _transmit(self, client: ServiceBusSender, prepared: Prepared) -> None:
        try:
            client.send_messages(prepared.payload)
        except ServiceBusError as error:
            if len(prepared.counts) < 2 or not _not_allowed(error):
                raise
            # Not on the first refusal only: another invocation may have packed its batch before the switch.
            if self.mixed_sessions:
                self.mixed_sessions = False
                log.warning(
                    "endpoint '%s': '%s' refused a batch of %d sessions (%s); one batch per session from now on",
                    self.endpoint.name,
                    self.endpoint.path,
                    len(prepared.counts),
                    error,
                    extra={"endpoint": self.endpoint.name},
                )
            raise PackingRefused(str(error)) from error

    def _is_refused(self, error: Exception) -> bool:
        # Service Bus answers an unknown queue or topic with a 404 to the token request.
        refused = isinstance(error, ServiceBusAuthenticationError | ServiceBusAuthorizationError)
        return refused and not _not_found(error)

    def _describe(self, error: Exception) -> tuple[str, bool]:
        text = f"{type(error).__name__}: {error}"
        if _not_found(error):
            return f"queue or topic '{self.endpoint.path}' was not found: {text}", True
        permanent = (MessageSizeExceededError, MessagingEntityNotFoundError, MessagingEntityDisabledError)
        return text, isinstance(error, permanent) or _not_allowed(error)
