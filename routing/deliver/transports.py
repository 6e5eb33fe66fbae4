"""The Event Hubs and Service Bus SDKs' own pyamqp transports, with three changes: each message is encoded
once as it joins a batch, an event's AMQP message is made without the SDK's per-field tests, and a link
opens without sleeping between the handshake's frames.

Both SDKs do all their AMQP work through a transport class (`PyamqpTransport`): the clients take one as
`amqp_transport` (an Event Hubs client keyword; a Service Bus sender's `_amqp_transport`) and hand it to
their producers, senders and batches. The transports below are those classes, subclassed:

- **Encoded once.** `EventDataBatch.add` and `ServiceBusMessageBatch.add_message` (azure-eventhub 5.15,
  azure-servicebus 7.14, their vendored pyamqp) encode a message to learn its size
  (`get_message_encoded_size`), then encode it again to append it (`add_batch` -> `utils.add_batch`); the
  encoder is pure Python and was the largest share of the router's CPU (issue #15). Here the encoding of
  the first call is kept for the second, on the same thread, when it is for the same message object:
  the bytes appended are the ones the SDK would have appended. That one encoding is the router's own
  (routing/deliver/amqp_encoding.py: the same bytes, written for the router's messages, at a seventh of
  the cost), or the SDK's for a message it does not write.
- **An event's AMQP message made directly.** `EventDataBatch.add` has the transport's
  `to_outgoing_amqp_message` make each event's pyamqp `Message`; the SDK's tests whether the header and
  properties are empty and whether any field is set through `DictMixin`, whose length and values are lists
  of the public attribute names built per call (four per event; with `EventData`'s own setters, about 120
  `str.startswith` calls an event). Here the same `Message` is made from the fields themselves: 3.3-3.7 µs
  against 10.4-11.7 µs an event (`timeit`, a telemetry event as the router makes it). A header or
  properties holding anything but the fields azure-eventhub 5.15 gives them goes to the SDK's conversion
  (tests/test_event_conversion.py compares the two on generated messages). A Service Bus message's the
  same way (3.8 against 8.0 µs), but for what azure-servicebus's conversion does more (a time to live,
  bytes application properties, long annotations), which goes to it.
- **Opened promptly.** Opening a producer or sender (`_open`, `_send_message_impl`, a management request)
  polls `client_ready()` with `time.sleep(0.05)` between polls, and each poll reads one frame of the
  handshake (SASL, open, begin, the CBS links and the token, the link's attach): 9 sleeps for a Service
  Bus sender, 25 for an Event Hubs producer with its partition-ids request. Against the local peer a
  cold connect and first send took 1.3-1.6 s (Event Hubs) and 0.46 s (Service Bus) with them, 19-20 ms
  and 6 ms without (`python -m bench.connect`); on Azure, wherever a round trip is shorter than 50 ms (in
  one region it is a few), each sleep outlasts the frame it waits for. Every reconnect after
  a lost connection pays it again, which made a reset cost a batch about half a second. The clients
  made here answer `client_ready()` by reading frames as they come (each read blocks on the socket, up
  to the SDK's socket timeout, 0.2 s, so it never spins) until the link is ready or that timeout has
  passed, when they say "not yet" as the SDK's would, and the SDK's loop goes on as before.

There is no public way to do any of them: they rest on the transport attribute, on the fields of the
header and properties, on `create_send_client` and `create_mgmt_client` building the clients, on
`client_ready()` being how the SDK waits, and on the two encoding calls coming in that order for the same
message. An SDK upgrade that changes these leaves the router correct and only slower (a miss encodes as
the SDK does; a header or properties laid out otherwise is converted as the SDK does; a client not made
here polls as the SDK does); `stats` counts each so tests say when that happens (tests/test_transports.py,
tests/test_amqp_encoding.py), and the pins in constraints.txt hold the versions they were checked against.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from azure.eventhub._pyamqp._encode import encode_payload as _eventhub_encode
from azure.eventhub._pyamqp.message import Header as _Header
from azure.eventhub._pyamqp.message import Message as _Message
from azure.eventhub._pyamqp.message import Properties as _Properties
from azure.eventhub._transport._pyamqp_transport import PyamqpTransport as _EventHubTransport
from azure.servicebus._pyamqp._encode import encode_payload as _servicebus_encode
from azure.servicebus._pyamqp.message import Header as _SbHeader
from azure.servicebus._pyamqp.message import Message as _SbMessage
from azure.servicebus._pyamqp.message import Properties as _SbProperties
from azure.servicebus._transport._pyamqp_transport import _LONG_ANNOTATIONS as _SB_LONG_ANNOTATIONS
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport as _ServiceBusTransport

from routing.deliver import amqp_encoding


@dataclass
class Stats:
    """Appends that reused the size's encoding (hits) and those that encoded again (misses); clients made
    to open promptly (prompt); messages encoded by the router's encoder (fast) and by the SDK's (slow);
    events whose AMQP message the SDK's own conversion made (converted_slow)."""

    hits: int = 0
    misses: int = 0
    prompt: int = 0
    fast: int = 0
    slow: int = 0
    converted_slow: int = 0


