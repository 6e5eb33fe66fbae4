"""The Event Hubs sender, through `azure-eventhub`'s producer (output bindings cannot set a partition key).

Keys are grouped by the partition the service would pick for them, and each partition gets one
`EventDataBatch(partition_id=...)` per batch (split when full) with each key's events in order; every
event still carries its key as the `x-opt-partition-key` annotation, so consumers see the same partition
key as with a keyed send. This is what the SDKs' buffered producers do. An endpoint with
`"partitioning": "service"` (or `by_partition=False`) gets one `EventDataBatch(partition_key=key)` per
key instead, leaving the choice of partition to the service.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import lru_cache
from typing import Any, cast

from azure.eventhub import EventData, EventDataBatch, EventHubProducerClient
from azure.eventhub._buffered_producer import _partition_resolver
from azure.eventhub._constants import ALL_PARTITIONS
from azure.eventhub.amqp import AmqpAnnotatedMessage, AmqpMessageBodyType, AmqpMessageHeader, AmqpMessageProperties
from azure.eventhub.exceptions import AuthenticationError, ConnectError, ConnectionLostError

from routing.connections import resolve
from routing.deliver.senders import (
    DEFAULT_LANES,
    ClientSender,
    Prepared,
    RetryOptions,
    Unsendable,
    sdk_error_text,
    unsendable_reason,
)
from routing.deliver.transports import EventHubsTransport, alike, annotated_data
from routing.model import Outgoing
from routing.routes.table import Endpoint

# AMQP conditions that no retry will cure.
_PERMANENT_CONDITIONS = (
    "message-size-exceeded",
    "messagesizeexceeded",  # the SDK names the condition by its enum: LinkMessageSizeExceeded
    "amqp:not-found",
    "unauthorized-access",
    "amqp:unauthorized-access",
    "entity-disabled",
)

# The annotation a keyed send stamps on each event (the SDK's PROP_PARTITION_KEY_AMQP_SYMBOL).
PARTITION_KEY_ANNOTATION = b"x-opt-partition-key"

# Jenkins' lookup3, as the buffered producer uses it (the SDK ships it untyped).
_lookup3 = cast(Callable[[str], int], _partition_resolver.generate_hash_code)


@lru_cache(maxsize=65536)
def _partition_index(key: str, count: int) -> int:
    # The service hashes the key's UTF-8 bytes (the .NET and Java resolvers, ports of the service's code,
    # do so); the Python port walks characters, which differs for non-ASCII keys, so it gets the bytes as
    # characters of the same value. The .NET and Java resolvers then take Math.Abs(hash % count) with a
    # remainder that keeps the hash's sign; Python's % does not (the Python resolver picks another
    # partition for negative hashes), so: abs first.
    return abs(_lookup3(key.encode("utf-8").decode("latin-1"))) % count


def partition_for(key: str, partition_ids: Sequence[str]) -> str:
    """The partition Event Hubs assigns to events sent with partition key `key`."""
    return partition_ids[_partition_index(key, len(partition_ids))]


def _not_found(error: Exception) -> bool:
    text = str(error).lower()
    return "404" in text or "not-found" in text or "not found" in text


def _made_directly(body: bytes) -> EventData:
    """`EventData(body)` as azure-eventhub 5.15's constructor makes it, without its three setters of fields
    the new properties already hold as None (each first tests the properties' length: a list of their
    field names built per call) and its annotated message's keyword tests: 1.1-1.4 against 7.0 µs an
    event (`timeit`)."""
    data = EventData.__new__(EventData)
    data._last_enqueued_event_properties = {}
    data._sys_properties = None
    data._raw_amqp_message = annotated_data(
        AmqpAnnotatedMessage,
        body,
        AmqpMessageBodyType.DATA,
        header=AmqpMessageHeader(),  # type: ignore[no-untyped-call]
        properties=AmqpMessageProperties(),  # type: ignore[no-untyped-call]
        application={},
    )
    data._uamqp_message = None
    data._message = None
    return data


# Made directly only while that makes what the SDK's constructor makes (an upgrade that changes what an
# EventData holds gets the constructor: correct, slower; tests/test_event_conversion.py fails on it).
new_event_data: Callable[[bytes], EventData] = (
    _made_directly if alike(_made_directly(b"x"), EventData(b"x")) else EventData
)


def event_data(message: Outgoing) -> EventData:
    data = new_event_data(message.body)
    if message.properties:
        data.properties = {**message.properties}  # type: ignore[dict-item]
    # Set on the AMQP properties EventData made, as its setters set them: each setter first tests the
    # properties' length, a list of their field names built per call.
    amqp = cast(AmqpMessageProperties, data.raw_amqp_message.properties)
    if message.content_type:
        amqp.content_type = message.content_type
    amqp.message_id = message.message_id
    return data


def with_partition_key(data: EventData, key: str) -> EventData:
    """`data` stamped with partition key `key` as a keyed send stamps it (the annotation and a durable
    header), for a batch addressed to the partition the key maps to."""
    raw = data.raw_amqp_message
    annotations = raw.annotations
    if annotations is None:
        annotations = raw.annotations = {}
    annotations[PARTITION_KEY_ANNOTATION] = key
    if raw.header is not None:
        raw.header.durable = True
    return data


class EventHubSender(ClientSender[EventHubProducerClient]):
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        retry: RetryOptions,
        env: Mapping[str, str] | None = None,
        lanes: int = DEFAULT_LANES,
        by_partition: bool | None = None,
    ) -> None:
        super().__init__(endpoint, retry=retry, env=env, lanes=lanes)
        # The endpoint's `partitioning` decides unless the caller does.
        self.by_partition = endpoint.partitioning == "router" if by_partition is None else by_partition
        self._partition_ids: tuple[str, ...] | None = None
        self._lanes_of: dict[str, int] = {}

    def _new_client(self, setting: str) -> EventHubProducerClient:
        connection = resolve(setting, "fullyQualifiedNamespace", self.env)
        options: dict[str, Any] = {
            "eventhub_name": self.endpoint.path,
            "retry_total": 0,  # the sender retries itself, see ClientSender
            # With no retries left the SDK still sleeps its backoff (0.8 s) before raising, when the send's
            # timeout leaves room for it (`_client_base._backoff`): no hidden wait either.
            "retry_backoff_factor": 0,
            # The token request (CBS) gives up after this, instead of the SDK's 60 s.
            "auth_timeout": self.retry.timeout,
            # The SDK's own transport with its batches encoding each message once and its links opened
            # without a 50 ms sleep per handshake frame (routing/deliver/transports.py).
            "amqp_transport": EventHubsTransport,
        }
        if connection.secret:
            return EventHubProducerClient.from_connection_string(connection.secret, **options)
        assert connection.address is not None
        return EventHubProducerClient(
            fully_qualified_namespace=connection.address, credential=connection.credential(), **options
        )

    def partition_ids(self, client: EventHubProducerClient) -> tuple[str, ...]:
        """The hub's partitions, asked once per process (a management call)."""
        ids = self._partition_ids
        if ids is None:
            ids = tuple(client.get_partition_ids())
            # Each partition always on the same lane: a producer client opens a connection per partition.
            self._lanes_of = {pid: index % self.lanes for index, pid in enumerate(ids)}
            self._partition_ids = ids
        return ids

    def _route(self, client: EventHubProducerClient, key: str) -> Hashable:
        if not self.by_partition:
            return key
        ids = self._partition_ids or self.partition_ids(client)
        return ids[_partition_index(key, len(ids))]

    def _lane(self, route: Hashable) -> int:
        lane = self._lanes_of.get(route) if isinstance(route, str) and self.by_partition else None
        return super()._lane(route) if lane is None else lane

    def _packs_offline(self, client: EventHubProducerClient) -> bool:
        # `create_batch` opens a producer to learn the link's size limit until it knows it; the partitions
        # are asked once per sender.
        return bool(getattr(client, "_max_message_size_on_link", 0)) and (
            not self.by_partition or self._partition_ids is not None
        )

    def _opens_nothing(self, client: EventHubProducerClient, prepared: Prepared) -> bool:
        # A running producer of the batch's partition: `send` opens its link and token only when not running.
        batch: EventDataBatch = prepared.payload
        producer = client._producers.get(batch._partition_id or ALL_PARTITIONS)
        return producer is not None and not producer.closed and bool(producer.running)

    def _open(self, client: EventHubProducerClient, route: Hashable) -> EventDataBatch:
        if self.by_partition:
            return client.create_batch(partition_id=cast(str, route))
        return client.create_batch(partition_key=cast(str, route))

    def _add(self, batch: EventDataBatch, message: Outgoing) -> bool:
        data = event_data(message)
        try:
            batch.add(with_partition_key(data, message.order_key) if self.by_partition else data)
        except (ValueError, TypeError) as error:
            # The batch's "EventDataBatch has reached its size limit: N"; anything else is the encoder
            # refusing a value (an int beyond 64 bits, a type AMQP has none for), which no batch will take.
            if isinstance(error, ValueError) and "size limit" in str(error):
                return False
            raise Unsendable(unsendable_reason(message, f"event hub '{self.endpoint.path}'", error)) from error
        return True

    def _too_large(self, message: Outgoing, batch: EventDataBatch) -> str:
        return (
            f"message of {len(message.body)} bytes is larger than event hub '{self.endpoint.path}' allows "
            f"({batch.max_size_in_bytes} bytes per batch)"
        )

    def _transmit(self, client: EventHubProducerClient, prepared: Prepared, timeout: float) -> None:
        # Not `client.send_batch`: on any EventHubError it sends the batch once more by itself, at once
        # and uncounted, whatever `retry_total` says (azure-eventhub 5.15 `_producer_client.send_batch`:
        # `except (KeyError, AttributeError, EventHubError): self._start_producer(...); ...send(...)`).
        # This is its path without that second send: start the partition's producer if it has none (or a
        # closed one), and send once, within `timeout` (the transfer waits for its settlement that long).
        batch: EventDataBatch = prepared.payload
        partition = batch._partition_id or ALL_PARTITIONS
        producer = client._producers.get(partition)
        if producer is None or producer.closed:
            client._start_producer(partition, timeout)
            producer = client._producers[partition]
        assert producer is not None
        producer.send(batch, partition_key=cast(Any, batch._partition_key), timeout=timeout)

    def _is_refused(self, error: Exception) -> bool:
        # Event Hubs answers an unknown hub with a 404 to the token request, raised as AuthenticationError.
        return (isinstance(error, AuthenticationError) or "unauthorized" in str(error).lower()) and not _not_found(
            error
        )

    def _retry_at_once(self, error: Exception) -> bool:
        return isinstance(error, ConnectError | ConnectionLostError)

    def _describe(self, error: Exception) -> tuple[str, bool]:
        text = sdk_error_text(error)
        lowered = text.lower()
        if _not_found(error):
            return f"event hub '{self.endpoint.path}' was not found: {text}", True
        if any(condition in lowered for condition in _PERMANENT_CONDITIONS):
            return text, True
        # Anything else (a lost connection, a timeout, throttling, a busy server) outlasted the SDK's
        # retries but may pass later: a replay can still deliver it.
        return text, False
