"""routing/deliver/amqp_encoding.py writes the bytes the SDKs' own encoder writes (pyamqp's `encode_payload`),
or nothing: on real `EventData` and `ServiceBusMessage`s built as the senders build them, and on many the
router never makes (every value type, lengths either side of each 8-bit limit, ids of every kind). Where
it declines, the SDK encodes (and raises its own errors); the router's own messages never make it decline."""

from __future__ import annotations

import datetime
import uuid
from typing import Any, cast

import pytest
from azure.eventhub import EventData, EventDataBatch
from azure.eventhub._pyamqp._encode import encode_payload as eventhub_encode
from azure.eventhub._pyamqp.message import Header, Message
from azure.eventhub._transport._pyamqp_transport import PyamqpTransport as EventHubsOwn
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus._pyamqp._encode import encode_payload as servicebus_encode
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport as ServiceBusOwn
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from routing.deliver import amqp_encoding, transports
from routing.deliver.eventhubs import event_data, with_partition_key
from routing.deliver.servicebus import service_bus_message
from routing.ingest.classify import classify
from routing.model import Event, IngressMessage, Outgoing

# Lengths either side of the 8-bit limits (255 bytes of a string or binary; 255 bytes of a list or map body).
texts = st.one_of(
    st.text(max_size=12),
    st.text(alphabet="aé€𝄞", min_size=60, max_size=140),  # 1-4 UTF-8 bytes a character: across 255 bytes
    st.integers(250, 260).map(lambda n: "x" * n),
)
blobs = st.one_of(st.binary(max_size=16), st.integers(250, 260).map(lambda n: b"\x00" * n), st.binary(max_size=700))
simple = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-200, 200),
    st.integers(-(2**31) - 2, 2**31 + 2),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    blobs,
)
other = st.one_of(
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
    st.just(datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)),
    st.just(uuid.UUID(int=7)),
)
properties = st.dictionaries(texts, st.one_of(simple, simple, simple, other), max_size=12)
ids = st.one_of(st.none(), texts, st.binary(max_size=8), st.integers(0, 2**64 - 1), st.just(uuid.UUID(int=3)))


def both(encode: Any, message: Any) -> tuple[bytearray | None, bytes | Exception]:
    try:
        expected: bytes | Exception = bytes(encode(bytearray(), message))
    except Exception as error:  # the SDK refuses it: so must the router's encoder (it declines)
        expected = error
    return amqp_encoding.encode(message), expected


def check(encode: Any, message: Any) -> bool:
    ours, theirs = both(encode, message)
    if ours is None:
        return False
    assert not isinstance(theirs, Exception), f"the SDK refused what the router's encoder wrote: {theirs!r}"
    assert bytes(ours) == theirs
    return True


def test_written_for_the_pinned_sdks() -> None:
    assert amqp_encoding.SUPPORTED == {"azure-eventhub": True, "azure-servicebus": True}


def test_a_changed_layout_turns_it_off() -> None:
    """An SDK whose messages are laid out otherwise (or described otherwise) gets its own encoder."""

    class Renamed:
        Header = Header
        Properties = Header  # a Properties with the header's fields
        Message = Message

    class Undescribed:
        Header = object
        Properties = object
        Message = object

    assert not amqp_encoding._matches(Renamed)
    assert not amqp_encoding._matches(Undescribed)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=blobs, props=properties, message_id=ids, content_type=st.one_of(st.none(), texts),
       correlation_id=ids, key=st.one_of(st.none(), texts))  # fmt: skip
def test_event_data_bytes_are_the_sdks(  # noqa: PLR0917 - hypothesis gives each strategy as an argument
    body: bytes, props: dict[str, Any], message_id: Any, content_type: Any, correlation_id: Any, key: Any
) -> None:
    data = EventData(body)
    if props:
        data.properties = props  # type: ignore[assignment]
    if content_type is not None:
        data.content_type = content_type
    if message_id is not None:
        data.message_id = message_id
    if correlation_id is not None:
        data.correlation_id = correlation_id
    if key is not None:
        with_partition_key(data, key)
    check(eventhub_encode, EventHubsOwn.to_outgoing_amqp_message(data.raw_amqp_message))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=blobs, props=properties, message_id=st.one_of(st.none(), texts), session=st.one_of(st.none(), texts),
       content_type=st.one_of(st.none(), texts), subject=st.one_of(st.none(), texts),
       ttl=st.one_of(st.none(), st.integers(1, 10**6)))  # fmt: skip
def test_service_bus_message_bytes_are_the_sdks(  # noqa: PLR0917 - hypothesis gives each strategy as an argument
    body: bytes, props: dict[str, Any], message_id: Any, session: Any, content_type: Any, subject: Any, ttl: Any
) -> None:
    message = ServiceBusMessage(
        body,
        application_properties=cast(Any, props) or None,
        message_id=message_id[:128] if message_id else None,  # the SDK's limit, 128 characters
        session_id=session[:128] if session else None,
        content_type=content_type,
        subject=subject,
        time_to_live=None if ttl is None else datetime.timedelta(milliseconds=ttl),
    )
    try:
        outgoing = ServiceBusOwn.to_outgoing_amqp_message(message._raw_amqp_message)
    except UnicodeDecodeError:  # the SDK's own step before encoding (bytes properties made text) refused it
        assume(False)
    check(servicebus_encode, outgoing)


