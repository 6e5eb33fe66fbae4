"""The stages the benchmark times, each a function of prepared input that does one pass of work:

* floor A: decode and re-encode each message's JSON once with orjson;
* the router core: `Router.route` over `IngressMessage` batches with a sender that only collects what it
  is given (classification, matching, envelopes, grouping per key, accounting; no SDK work);
* floor B: the SDK work alone on the same outgoing messages, packed as the senders pack them: per
  endpoint, one `EventDataBatch(partition_id=...)` per partition (keys grouped by the service's hash,
  each event carrying its partition key), one `ServiceBusMessageBatch` for all sessions, one list of
  Event Grid event dicts; no network;
* floor B, encoded once: the same SDK work with the transports the production clients are given
  (routing/deliver/transports.py: each AMQP message encoded once, not twice), each event and message made
  as the senders make them (routing/deliver/eventhubs.py `event_data`, servicebus.py
  `service_bus_message`) and Event Grid's events posted as the JSON they are (what `EventGridSender`
  does), so that what the senders add beyond the SDK batches they build can be told apart (`bookkeeping`);
* the router core plus the SDK work: `Router.route` with the production senders (`EventHubSender`,
  `ServiceBusEndpointSender`, `EventGridSender`: their packing, lanes, retries and stop-the-line) on
  clients that build real SDK batches but do not send them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from azure.eventhub import EventData, EventDataBatch, EventHubProducerClient
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch, ServiceBusSender
from azure.servicebus.exceptions import MessageSizeExceededError

from routing.deadletters import Delivered
from routing.deliver.eventgrid import EventGridSender
from routing.deliver.eventhubs import EventHubSender, event_data, partition_for, with_partition_key
from routing.deliver.senders import ClientSender, KeyGroup, Prepared, RetryOptions, Sender, SendReport
from routing.deliver.servicebus import ServiceBusEndpointSender, constructed, service_bus_message
from routing.deliver.transports import EventHubsTransport, ServiceBusTransport
from routing.model import DeadLetter, EndpointType, IngressMessage, Outgoing
from routing.pipeline import Router, StaticRoutes
from routing.routes.table import Endpoint, RouteTable

# What the peer (and Azure's standard tier) advertises; the SDKs size batches by it.
MAX_MESSAGE_SIZE = 1024 * 1024
# The partitions of every event hub, as the end-to-end peer reports them (`AmqpPeer(partition_count=4)`).
PARTITION_IDS = ("0", "1", "2", "3")


@dataclass
class MemoryDeadLetters:
    """Dead letters kept in a list: the benchmark measures routing, not Blob Storage."""

    letters: list[DeadLetter] = field(default_factory=list)

    def write(self, letters: Sequence[DeadLetter], *, delivered: Delivered = ()) -> None:
        self.letters.extend(letters)

    def close(self) -> None:
        pass


class Collector:
    """A sender that only keeps what it is given (and reports it delivered, as a sender must). Its send never
    waits, and says so (`sends_at_once`), so the pipeline makes it on the routing thread: the core stage
    hands nothing to a thread. The hand-offs of a batch's other endpoints are the senders' bookkeeping
    (target 2), counted in core + SDK; measured in the core as well, they cancelled out of the bookkeeping
    and made the core of a five-endpoint batch ~1.2 µs an event dearer (issue #15)."""

    def __init__(self) -> None:
        self.sent: list[tuple[Endpoint, Sequence[KeyGroup]]] = []
        self.keep = False
        self.sends_at_once = True

    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        if self.keep:
            self.sent.append((endpoint, groups))
        return SendReport(delivered=tuple(m for g in groups for m in g.messages))

    def close(self) -> None:
        pass


def core_router(table: RouteTable, collector: Collector | None = None) -> Router:
    sink = collector or Collector()
    return Router(routes=StaticRoutes(table), senders=lambda _endpoint: sink, dead_letters=MemoryDeadLetters())


def route_all(router: Router, batches: Sequence[Sequence[IngressMessage]]) -> Callable[[], None]:
    def run() -> None:
        for batch in batches:
            router.route(batch)

    return run


# --- floor A ---------------------------------------------------------------------------------------


def floor_a(bodies: Sequence[bytes]) -> Callable[[], None]:
    loads, dumps = orjson.loads, orjson.dumps

    def run() -> None:
        for body in bodies:
            dumps(loads(body))

    return run


# --- floor B ---------------------------------------------------------------------------------------

Plan = list[tuple[Endpoint, Sequence[KeyGroup]]]


def planned(table: RouteTable, batches: Sequence[Sequence[IngressMessage]]) -> list[Plan]:
    """What the router hands its senders for each batch: per endpoint, the messages grouped per key."""
    collector = Collector()
    collector.keep = True
    router = core_router(table, collector)
    plans = []
    for batch in batches:
        collector.sent = []
        router.route(batch)
        plans.append(collector.sent)
    return plans


def _event_data(message: Outgoing) -> EventData:
    data = EventData(message.body)
    if message.properties:
        data.properties = cast(Any, dict(message.properties))
    if message.content_type:
        data.content_type = message.content_type
    data.message_id = message.message_id
    # The partition key each event carries when batches are addressed to a partition.
    return with_partition_key(data, message.order_key)


def _senders_event_data(message: Outgoing) -> EventData:
    """The event as `EventHubSender` makes it (routing/deliver/eventhubs.py: made directly, without the
    SDK's per-field tests), so floor B encoded once is the SDK work the senders do, not more."""
    return with_partition_key(event_data(message), message.order_key)


def _event_hub_batches(
    groups: Sequence[KeyGroup], transport: Any = None, make: Callable[[Outgoing], EventData] = _event_data
) -> list[EventDataBatch]:
    """One batch per partition (more when one is full), each key's events in order, each made by `make`;
    `transport` as `EventDataBatch` takes it (None: the SDK's own)."""
    options: dict[str, Any] = {} if transport is None else {"amqp_transport": transport}
    open_batches: dict[str, EventDataBatch] = {}
    batches = []
    for group in groups:
        partition = partition_for(group.key, PARTITION_IDS)
        batch = open_batches.get(partition)
        for message in group.messages:
            data = make(message)
            if batch is not None:
                try:
                    batch.add(data)
                    continue
                except ValueError:  # full: this partition's next batch
                    pass
            batch = open_batches[partition] = EventDataBatch(
                partition_id=partition, max_size_in_bytes=MAX_MESSAGE_SIZE, **options
            )
            batches.append(batch)
            batch.add(data)
    return batches


def _service_bus_batches(
    groups: Sequence[KeyGroup],
    transport: Any = None,
    make: Callable[[Outgoing], ServiceBusMessage] = constructed,
) -> list[ServiceBusMessageBatch]:
    """One batch for every session (more when it is full), each message made by `make`; `transport` as the
    batch takes it."""
    options: dict[str, Any] = {} if transport is None else {"amqp_transport": transport}
    batch = ServiceBusMessageBatch(max_size_in_bytes=MAX_MESSAGE_SIZE, **options)
    batches = [batch]
    for group in groups:
        for message in group.messages:
            sb_message = make(message)
            try:
                batch.add_message(sb_message)
            except MessageSizeExceededError:
                batch = ServiceBusMessageBatch(max_size_in_bytes=MAX_MESSAGE_SIZE, **options)
                batches.append(batch)
                batch.add_message(sb_message)
    return batches


def floor_b(plans: Sequence[Plan]) -> Callable[[], None]:
    def run() -> None:
        for plan in plans:
            for endpoint, groups in plan:
                if endpoint.type is EndpointType.EVENT_HUB:
                    _event_hub_batches(groups)
                elif endpoint.type is EndpointType.SERVICE_BUS:
                    _service_bus_batches(groups)
                else:
                    [orjson.loads(m.body) for g in groups for m in g.messages]

    return run


def floor_b_once(plans: Sequence[Plan]) -> Callable[[], None]:
    """Floor B as the production senders' clients do it: every AMQP message encoded once (their
    transports), each event and message made as `EventHubSender` and `ServiceBusEndpointSender` make them,
    and each Event Grid request's body the
    events' JSON joined, as `EventGridSender` posts it (the SDK's `send` would parse and serialise every
    event)."""

    def run() -> None:
        for plan in plans:
            for endpoint, groups in plan:
                if endpoint.type is EndpointType.EVENT_HUB:
                    _event_hub_batches(groups, EventHubsTransport, _senders_event_data)
                elif endpoint.type is EndpointType.SERVICE_BUS:
                    _service_bus_batches(groups, ServiceBusTransport, service_bus_message)
                else:
                    _ = b"[" + b",".join([m.body for g in groups for m in g.messages]) + b"]"

    return run


# --- the router core plus the SDK work ---------------------------------------------------------------


class _OpenProducer:
    """A partition's producer as a connected client holds it: running (its link open)."""

    closed = False
    running = True


class _OfflineProducer:
    """What `EventHubSender` asks of a producer, without a connection: the hub's partitions, the SDK's own
    batch; and what a connected client looks like to it (the link's size known, each partition's producer
    running), so the senders take the path they take once connected."""

    _max_message_size_on_link = MAX_MESSAGE_SIZE

    def __init__(self) -> None:
        self._producers = {pid: _OpenProducer() for pid in PARTITION_IDS}

    def get_partition_ids(self) -> list[str]:
        return list(PARTITION_IDS)

    def create_batch(self, *, partition_id: str | None = None, partition_key: str | None = None) -> EventDataBatch:
        # With the transport the production client is given (routing/deliver/transports.py), as it is.
        return EventDataBatch(
            partition_id=partition_id,
            partition_key=partition_key,
            max_size_in_bytes=MAX_MESSAGE_SIZE,
            amqp_transport=EventHubsTransport,
        )


class _OfflineQueueSender:
    # A connected sender: its link open, its size known.
    _max_message_size_on_link = MAX_MESSAGE_SIZE
    _running = True
    _handler = object()

    def create_message_batch(self) -> ServiceBusMessageBatch:
        return ServiceBusMessageBatch(max_size_in_bytes=MAX_MESSAGE_SIZE, amqp_transport=ServiceBusTransport)


class OfflineEventHubSender(EventHubSender):
    def _new_client(self, setting: str) -> EventHubProducerClient:
        return cast(EventHubProducerClient, _OfflineProducer())

    def _transmit(self, client: EventHubProducerClient, prepared: Prepared, timeout: float) -> None:
        pass


class OfflineServiceBusSender(ServiceBusEndpointSender):
    def _new_client(self, setting: str) -> ServiceBusSender:
        return cast(ServiceBusSender, _OfflineQueueSender())

    def _transmit(self, client: ServiceBusSender, prepared: Prepared, timeout: float) -> None:
        pass


class OfflineEventGridSender(EventGridSender):
    def _new_client(self, setting: str) -> Any:
        return None

    def _transmit(self, client: Any, prepared: Prepared, timeout: float) -> None:
        pass


_OFFLINE: dict[EndpointType, type[ClientSender[Any]]] = {
    EndpointType.EVENT_HUB: OfflineEventHubSender,
    EndpointType.SERVICE_BUS: OfflineServiceBusSender,
    EndpointType.EVENT_GRID: OfflineEventGridSender,
}


class OfflinePool:
    """Like `routing.deliver.pool.SenderPool`: one production sender per endpoint, reused, but on offline clients."""

    def __init__(self, lanes: int | None = None) -> None:
        self._senders: dict[str, Sender] = {}
        # None: the production default (`routing.deliver.senders.DEFAULT_LANES`).
        self._options: dict[str, Any] = {} if lanes is None else {"lanes": lanes}

    def __call__(self, endpoint: Endpoint) -> Sender:
        sender = self._senders.get(endpoint.name)
        if sender is None:
            kind = _OFFLINE[endpoint.type]
            sender = self._senders[endpoint.name] = kind(endpoint, retry=RetryOptions(), **self._options)
        return sender


def sdk_router(table: RouteTable, *, lanes: int | None = None) -> Router:
    return Router(routes=StaticRoutes(table), senders=OfflinePool(lanes), dead_letters=MemoryDeadLetters())


def outgoing_count(plans: Sequence[Plan]) -> int:
    return sum(len(g.messages) for plan in plans for _endpoint, groups in plan for g in groups)