# Counted without a lock: exact on one thread, at worst an undercount across lanes.
stats = Stats()
# The last message a thread measured, with its encoding: (message, bytes).
_measured = threading.local()


def _measure(encode: Any, message: Any, fast: bool) -> int:
    """The encoded size of `message`, its encoding kept for the append: the router's encoder's bytes when it
    writes the message (`fast`: the SDK's layout is the one it was written for), else the SDK's."""
    output = amqp_encoding.encode(message) if fast else None
    if output is None:
        output = bytearray()
        encode(output, message)
        stats.slow += 1
    else:
        stats.fast += 1
    _measured.last = (message, output)
    return len(output)


def _take(message: Any) -> bytearray | None:
    last = getattr(_measured, "last", None)
    _measured.last = None
    if last is not None and last[0] is message:
        stats.hits += 1
        encoded: bytearray = last[1]
        return encoded
    stats.misses += 1
    return None


A = TypeVar("A")

# A vendored pyamqp's Header, Properties and Message types (each SDK has its own copy).
_PyamqpTypes = tuple[Any, Any, Any]

# The fields of azure-eventhub's and azure-servicebus's `AmqpMessageHeader` and `AmqpMessageProperties`
# (the same in both): each a `DictMixin` whose public attributes are its fields, and nothing else in its
# `__dict__`.
_HEADER_FIELDS = frozenset(("delivery_count", "time_to_live", "first_acquirer", "durable", "priority"))
_PROPERTIES_FIELDS = frozenset(
    ("message_id", "user_id", "to", "subject", "reply_to", "correlation_id", "content_type", "content_encoding",
     "creation_time", "absolute_expiry_time", "group_id", "group_sequence", "reply_to_group_id")
)  # fmt: skip


def alike(a: object, b: object) -> bool:
    """Whether two SDK objects hold the same attributes with the same values, compared through every object
    they hold."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if not hasattr(a, "__dict__"):
        return a == b
    mine, theirs = vars(a), vars(b)
    return mine.keys() == theirs.keys() and all(alike(mine[name], theirs[name]) for name in mine)


def annotated_data(kind: type[A], body: bytes, body_type: Any, *, header: Any, properties: Any, application: Any) -> A:
    """An SDK's `AmqpAnnotatedMessage` of one data section `body` (`kind`, azure-eventhub 5.15's or
    azure-servicebus 7.14's; `body_type` that SDK's `AmqpMessageBodyType.DATA`), its header, properties
    and application properties given, its annotations an empty dict: what the constructor makes of
    `data_body=body` without its keyword tests and run-time `typing` casts (Service Bus evaluates eight
    subscripted types per message). The senders check what they make against the constructor's at import
    (`alike`)."""
    made = kind.__new__(kind)
    made._encoding = "UTF-8"  # type: ignore[attr-defined]
    made._data_body = [body]  # type: ignore[attr-defined]
    made._sequence_body = None  # type: ignore[attr-defined]
    made._value_body = None  # type: ignore[attr-defined]
    made._body_type = body_type  # type: ignore[attr-defined]
    made._header = header  # type: ignore[attr-defined]
    made._footer = None  # type: ignore[attr-defined]
    made._properties = properties  # type: ignore[attr-defined]
    made._application_properties = application  # type: ignore[attr-defined]
    made._annotations = {}  # type: ignore[attr-defined]
    made._delivery_annotations = None  # type: ignore[attr-defined]
    return made


def _outgoing(annotated: Any, annotations: Any, pyamqp: _PyamqpTypes = (_Header, _Properties, _Message)) -> Any:
    """The pyamqp `Message` the SDK's `to_outgoing_amqp_message` makes of `annotated` (azure-eventhub 5.15;
    azure-servicebus 7.14 with `_service_bus_outgoing`'s conditions), its message annotations `annotations`,
    made without its `DictMixin` tests (a header's or properties' length and values are lists of their
    public attribute names built per call: four per message) with that SDK's vendored pyamqp types; None
    when the header or properties hold anything but their fields, for the SDK's own conversion to take."""
    header_type, properties_type, message_type = pyamqp
    header, properties = annotated.header, annotated.properties
    outgoing_header = outgoing_properties = None
    if header is not None:
        fields = header.__dict__
        if fields.keys() != _HEADER_FIELDS:
            return None
        if list(fields.values()).count(None) != len(fields):
            outgoing_header = header_type(
                delivery_count=fields["delivery_count"],
                ttl=fields["time_to_live"],
                first_acquirer=fields["first_acquirer"],
                durable=fields["durable"],
                priority=fields["priority"],
            )
    if properties is not None:
        fields = properties.__dict__
        if fields.keys() != _PROPERTIES_FIELDS:
            return None
        if list(fields.values()).count(None) != len(fields):
            # The same names as pyamqp's `Properties`; the two times made integers when set, as the SDK does.
            created, expires = fields["creation_time"], fields["absolute_expiry_time"]
            outgoing_properties = properties_type(
                **{
                    **fields,
                    "creation_time": int(created) if created else None,
                    "absolute_expiry_time": int(expires) if expires else None,
                }
            )
    return message_type(
        header=outgoing_header,
        properties=outgoing_properties,
        application_properties=annotated.application_properties,
        message_annotations=annotations,
        delivery_annotations=annotated.delivery_annotations,
        data=annotated._data_body,
        sequence=annotated._sequence_body,
        value=annotated._value_body,
        footer=annotated.footer,
    )