@pytest.mark.parametrize(
    "payload",
    [
        {"priority": 3, "ttl": 0, "first_acquirer": True, "delivery_count": 300},
        {"priority": 0, "ttl": 255, "first_acquirer": False, "delivery_count": 0},
        {"ttl": 256, "delivery_count": 2**32 - 1},
    ],
)
def test_every_header_field(payload: dict[str, Any]) -> None:
    message = Message(header=Header(durable=True, **payload), data=[b"x"])
    assert check(eventhub_encode, message)


@pytest.mark.parametrize("length", range(244, 256))
def test_a_map_or_list_body_either_side_of_255_bytes(length: int) -> None:
    """A map's (or list's) body of 255 bytes takes 32-bit sizes; 254 still fits 8-bit ones (pyamqp's rule)."""
    data = EventData(b"x")
    data.properties = {"k": "v" * length}  # 3 + 2 + length bytes of map body
    data.message_id = "m" * (length - 4)  # a properties list of 13 fields: 2 + length - 4 + 12 bytes
    assert check(eventhub_encode, EventHubsOwn.to_outgoing_amqp_message(data.raw_amqp_message))


def test_text_that_is_not_utf_8_is_left_to_the_sdk_which_refuses_it() -> None:
    """A lone surrogate cannot be written as UTF-8: the router's encoder declines, the SDK's raises (the
    senders make that an unsendable message, as before)."""
    data = EventData(b"x")
    data.properties = {"unit": "\ud800"}
    ours, theirs = both(eventhub_encode, EventHubsOwn.to_outgoing_amqp_message(data.raw_amqp_message))
    assert ours is None
    assert isinstance(theirs, UnicodeEncodeError)


def test_sections_it_does_not_write_go_to_the_sdk() -> None:
    for message in (
        Message(data=[b"x"], footer={b"x-opt-a": "b"}),
        Message(data=[b"x"], delivery_annotations={b"x-opt-a": "b"}),
        Message(value={"a": 1}),
        Message(sequence=[[1]]),
        Message(data=[b"x"], message_annotations=cast(Any, {5: "ulong key"})),
    ):
        assert amqp_encoding.encode(message) is None


def _outgoing(body: bytes, properties: dict[str, Any], content_type: str | None, key: str) -> Outgoing:
    device = {"iothub-connection-device-id": key}
    ingress = IngressMessage(body=body, properties={}, system_properties=device, source="hub")
    (event,) = classify(ingress)
    assert isinstance(event, Event)
    return Outgoing(
        endpoint="e", event=event, body=body, content_type=content_type, properties=properties, order_key=key,
        message_id=str(uuid.uuid4()),
    )  # fmt: skip


# What the router sends: telemetry's properties as the device set them, a twin event's (EventType, Subject,
# CorrelationId, trace context), enrichments of numbers and flags.
# fmt: off
ROUTER_MESSAGES = [
    _outgoing(b'{"Value": 21.5}', {"unit": "C", "alert": "false"}, "application/json", "sensor-1"),
    _outgoing(b"{}" * 200, {"EventType": "SensorChange", "Subject": "SensorChange", "CorrelationId": "c-1",
                            "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "Diagnostic-Id": "x",
                            "reading": 21.5, "count": 3, "ok": True, "site": "plant-7"},
              "application/cloudevents+json; charset=utf-8", "twin-é"),
    _outgoing(b"", {"long": "v" * 300}, None, "k" * 128),
]
# fmt: on


@pytest.mark.parametrize("message", ROUTER_MESSAGES, ids=["telemetry", "twin event", "empty body"])
def test_the_routers_messages_are_written_by_it_through_the_batches(message: Outgoing) -> None:
    """Through the SDKs' batches with the production transports: the router's encoder writes each message
    (never the SDK's), both AMQP messages are made without the SDKs' conversions
    (tests/test_event_conversion.py), and the batch holds the bytes the SDK writes."""
    before = transports.stats.fast, transports.stats.slow, transports.stats.converted_slow
    hub = EventDataBatch(partition_id="0", max_size_in_bytes=1024 * 1024, amqp_transport=transports.EventHubsTransport)
    data = with_partition_key(event_data(message), message.order_key)
    hub.add(data)
    queue = ServiceBusMessageBatch(max_size_in_bytes=1024 * 1024, amqp_transport=transports.ServiceBusTransport)
    sb = service_bus_message(message)
    queue.add_message(sb)
    assert (transports.stats.fast - before[0], transports.stats.slow - before[1]) == (2, 0)
    assert transports.stats.converted_slow == before[2]  # both AMQP messages made by the router too
    assert bytes(hub._message[5][0]) == bytes(
        eventhub_encode(bytearray(), EventHubsOwn.to_outgoing_amqp_message(data.raw_amqp_message))
    )
    assert bytes(queue._message[5][0]) == bytes(
        servicebus_encode(bytearray(), ServiceBusOwn.to_outgoing_amqp_message(sb._raw_amqp_message))
    )
