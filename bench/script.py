"""The script baseline: the sender a competent user would write by hand to deliver exactly what the
router delivers, with the same SDKs and the fewest sends, everything that can be worked out beforehand
worked out beforehand.

It is given the router's outgoing messages for each trigger batch (the router's own plan: what
`Router.route` hands its senders, `bench.stages.planned`), already grouped per destination and, for an
event hub, per partition (the service's hash of each key, worked out beforehand); Event Grid events
already parsed into the dicts `send` takes. Per trigger batch it then does only what has to happen at
send time, one send after another on one thread:

* an event hub: one `EventDataBatch(partition_id=...)` per partition (another when one is full), each
  event stamped with its partition key (`raw_amqp_message.annotations`, as the SDK's buffered producer
  does), `send_batch`;
* a Service Bus queue: one `ServiceBusMessageBatch` for every session of the batch (another when full),
  each message with its `session_id`, `send_messages` (one batch per session would be a send per
  message here: nearly every twin is its own key);
* an Event Grid topic: `EventGridPublisherClient.send` of the list of events (one request per topic and
  batch, as the router posts).

Clients are opened once, before anything is timed (`open`, then a first pass that opens each
partition's link); they are the public SDK clients with their defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from azure.core.credentials import AzureKeyCredential
from azure.eventgrid import EventGridPublisherClient
from azure.eventhub import EventData, EventDataBatch, EventHubProducerClient
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusMessageBatch, ServiceBusSender
from azure.servicebus.exceptions import MessageSizeExceededError

from bench.stages import Plan
from routing.deliver.eventgrid import topic_endpoint
from routing.deliver.eventhubs import PARTITION_KEY_ANNOTATION, partition_for
from routing.model import EndpointType

PARTITION_IDS = ("0", "1", "2", "3")


@dataclass(frozen=True, slots=True)
class Message:
    """One outgoing message as the script holds it: the bytes and what goes beside them."""

    body: bytes
    properties: dict[str, Any]
    content_type: str | None
    message_id: str
    key: str  # the partition key or the session id


@dataclass(frozen=True, slots=True)
class HubSend:
    hub: str
    partition: str
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class QueueSend:
    queue: str
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class GridSend:
    url: str
    events: list[dict[str, Any]]


Send = HubSend | QueueSend | GridSend


def _message(body: bytes, properties: Any, content_type: str | None, message_id: str, key: str) -> Message:
    return Message(body, dict(properties), content_type, message_id, key)


def precompute(plans: Sequence[Plan]) -> list[list[Send]]:
    """Per trigger batch, the sends that deliver what the router delivers, in the router's endpoint order."""
    batches = []
    for plan in plans:
        sends: list[Send] = []
        for endpoint, groups in plan:
            messages = [
                _message(m.body, m.properties, m.content_type, m.message_id, g.key) for g in groups for m in g.messages
            ]
            if endpoint.type is EndpointType.EVENT_HUB:
                per_partition: dict[str, list[Message]] = {}
                for message in messages:
                    per_partition.setdefault(partition_for(message.key, PARTITION_IDS), []).append(message)
                sends.extend(HubSend(endpoint.path, p, tuple(ms)) for p, ms in per_partition.items())
            elif endpoint.type is EndpointType.SERVICE_BUS:
                sends.append(QueueSend(endpoint.path, tuple(messages)))
            elif endpoint.type is EndpointType.EVENT_GRID:
                sends.append(GridSend(topic_endpoint(endpoint.path), [orjson.loads(m.body) for m in messages]))
            else:
                raise ValueError(f"the script sends to event hubs, Service Bus and Event Grid, not {endpoint.type}")
        batches.append(sends)
    return batches


class Script:
    """The hand-written sender, over one AMQP namespace and one Event Grid key."""

    def __init__(self, *, amqp_connection: str, grid_key: str) -> None:
        self._amqp = amqp_connection
        self._grid_key = grid_key
        self._hubs: dict[str, EventHubProducerClient] = {}
        self._bus: ServiceBusClient | None = None
        self._queues: dict[str, ServiceBusSender] = {}
        self._grids: dict[str, EventGridPublisherClient] = {}

    def open(self, batches: Sequence[Sequence[Send]]) -> None:
        """One client per destination of `batches`, built before anything is timed."""
        if self._bus is None:
            self._bus = ServiceBusClient.from_connection_string(self._amqp)
        for send in (s for batch in batches for s in batch):
            if isinstance(send, HubSend) and send.hub not in self._hubs:
                self._hubs[send.hub] = EventHubProducerClient.from_connection_string(self._amqp, eventhub_name=send.hub)
            elif isinstance(send, QueueSend) and send.queue not in self._queues:
                self._queues[send.queue] = self._bus.get_queue_sender(queue_name=send.queue)
            elif isinstance(send, GridSend) and send.url not in self._grids:
                self._grids[send.url] = EventGridPublisherClient(send.url, AzureKeyCredential(self._grid_key))

    def run(self, batches: Sequence[Sequence[Send]]) -> None:
        """Every trigger batch's sends, in order (clients opened by `open`)."""
        for batch in batches:
            for send in batch:
                if isinstance(send, HubSend):
                    self._send_hub(send)
                elif isinstance(send, QueueSend):
                    self._send_queue(send)
                else:
                    self._grids[send.url].send(cast(Any, send.events))

    def _send_hub(self, send: HubSend) -> None:
        client = self._hubs[send.hub]
        batch: EventDataBatch = client.create_batch(partition_id=send.partition)
        for message in send.messages:
            data = EventData(message.body)
            if message.properties:
                data.properties = cast(Any, message.properties)
            if message.content_type:
                data.content_type = message.content_type
            data.message_id = message.message_id
            raw = data.raw_amqp_message
            raw.annotations = {**(raw.annotations or {}), PARTITION_KEY_ANNOTATION: message.key}
            if raw.header is not None:
                raw.header.durable = True
            try:
                batch.add(data)
            except ValueError:  # full
                client.send_batch(batch)
                batch = client.create_batch(partition_id=send.partition)
                batch.add(data)
        client.send_batch(batch)

    def _send_queue(self, send: QueueSend) -> None:
        sender = self._queues[send.queue]
        batch: ServiceBusMessageBatch = sender.create_message_batch()
        for message in send.messages:
            built = ServiceBusMessage(
                message.body,
                session_id=message.key,
                message_id=message.message_id,
                application_properties=cast(Any, message.properties) or None,
                content_type=message.content_type,
            )
            try:
                batch.add_message(built)
            except MessageSizeExceededError:
                sender.send_messages(batch)
                batch = sender.create_message_batch()
                batch.add_message(built)
        sender.send_messages(batch)

    def close(self) -> None:
        for hub in self._hubs.values():
            hub.close()
        for queue in self._queues.values():
            queue.close()
        if self._bus is not None:
            self._bus.close()
        for grid in self._grids.values():
            grid.close()
        self._hubs, self._queues, self._grids, self._bus = {}, {}, {}, None