_SERVICE_BUS_PYAMQP: _PyamqpTypes = (_SbHeader, _SbProperties, _SbMessage)


def _service_bus_outgoing(annotated: Any) -> Any:
    """The pyamqp `Message` azure-servicebus 7.14's `to_outgoing_amqp_message` makes of `annotated`, when
    that conversion does what azure-eventhub's does (`_outgoing`) but copy the annotations; None (for the
    SDK's own conversion) where it does more: a header with a time to live (creation and expiry times
    stamped from the clock), an application property of bytes (decoded in place), or an annotation it
    writes as an AMQP long (the enqueued and locked-until times of a received message sent again)."""
    header = annotated.header
    if header is not None and header.__dict__.get("time_to_live"):
        return None
    application = annotated.application_properties
    if application and any(isinstance(value, bytes) for value in application.values()):
        return None
    annotations = annotated.annotations
    if annotations and any(key in annotations for key in _SB_LONG_ANNOTATIONS):
        return None
    return _outgoing(annotated, dict(annotations) if annotations else None, _SERVICE_BUS_PYAMQP)


C = TypeVar("C")


def promptly(client: C) -> C:
    """`client` (a pyamqp AMQPClient), its `client_ready()` reading the handshake's frames as they come for
    up to its socket timeout, instead of one frame per call with the caller's 50 ms sleep between."""
    ready = client.client_ready  # type: ignore[attr-defined]
    patience: float = getattr(client, "_socket_timeout", None) or 0.2

    def client_ready() -> bool:
        until = time.monotonic() + patience
        while not ready():  # a poll that is not ready has read (or waited up to the socket timeout for) a frame
            if time.monotonic() >= until:
                return False
        return True

    client.client_ready = client_ready  # type: ignore[attr-defined]
    stats.prompt += 1
    return client


class EventHubsTransport(_EventHubTransport):
    """azure-eventhub's pyamqp transport: each message added to a batch encoded once, links opened promptly,
    an event's AMQP message made without the SDK's per-field tests."""

    @staticmethod
    def to_outgoing_amqp_message(annotated_message: Any) -> Any:
        outgoing = _outgoing(annotated_message, annotated_message.annotations)
        if outgoing is None:
            stats.converted_slow += 1
            return _EventHubTransport.to_outgoing_amqp_message(annotated_message)  # type: ignore[no-untyped-call]
        return outgoing

    @staticmethod
    def get_message_encoded_size(message: Any) -> int:
        return _measure(_eventhub_encode, message, amqp_encoding.SUPPORTED["azure-eventhub"])

    @staticmethod
    def add_batch(event_data_batch: Any, outgoing_event_data: Any, event_data: Any) -> None:
        encoded = _take(outgoing_event_data._message)
        if encoded is None:
            _EventHubTransport.add_batch(event_data_batch, outgoing_event_data, event_data)  # type: ignore[no-untyped-call]
            return
        event_data_batch._internal_events.append(event_data)
        event_data_batch._message[5].append(encoded)  # what `utils.add_batch` appends: the message's bytes

    @staticmethod
    def create_send_client(**kwargs: Any) -> Any:
        return promptly(_EventHubTransport.create_send_client(**kwargs))

    @staticmethod
    def create_mgmt_client(address: Any, mgmt_auth: Any, config: Any) -> Any:
        return promptly(_EventHubTransport.create_mgmt_client(address, mgmt_auth, config))  # type: ignore[no-untyped-call]


class ServiceBusTransport(_ServiceBusTransport):
    """azure-servicebus's pyamqp transport: each message added to a batch encoded once, links opened promptly,
    a message's AMQP message made without the SDK's per-field tests."""

    @staticmethod
    def to_outgoing_amqp_message(annotated_message: Any) -> Any:
        outgoing = _service_bus_outgoing(annotated_message)
        if outgoing is None:
            stats.converted_slow += 1
            return _ServiceBusTransport.to_outgoing_amqp_message(annotated_message)
        return outgoing

    @staticmethod
    def get_message_encoded_size(message: Any) -> int:
        return _measure(_servicebus_encode, message, amqp_encoding.SUPPORTED["azure-servicebus"])

    @staticmethod
    def add_batch(sb_message_batch: Any, outgoing_sb_message: Any) -> None:
        encoded = _take(outgoing_sb_message._message)
        if encoded is None:
            _ServiceBusTransport.add_batch(sb_message_batch, outgoing_sb_message)
            return
        sb_message_batch._message[5].append(encoded)

    @staticmethod
    def create_send_client(config: Any, **kwargs: Any) -> Any:
        return promptly(_ServiceBusTransport.create_send_client(config, **kwargs))
