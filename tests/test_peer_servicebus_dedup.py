"""The AMQP peer is as strict as Service Bus about duplicate detection, through the unmodified SDK: a
repeated MessageId within the window is settled as accepted and dropped (MessageId + PartitionKey on a
partitioned entity), and a partitioned entity with duplicate detection refuses a batch of distinct
MessageIds with the service's condition and words."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import ServiceBusError

from tests.peers.amqp import NOT_ALLOWED, AmqpPeer

QUEUE, OTHER = "dedup-queue", "plain-queue"


@pytest.fixture(scope="module")
def amqp() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities={QUEUE, OTHER}) as peer:
        yield peer


@pytest.fixture(scope="module")
def client(amqp: AmqpPeer) -> Iterator[ServiceBusClient]:
    with ServiceBusClient.from_connection_string(amqp.connection_string(), retry_total=0) as sb:
        yield sb


@pytest.fixture
def peer(amqp: AmqpPeer) -> Iterator[AmqpPeer]:
    amqp.clear()
    yield amqp
    amqp.clear()


def send(
    client: ServiceBusClient, entity: str, *messages: tuple[str, str, str | None], batch_of_one: bool = False
) -> None:
    """One send of (body, message id, session id) messages: a batch when there are several."""
    built = [ServiceBusMessage(body, message_id=mid, session_id=session) for body, mid, session in messages]
    with client.get_queue_sender(entity) as sender:
        if len(built) == 1 and not batch_of_one:
            sender.send_messages(built[0])
        else:
            batch = sender.create_message_batch()
            for message in built:
                batch.add_message(message)
            sender.send_messages(batch)


def test_a_repeated_message_id_is_accepted_and_dropped_on_a_deduplicating_entity_only(
    peer: AmqpPeer, client: ServiceBusClient
) -> None:
    peer.detect_duplicates({QUEUE})
    for entity in (QUEUE, OTHER):
        send(client, entity, ("first", "m-1", None))
        send(client, entity, ("again", "m-1", None))  # the SDK sees success: no exception
        send(client, entity, ("in a batch", "m-1", None), ("new", "m-2", None))

    assert [m.text for m in peer.received(QUEUE)] == ["first", "new"]
    assert [m.text for m in peer.received(OTHER)] == ["first", "again", "in a batch", "new"]
    assert peer.stats().duplicates_dropped == ((QUEUE, "m-1"), (QUEUE, "m-1"))
    assert peer.stats().deliveries_rejected == ()


def test_a_repeat_after_the_window_is_kept(peer: AmqpPeer, client: ServiceBusClient) -> None:
    peer.detect_duplicates({QUEUE}, window=0.0)
    send(client, QUEUE, ("first", "m-1", None))
    send(client, QUEUE, ("again", "m-1", None))

    assert [m.text for m in peer.received(QUEUE)] == ["first", "again"]


def test_a_partitioned_entity_deduplicates_on_message_id_and_partition_key(
    peer: AmqpPeer, client: ServiceBusClient
) -> None:
    peer.partition_entities({QUEUE})
    peer.detect_duplicates({QUEUE})
    send(client, QUEUE, ("s-1", "m-1", "s-1"))
    send(client, QUEUE, ("s-2", "m-1", "s-2"))  # same id, another session (its partition key): kept
    send(client, QUEUE, ("s-1 again", "m-1", "s-1"))

    assert [m.text for m in peer.received(QUEUE)] == ["s-1", "s-2"]
    assert peer.stats().duplicates_dropped == ((QUEUE, "m-1"),)


def test_a_partitioned_deduplicating_entity_refuses_a_batch_of_distinct_message_ids(
    peer: AmqpPeer, client: ServiceBusClient
) -> None:
    peer.partition_entities({QUEUE, OTHER})
    peer.detect_duplicates({QUEUE})
    one_session = [("a", "m-1", "s-1"), ("b", "m-2", "s-1")]
    with pytest.raises(ServiceBusError, match="not-allowed") as refused:
        send(client, QUEUE, *one_session)
    assert (
        "Batching brokered messages with distinct SessionId, PartitionKey, or MessageId  is not supported for an "
        "entity with partitioning and duplicate detection enabled"
    ) in str(refused.value)
    send(client, OTHER, *one_session)  # partitioned without duplicate detection: one session is fine
    send(client, QUEUE, one_session[0])  # one message per send is what the service takes,
    send(client, QUEUE, one_session[1], batch_of_one=True)  # in a batch of one too (its envelope has its ids)

    assert [m.text for m in peer.received(OTHER)] == ["a", "b"]
    assert [(m.text, m.message_id) for m in peer.received(QUEUE)] == [("a", "m-1"), ("b", "m-2")]
    assert peer.stats().deliveries_rejected == (NOT_ALLOWED,)
