"""The Event Hubs sender: one `EventDataBatch` per order key (`partition_key=key`), sent in order and
split when full, through `azure-eventhub`'s producer (output bindings cannot set a partition key).
"""

from __future__ import annotations

from collections.abc import Sequence

from azure.eventhub import EventData, EventDataBatch, EventHubProducerClient
from azure.eventhub.exceptions import AuthenticationError

from routing.connections import resolve
from routing.model import Outgoing
from routing.senders import BatchFailed, ClientSender

# AMQP conditions that no retry will cure.
_PERMANENT_CONDITIONS = (
    "message-size-exceeded",
    "messagesizeexceeded",  # the SDK names the condition by its enum: LinkMessageSizeExceeded
    "amqp:not-found",
    "unauthorized-access",
    "amqp:unauthorized-access",
    "entity-disabled",
)


def _not_found(error: Exception) -> bool:
    text = str(error).lower()
    return "404" in text or "not-found" in text or "not found" in text


def event_data(message: Outgoing) -> EventData:
    data = EventData(message.body)
    if message.properties:
        data.properties = {**message.properties}  # type: ignore[dict-item]
    if message.content_type:
        data.content_type = message.content_type
    data.message_id = message.message_id
    return data


class EventHubSender(ClientSender[EventHubProducerClient]):
    def _new_client(self, setting: str) -> EventHubProducerClient:
        connection = resolve(setting, "fullyQualifiedNamespace", self.env)
        if connection.secret:
            return EventHubProducerClient.from_connection_string(
                connection.secret,
                eventhub_name=self.endpoint.path,
                retry_total=0,  # the sender retries itself, see ClientSender
            )
        assert connection.address is not None
        return EventHubProducerClient(
            fully_qualified_namespace=connection.address,
            eventhub_name=self.endpoint.path,
            credential=connection.credential(),
            retry_total=0,  # the sender retries itself, see ClientSender
        )

    def _prepare(
        self, client: EventHubProducerClient, key: str, messages: Sequence[Outgoing]
    ) -> tuple[EventDataBatch, int]:
        batch = client.create_batch(partition_key=key)
        count = 0
        for message in messages:
            try:
                batch.add(event_data(message))
            except ValueError:
                if count == 0:
                    raise BatchFailed(
                        f"message of {len(message.body)} bytes is larger than event hub "
                        f"'{self.endpoint.path}' allows ({batch.max_size_in_bytes} bytes per batch)",
                        count=1,
                        permanent=True,
                    ) from None
                break
            count += 1
        return batch, count

    def _transmit(self, client: EventHubProducerClient, batch: EventDataBatch) -> None:
        client.send_batch(batch)

    def _is_refused(self, error: Exception) -> bool:
        # Event Hubs answers an unknown hub with a 404 to the token request, raised as AuthenticationError.
        return (isinstance(error, AuthenticationError) or "unauthorized" in str(error).lower()) and not _not_found(
            error
        )

    def _describe(self, error: Exception) -> tuple[str, bool]:
        text = f"{type(error).__name__}: {error}"
        lowered = text.lower()
        if _not_found(error):
            return f"event hub '{self.endpoint.path}' was not found: {text}", True
        if any(condition in lowered for condition in _PERMANENT_CONDITIONS):
            return text, True
        # Anything else (a lost connection, a timeout, throttling, a busy server) outlasted the SDK's
        # retries but may pass later: a replay can still deliver it.
        return text, False
