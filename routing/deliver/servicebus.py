"""The Service Bus sender: queues and topics, `session_id` = order key, `message_id` = the
deterministic id of the event in the endpoint's shape, application properties and content type set.

One `ServiceBusMessageBatch` carries many sessions (each message its own `session_id`), split when
full: Service Bus takes such batches on entities without partitioning. What a partitioned entity
refuses it refuses whole, with `amqp:not-allowed`, taking none of it, and the sender packs less from
then on (`Packing`), starting with the refused batch's messages: a batch mixing sessions (or partition
keys) gets one batch per session; with duplicate detection on too, a batch of distinct MessageIds is
refused as well, so one message per send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from enum import IntEnum
from typing import Any, cast

from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusMessageBatch, ServiceBusSender
from azure.servicebus._common.constants import MESSAGE_PROPERTY_MAX_LENGTH
from azure.servicebus.amqp import AmqpAnnotatedMessage, AmqpMessageBodyType, AmqpMessageHeader, AmqpMessageProperties
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusConnectionError,
    ServiceBusError,
)

from routing.connections import resolve
from routing.deliver.senders import (
    DEFAULT_LANES,
    ClientSender,
    PackingRefused,
    Prepared,
    RetryOptions,
    Unsendable,
    sdk_error_text,
    unsendable_reason,
)
from routing.deliver.transports import ServiceBusTransport, alike, annotated_data
from routing.model import Event, EventType, IngressMessage, Outgoing
from routing.routes.table import Endpoint

log = logging.getLogger(__name__)


def _not_found(error: Exception) -> bool:
    text = str(error).lower()
    return isinstance(error, MessagingEntityNotFoundError) or "404" in text or "not found" in text


def _not_allowed(error: Exception) -> bool:
    # The service's words: "Batching brokered messages with distinct SessionId or PartitionKey is not supported
    # for an entity with partitioning enabled", condition amqp:not-allowed.
    text = str(error).lower()
    return "not-allowed" in text or "batching brokered messages with distinct" in text


def _distinct_ids_refused(error: Exception) -> bool:
    # With duplicate detection too: "Batching brokered messages with distinct SessionId, PartitionKey, or
    # MessageId  is not supported for an entity with partitioning and duplicate detection enabled"
    # (azure-sdk-for-python 21955, 36333; the service team: do not batch there). Not "MessageId" alone: the
    # service appends "...::SessionId:::MessageId:<id>::..." tracking text to its refusals.
    return "duplicate detection" in str(error).lower()


class Packing(IntEnum):
    """How much one send may carry. A sender only ever packs less, for the process' life: an entity's
    partitioning and duplicate detection are fixed when it is created."""

    SESSIONS = 0  # many sessions per batch: what entities without partitioning take
    SESSION = 1  # one session per batch: partitioned entities
    MESSAGE = 2  # one message per send: partitioned entities with duplicate detection


def constructed(message: Outgoing) -> ServiceBusMessage:
    """The message as the SDK's constructor makes it (what a script would make: the bench's floor B), and
    checks it: a session or message id longer than the service takes raises `ValueError`."""
    return ServiceBusMessage(
        message.body,
        session_id=message.order_key,
        message_id=message.message_id,
        application_properties=cast(Any, dict(message.properties)) or None,
        content_type=message.content_type,
    )


def _made_directly(message: Outgoing) -> ServiceBusMessage:
    """What `constructed` makes (azure-servicebus 7.14), without its thirteen setters (each first tests
    whether the AMQP properties are empty, a list of their field names built per call, and most set a
    field the new properties already hold as None) and its annotated message's run-time `typing` casts:
    1.3 against 25-30 µs a message (`timeit`). A session or message id the constructor would refuse goes
    to it, for its own error."""
    if (
        not isinstance(message.body, bytes)
        or len(message.order_key) > MESSAGE_PROPERTY_MAX_LENGTH
        or len(message.message_id) > MESSAGE_PROPERTY_MAX_LENGTH
    ):
        return constructed(message)
    made = ServiceBusMessage.__new__(ServiceBusMessage)
    made._encoding = "UTF-8"
    made._uamqp_message = None
    made._message = None
    made._raw_amqp_message = annotated_data(
        AmqpAnnotatedMessage,
        message.body,
        AmqpMessageBodyType.DATA,
        header=AmqpMessageHeader(),
        properties=AmqpMessageProperties(
            message_id=message.message_id, group_id=message.order_key, content_type=message.content_type
        ),
        application=cast(Any, dict(message.properties)) or None,
    )  # its annotations empty, as the constructor's setters of the partition key and scheduled time leave them
    return made


def _sample() -> Outgoing:
    event = Event(event_type=EventType.SENSOR_CHANGE, order_key="k", message_id="m", ingress=_SAMPLE_INGRESS)
    return Outgoing(
        endpoint="e",
        event=event,
        body=b"{}",
        content_type="application/json",
        properties={"p": 1},
        order_key="k",
        message_id="m",
    )


_SAMPLE_INGRESS = IngressMessage(body=b"{}", properties={}, system_properties={}, source="s")

# Made directly only while that makes what the constructor makes (an upgrade that changes what a
# ServiceBusMessage holds gets the constructor: correct, slower; tests/test_event_conversion.py fails on it).
service_bus_message: Callable[[Outgoing], ServiceBusMessage] = (
    _made_directly if alike(_made_directly(_sample()), constructed(_sample())) else constructed
)


class ServiceBusEndpointSender(ClientSender[ServiceBusSender]):
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        retry: RetryOptions,
        env: Mapping[str, str] | None = None,
        lanes: int = DEFAULT_LANES,
        packing: Packing = Packing.SESSIONS,
    ) -> None:
        super().__init__(endpoint, retry=retry, env=env, lanes=lanes)
        # Lowered when the entity refuses a batch for what it mixes.
        self.packing = packing

    def _new_client(self, setting: str) -> ServiceBusSender:
        connection = resolve(setting, "fullyQualifiedNamespace", self.env)
        options: dict[str, Any] = {
            "retry_total": 0,  # the sender retries itself, see ClientSender
            "retry_backoff_factor": 0,  # and no backoff sleep of the SDK's before it raises
        }
        if connection.secret:
            client = ServiceBusClient.from_connection_string(connection.secret, **options)
        else:
            assert connection.address is not None
            client = ServiceBusClient(connection.address, connection.credential(), **options)
        # A queue and a topic are the same AMQP address to a sender, so one call serves both.
        # No keep-alive thread (the SDK's default pings every 30 s; the client's `keep_alive` does not reach its
        # senders): closing the link after a lost connection joins that thread, which sleeps in 1 s steps, so
        # every connection fault cost up to a second before it was even reported (pyamqp `AMQPClient.close`;
        # ~0.8 s on Azure too, azure-sdk-for-python#36212). The pings do not keep an idle link anyway: Service
        # Bus detaches a sender link idle for 10 minutes whatever they do (#10127, #38627), and the next try
        # reconnects. Event Hubs producers have no keep-alive by default either.
        sender = client.get_queue_sender(queue_name=self.endpoint.path, keep_alive=None)
        # The SDK's own transport with its batches encoding each message once and its link opened without a
        # 50 ms sleep per handshake frame (routing/deliver/transports.py). The client takes no transport, its
        # senders keep the one they are given here until their first open.
        sender._amqp_transport = ServiceBusTransport  # type: ignore[assignment]  # a class, as the SDK's default
        return sender

    def _route(self, client: ServiceBusSender, key: str) -> Hashable:
        # A key's batches stay in one sequence (its order); one message per send still spreads keys over lanes.
        return None if self.packing is Packing.SESSIONS else key

    def _packs_offline(self, client: ServiceBusSender) -> bool:
        # `create_message_batch` opens the link to learn its size limit until it knows it.
        return bool(getattr(client, "_max_message_size_on_link", 0))

    def _opens_nothing(self, client: ServiceBusSender, prepared: Prepared) -> bool:
        # `send_messages` opens the link (and its token) only when the sender is not running.
        return bool(getattr(client, "_running", False)) and getattr(client, "_handler", None) is not None

    def _open(self, client: ServiceBusSender, route: Hashable) -> ServiceBusMessageBatch:
        return client.create_message_batch()

    def _add(self, batch: ServiceBusMessageBatch, message: Outgoing) -> bool:
        if self.packing is Packing.MESSAGE and len(batch):
            return False  # a batch of one: the SDK stamps its envelope with the message's own ids
        try:
            built = service_bus_message(message)
        except ValueError as error:  # the SDK checks what the service would refuse: a session id > 128 characters
            raise Unsendable(f"message cannot be sent to '{self.endpoint.path}': {error}") from error
        try:
            batch.add_message(built)
        except MessageSizeExceededError:
            return False
        except (ValueError, TypeError) as error:
            # The AMQP encoder refusing a value (an application property beyond 64 bits): no batch takes
            # it, so it fails alone instead of failing, and retrying, the whole batch.
            raise Unsendable(unsendable_reason(message, f"'{self.endpoint.path}'", error)) from error
        return True

    def _too_large(self, message: Outgoing, batch: ServiceBusMessageBatch) -> str:
        return (
            f"message of {len(message.body)} bytes is larger than '{self.endpoint.path}' allows "
            f"({batch.max_size_in_bytes} bytes per batch)"
        )

    def _transmit(self, client: ServiceBusSender, prepared: Prepared, timeout: float) -> None:
        try:
            # `timeout` bounds the send including opening the link and the token (ServiceBusSender._open
            # under `_do_retryable_operation`'s deadline); what it cannot bound, the ClientSender does.
            client.send_messages(prepared.payload, timeout=timeout)
        except ServiceBusError as error:
            if len(prepared.messages) < 2 or not _not_allowed(error):
                raise
            needed = Packing.SESSION
            if len(prepared.counts) < 2 or _distinct_ids_refused(error):
                needed = Packing.MESSAGE
            # Not on the first refusal only: another invocation may have packed its batch before the switch.
            if needed > self.packing:
                self.packing = needed
                log.warning(
                    "endpoint '%s': '%s' refused a batch of %d messages of %d sessions (%s); %s from now on",
                    self.endpoint.name,
                    self.endpoint.path,
                    len(prepared.messages),
                    len(prepared.counts),
                    error,
                    "one batch per session" if needed is Packing.SESSION else "one message per send",
                    extra={"endpoint": self.endpoint.name},
                )
            raise PackingRefused(str(error)) from error

    def _is_refused(self, error: Exception) -> bool:
        # Service Bus answers an unknown queue or topic with a 404 to the token request.
        refused = isinstance(error, ServiceBusAuthenticationError | ServiceBusAuthorizationError)
        return refused and not _not_found(error)

    def _retry_at_once(self, error: Exception) -> bool:
        return isinstance(error, ServiceBusConnectionError)

    def _describe(self, error: Exception) -> tuple[str, bool]:
        text = sdk_error_text(error)
        if _not_found(error):
            return f"queue or topic '{self.endpoint.path}' was not found: {text}", True
        permanent = (MessageSizeExceededError, MessagingEntityNotFoundError, MessagingEntityDisabledError)
        return text, isinstance(error, permanent) or _not_allowed(error)
