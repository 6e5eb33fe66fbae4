"""The Service Bus sender: queues and topics, `session_id` = order key, `message_id` = the
deterministic id, application properties and content type set; one batch per key, split when full.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusMessageBatch, ServiceBusSender
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
)

from routing.connections import resolve
from routing.model import Outgoing
from routing.senders import BatchFailed, ClientSender


def _not_found(error: Exception) -> bool:
    text = str(error).lower()
    return isinstance(error, MessagingEntityNotFoundError) or "404" in text or "not found" in text


def service_bus_message(message: Outgoing) -> ServiceBusMessage:
    return ServiceBusMessage(
        message.body,
        session_id=message.order_key,
        message_id=message.message_id,
        application_properties=cast(Any, dict(message.properties)) or None,
        content_type=message.content_type,
    )


class ServiceBusEndpointSender(ClientSender[ServiceBusSender]):
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

    def _prepare(
        self, client: ServiceBusSender, key: str, messages: Sequence[Outgoing]
    ) -> tuple[ServiceBusMessageBatch, int]:
        batch = client.create_message_batch()
        count = 0
        for message in messages:
            try:
                batch.add_message(service_bus_message(message))
            except MessageSizeExceededError:
                if count == 0:
                    raise BatchFailed(
                        f"message of {len(message.body)} bytes is larger than '{self.endpoint.path}' allows "
                        f"({batch.max_size_in_bytes} bytes per batch)",
                        count=1,
                        permanent=True,
                    ) from None
                break
            count += 1
        return batch, count

    def _transmit(self, client: ServiceBusSender, batch: ServiceBusMessageBatch) -> None:
        client.send_messages(batch)

    def _is_refused(self, error: Exception) -> bool:
        # Service Bus answers an unknown queue or topic with a 404 to the token request.
        refused = isinstance(error, ServiceBusAuthenticationError | ServiceBusAuthorizationError)
        return refused and not _not_found(error)

    def _describe(self, error: Exception) -> tuple[str, bool]:
        text = f"{type(error).__name__}: {error}"
        if _not_found(error):
            return f"queue or topic '{self.endpoint.path}' was not found: {text}", True
        permanent = (MessageSizeExceededError, MessagingEntityNotFoundError, MessagingEntityDisabledError)
        return text, isinstance(error, permanent)
