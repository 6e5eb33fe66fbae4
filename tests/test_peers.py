"""The local Azure stand-ins work with the real, unmodified SDKs.

These pin the test infrastructure itself: what the Event Hubs, Service Bus and Event Grid clients send
arrives intact and in order, and each injected fault surfaces as the exception the SDK raises against
Azure. Clients are shared where a test does not need a fresh connection, because each SDK connection
costs about half a second of the SDK's own polling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridEvent, EventGridPublisherClient
from azure.eventhub import EventData, EventHubProducerClient
from azure.eventhub.exceptions import AuthenticationError, ConnectError, EventDataSendError
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSender
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    ServiceBusAuthenticationError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusServerBusyError,
)

from routing.deliver.eventhubs import with_partition_key
from tests.peers.amqp import MESSAGE_SIZE_EXCEEDED, NOT_ALLOWED, SERVER_BUSY, AmqpPeer, pad_frame_body
from tests.peers.eventgrid import EventGridReceiver

HUB = "hub1"
QUEUE = "queue1"
TOPIC = "topic1"
SECONDARY_KEY = "SECONDARY_KEY_VALUE"


def eh_client(connection_string: str, *, retries: int = 0) -> EventHubProducerClient:
    # Short backoff: the SDK still retries, so tests see it, without seconds of waiting.
    return EventHubProducerClient.from_connection_string(
        connection_string, retry_total=retries, retry_backoff_factor=0.01, retry_backoff_max=0.05
    )


def sb_client(connection_string: str, *, retries: int = 0) -> ServiceBusClient:
    return ServiceBusClient.from_connection_string(
        connection_string, retry_total=retries, retry_backoff_factor=0.01, retry_backoff_max=0.05
    )


@pytest.fixture(scope="module")
def amqp_peer() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities={HUB, QUEUE, TOPIC}) as peer:
        yield peer


@pytest.fixture
def peer(amqp_peer: AmqpPeer) -> Iterator[AmqpPeer]:
    amqp_peer.clear()
    yield amqp_peer
    amqp_peer.clear()


@pytest.fixture(scope="module")
def producer(amqp_peer: AmqpPeer) -> Iterator[EventHubProducerClient]:
    with eh_client(amqp_peer.connection_string(HUB), retries=2) as client:
        yield client


@pytest.fixture(scope="module")
def servicebus(amqp_peer: AmqpPeer) -> Iterator[ServiceBusClient]:
    with sb_client(amqp_peer.connection_string(), retries=2) as client:
        yield client


@pytest.fixture(scope="module")
def queue_sender(servicebus: ServiceBusClient) -> Iterator[ServiceBusSender]:
    with servicebus.get_queue_sender(QUEUE) as sender:
        yield sender


def send_keyed_batch(producer: EventHubProducerClient, key: str, bodies: list[str]) -> None:
    batch = producer.create_batch(partition_key=key)
    for body in bodies:
        event = EventData(body)
        event.properties = {"Type": "SensorChange", "seq": bodies.index(body)}
        batch.add(event)
    producer.send_batch(batch)


# -- the frame padding that keeps the SDKs' decoder happy ---------------------------------------------


def test_padding_completes_trailing_fields_of_performatives_and_nested_errors() -> None:
    end_without_fields = bytes.fromhex("00531745")  # END as proton writes it: list0
    assert pad_frame_body(end_without_fields) == bytes.fromhex("005317c0020140")  # one null field
    # CLOSE carrying an error with only a condition: the error gains description and info.
    condition = b"\xa3\x0bamqp:x:test"
    error = b"\x00\x53\x1d" + bytes((0xC0, len(condition) + 1, 1)) + condition
    close = b"\x00\x53\x18" + bytes((0xC0, len(error) + 1, 1)) + error
    padded_error = b"\x00\x53\x1d" + bytes((0xC0, len(condition) + 3, 3)) + condition + b"\x40\x40"
    assert pad_frame_body(close) == b"\x00\x53\x18" + bytes((0xC0, len(padded_error) + 1, 1)) + padded_error


def test_padding_keeps_a_transfer_payload_byte_for_byte() -> None:
    transfer = bytes.fromhex("005314c0040252015201")  # handle 1, delivery-id 1
    payload = bytes.fromhex("005375a003616263")
    padded = pad_frame_body(transfer + payload)
    assert padded.endswith(payload)
    assert padded[:6] == bytes.fromhex("005314c00e0b")  # 11 fields now: 4 bytes of values, 9 nulls


# -- Event Hubs ----------------------------------------------------------------------------------------


def test_event_hub_batch_arrives_with_partition_key_body_and_properties(
    peer: AmqpPeer, producer: EventHubProducerClient
) -> None:
    send_keyed_batch(producer, "device-7", ["first", "second"])

    received = peer.received(HUB)
    assert [m.body for m in received] == [b"first", b"second"]
    assert {m.partition_key for m in received} == {"device-7"}
    assert received[0].application_properties == {"Type": "SensorChange", "seq": 0}
    assert all(m.batched and m.entity == HUB for m in received)


def test_event_hub_batches_keep_their_order(peer: AmqpPeer, producer: EventHubProducerClient) -> None:
    send_keyed_batch(producer, "device-1", ["a1", "a2", "a3"])
    send_keyed_batch(producer, "device-1", ["b1", "b2"])

    assert [m.text for m in peer.received(HUB)] == ["a1", "a2", "a3", "b1", "b2"]


def test_event_hub_batch_spanning_many_frames_is_unpacked(peer: AmqpPeer, producer: EventHubProducerClient) -> None:
    bodies = [f"{i:04d}".ljust(2000, "x") for i in range(100)]  # ~200 KB: several 32 KB transfer frames
    send_keyed_batch(producer, "device-9", bodies)

    assert [m.text for m in peer.received(HUB)] == bodies


def test_event_hub_partition_id_send_reads_partitions_from_management(peer: AmqpPeer) -> None:
    with eh_client(peer.connection_string(HUB)) as client:
        assert client.get_partition_ids() == ["0", "1"]
        batch = client.create_batch(partition_id="1")
        batch.add(EventData(b"to partition 1"))
        client.send_batch(batch)

    [message] = peer.received(HUB)
    assert (message.partition_id, message.body) == ("1", b"to partition 1")
    assert ("com.microsoft:eventhub", HUB) in peer.stats().management_requests


def test_a_partition_batch_keeps_each_events_partition_key_annotation(peer: AmqpPeer) -> None:
    # What the buffered producers send: a batch addressed to a partition, each event stamped with its key.
    with eh_client(peer.connection_string(HUB)) as client:
        batch = client.create_batch(partition_id="0")
        for key, body in [("device-1", "a"), ("device-2", "b"), ("device-1", "c")]:
            batch.add(with_partition_key(EventData(body), key))
        client.send_batch(batch)

    received = peer.received(HUB)
    assert [(m.partition_id, m.partition_key, m.text) for m in received] == [
        ("0", "device-1", "a"),
        ("0", "device-2", "b"),
        ("0", "device-1", "c"),
    ]
    assert peer.stats().deliveries_accepted == 1


def test_a_fault_can_target_one_partition(peer: AmqpPeer) -> None:
    peer.server_busy(1, entity=HUB, partition="1")
    with eh_client(peer.connection_string(HUB)) as client:
        for partition in ("0", "1"):
            batch = client.create_batch(partition_id=partition)
            batch.add(EventData(f"to {partition}"))
            if partition == "1":
                with pytest.raises(EventDataSendError, match="server-busy"):
                    client.send_batch(batch)
            else:
                client.send_batch(batch)

    assert [(m.partition_id, m.text) for m in peer.received(HUB)] == [("0", "to 0")]


# -- Service Bus ---------------------------------------------------------------------------------------


def test_service_bus_queue_message_carries_session_id_message_id_and_properties(
    peer: AmqpPeer, queue_sender: ServiceBusSender
) -> None:
    queue_sender.send_messages(
        ServiceBusMessage(
            '{"Value": 3}',
            session_id="device-7",
            message_id="msg-1",
            correlation_id="corr-1",
            content_type="application/json",
            application_properties={"Type": "SensorChange"},
        )
    )
    batch = queue_sender.create_message_batch()
    batch.add_message(ServiceBusMessage("b1", session_id="device-7", message_id="msg-2"))
    batch.add_message(ServiceBusMessage("b2", session_id="device-7", message_id="msg-3"))
    queue_sender.send_messages(batch)

    first, *batched = peer.received(QUEUE)
    assert (first.group_id, first.message_id, first.correlation_id) == ("device-7", "msg-1", "corr-1")
    assert first.content_type == "application/json"
    assert first.application_properties == {"Type": "SensorChange"}
    assert first.body == b'{"Value": 3}'
    assert [(m.message_id, m.session_id, m.batched) for m in batched] == [
        ("msg-2", "device-7", True),
        ("msg-3", "device-7", True),
    ]


def test_one_service_bus_batch_carries_many_sessions(peer: AmqpPeer, queue_sender: ServiceBusSender) -> None:
    batch = queue_sender.create_message_batch()
    for session in ("s-1", "s-2", "s-1"):
        batch.add_message(ServiceBusMessage(session, session_id=session))
    queue_sender.send_messages(batch)

    assert [m.session_id for m in peer.received(QUEUE)] == ["s-1", "s-2", "s-1"]
    assert peer.stats().deliveries_accepted == 1


def test_a_partitioned_entity_refuses_a_batch_mixing_sessions_and_takes_one_session(
    peer: AmqpPeer, queue_sender: ServiceBusSender
) -> None:
    peer.partition_entities({QUEUE})
    mixed = queue_sender.create_message_batch()
    for session in ("s-1", "s-2"):
        mixed.add_message(ServiceBusMessage(session, session_id=session))
    with pytest.raises(ServiceBusError, match="not-allowed") as refused:
        queue_sender.send_messages(mixed)
    assert "distinct SessionId" in str(refused.value)
    single = queue_sender.create_message_batch()
    for body in ("a", "b"):
        single.add_message(ServiceBusMessage(body, session_id="s-1"))
    queue_sender.send_messages(single)

    assert [(m.session_id, m.text) for m in peer.received(QUEUE)] == [("s-1", "a"), ("s-1", "b")]
    assert peer.stats().deliveries_rejected == (NOT_ALLOWED,)


def test_service_bus_topic_send_arrives(peer: AmqpPeer, servicebus: ServiceBusClient) -> None:
    with servicebus.get_topic_sender(TOPIC) as sender:
        sender.send_messages([ServiceBusMessage("t1"), ServiceBusMessage("t2")])

    assert [m.text for m in peer.received(TOPIC)] == ["t1", "t2"]
    assert peer.received(QUEUE) == []


# -- faults --------------------------------------------------------------------------------------------


def test_refused_key_raises_authentication_error_and_the_secondary_key_works(peer: AmqpPeer) -> None:
    peer.refuse_auth(key="SAS_KEY_VALUE")

    with eh_client(peer.connection_string(HUB)) as primary, pytest.raises(AuthenticationError, match="401"):
        primary.send_batch([EventData("lost")])
    with eh_client(peer.connection_string(HUB, key=SECONDARY_KEY)) as secondary:
        secondary.send_batch([EventData("delivered")])
    # A Service Bus sender authenticates when it opens, so the error comes from entering the `with`.
    with (
        sb_client(peer.connection_string()) as client,
        pytest.raises(ServiceBusAuthenticationError),
        client.get_queue_sender(QUEUE) as sender,
    ):
        sender.send_messages(ServiceBusMessage("lost"))

    assert [m.text for m in peer.received()] == ["delivered"]
    assert peer.stats().cbs_refused == 2


def test_server_busy_is_retried_by_the_sdk_and_recorded_once(
    peer: AmqpPeer, producer: EventHubProducerClient, queue_sender: ServiceBusSender
) -> None:
    peer.server_busy(1)
    send_keyed_batch(producer, "device-1", ["e1", "e2"])
    peer.server_busy(1)
    queue_sender.send_messages(ServiceBusMessage("q1", session_id="device-1"))

    assert [m.text for m in peer.received()] == ["e1", "e2", "q1"]
    assert peer.stats().deliveries_rejected == (SERVER_BUSY, SERVER_BUSY)


def test_server_busy_beyond_the_retries_raises(
    peer: AmqpPeer, producer: EventHubProducerClient, queue_sender: ServiceBusSender
) -> None:
    peer.server_busy(100)
    with pytest.raises(EventDataSendError, match="server-busy"):
        producer.send_batch([EventData("lost")])
    with pytest.raises(ServiceBusServerBusyError):
        queue_sender.send_messages(ServiceBusMessage("lost"))

    assert peer.received() == []


def test_connection_closed_mid_batch_is_retried_without_duplicates(
    peer: AmqpPeer, producer: EventHubProducerClient
) -> None:
    send_keyed_batch(producer, "device-1", ["before"])
    peer.drop_connection_on_next_sends(1)
    send_keyed_batch(producer, "device-1", ["m1", "m2", "m3"])

    assert [m.text for m in peer.received(HUB)] == ["before", "m1", "m2", "m3"]
    assert peer.stats().connections_dropped == 1


def test_connection_closed_without_retries_raises(peer: AmqpPeer) -> None:
    peer.drop_connection_on_next_sends(2)
    # Two drops: the producer client re-creates its producer once after any EventHubError, whatever retry_total.
    with eh_client(peer.connection_string(HUB)) as client, pytest.raises(ConnectError, match="connection:forced"):
        client.send_batch([EventData("lost")])
    peer.drop_connection_on_next_sends(1, abrupt=True)
    with (
        sb_client(peer.connection_string()) as sb,
        sb.get_queue_sender(QUEUE) as sender,
        pytest.raises(ServiceBusConnectionError),
    ):
        sender.send_messages(ServiceBusMessage("lost"))

    assert peer.received() == []


def test_message_too_large_is_rejected(
    peer: AmqpPeer, producer: EventHubProducerClient, queue_sender: ServiceBusSender
) -> None:
    peer.reject_messages_larger_than(1000)
    with pytest.raises(EventDataSendError, match="LinkMessageSizeExceeded"):
        producer.send_event(EventData("x" * 2000))
    with pytest.raises(MessageSizeExceededError):
        queue_sender.send_messages(ServiceBusMessage("x" * 2000))

    assert peer.received() == []
    assert set(peer.stats().deliveries_rejected) == {MESSAGE_SIZE_EXCEEDED}


def test_advertised_max_message_size_limits_sdk_batches(peer: AmqpPeer) -> None:
    peer.max_message_size = 2048
    try:
        with eh_client(peer.connection_string(HUB)) as client:
            batch = client.create_batch()
            assert batch.max_size_in_bytes == 2048
            with pytest.raises(ValueError, match="size limit"):
                batch.add(EventData("x" * 3000))
    finally:
        peer.max_message_size = 1024 * 1024


def test_unknown_entity_is_refused_as_not_found(peer: AmqpPeer) -> None:
    # Azure answers the CBS token for a missing entity with 404; the SDKs raise their auth error.
    with eh_client(peer.connection_string("nohub")) as client, pytest.raises(AuthenticationError, match="404"):
        client.send_batch([EventData("lost")])
    with (
        sb_client(peer.connection_string()) as sb,
        pytest.raises(ServiceBusAuthenticationError),
        sb.get_queue_sender("noqueue") as sender,
    ):
        sender.send_messages(ServiceBusMessage("lost"))

    assert peer.received() == []


# -- Event Grid ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def event_grid() -> Iterator[EventGridReceiver]:
    with EventGridReceiver() as receiver:
        yield receiver


@pytest.fixture
def grid(event_grid: EventGridReceiver) -> Iterator[EventGridReceiver]:
    event_grid.clear()
    yield event_grid
    event_grid.clear()


@pytest.fixture
def publisher(event_grid: EventGridReceiver) -> EventGridPublisherClient:
    # Retry settings must go on each send(): the client drops constructor kwargs for basic topics.
    return EventGridPublisherClient(event_grid.endpoint, AzureKeyCredential(event_grid.key))


def grid_event(subject: str = "SensorChange") -> EventGridEvent:
    return EventGridEvent(subject=subject, event_type="SensorChange", data={"Value": 3}, data_version="1.0")


def test_event_grid_receives_both_schemas(grid: EventGridReceiver, publisher: EventGridPublisherClient) -> None:
    publisher.send([grid_event("one"), grid_event("two")], retry_total=0)
    publisher.send(CloudEvent(source="/twins/t1", type="Microsoft.DigitalTwins.Twin.Update", data={"a": 1}))

    first, second = grid.requests()
    assert first.content_type.startswith("application/json")
    assert [e["subject"] for e in first.events] == ["one", "two"]
    assert first.events[0]["eventType"] == "SensorChange"
    assert second.content_type.startswith("application/cloudevents-batch+json")
    assert second.events[0]["type"] == "Microsoft.DigitalTwins.Twin.Update"
    assert second.events[0]["data"] == {"a": 1}
    assert first.size > 0 and len(grid.events()) == 3


def test_event_grid_wrong_key_raises_client_authentication_error(grid: EventGridReceiver) -> None:
    wrong = EventGridPublisherClient(grid.endpoint, AzureKeyCredential("not-the-key"))
    with pytest.raises(ClientAuthenticationError):
        wrong.send([grid_event()], retry_total=0)
    assert grid.events() == []
    assert [r.status for r in grid.requests()] == [401]


@pytest.mark.parametrize("status", [413, 429, 500])
def test_event_grid_error_status_raises_http_response_error(
    grid: EventGridReceiver, publisher: EventGridPublisherClient, status: int
) -> None:
    grid.fail_next(status)
    with pytest.raises(HttpResponseError) as raised:
        publisher.send([grid_event()], retry_total=0)
    assert raised.value.status_code == status
    assert grid.events() == []


def test_event_grid_server_error_is_retried_by_the_sdk(
    grid: EventGridReceiver, publisher: EventGridPublisherClient
) -> None:
    grid.fail_next(500)
    grid.fail_next(429, retry_after=0.01)  # azure-core retries a POST on 429 only with Retry-After
    publisher.send([grid_event()], retry_total=3, retry_backoff_factor=0.01)

    assert [r.status for r in grid.requests()] == [500, 429, 200]
    assert len(grid.events()) == 1


def test_event_grid_can_fail_every_nth_request_until_reset(
    grid: EventGridReceiver, publisher: EventGridPublisherClient
) -> None:
    grid.fail_every(3, 500)
    for _ in range(7):
        with contextlib.suppress(HttpResponseError):
            publisher.send([grid_event()], retry_total=0)
    grid.reset_faults()
    publisher.send([grid_event()], retry_total=0)
    assert [r.status for r in grid.requests()] == [200, 200, 500, 200, 200, 500, 200, 200]
