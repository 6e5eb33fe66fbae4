"""The Event Hubs and Service Bus SDKs' own pyamqp transports, with two changes: each message is encoded
once as it joins a batch, and a link opens without sleeping between the handshake's frames.

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

There is no public way to do either: they rest on the transport attribute, on `create_send_client` and
`create_mgmt_client` building the clients, on `client_ready()` being how the SDK waits, and on the two
encoding calls coming in that order for the same message. An SDK upgrade that changes these leaves the
router correct and only slower (a miss encodes as the SDK does; a client not made here polls as the
SDK does); `stats` counts both so tests say when that happens (tests/test_transports.py), and the pins
in constraints.txt hold the versions they were checked against.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from azure.eventhub._pyamqp._encode import encode_payload as _eventhub_encode
from azure.eventhub._transport._pyamqp_transport import PyamqpTransport as _EventHubTransport
from azure.servicebus._pyamqp._encode import encode_payload as _servicebus_encode
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport as _ServiceBusTransport

from routing.deliver import amqp_encoding


@dataclass
class Stats:
    """Appends that reused the size's encoding (hits) and those that encoded again (misses); clients made
    to open promptly (prompt); messages encoded by the router's encoder (fast) and by the SDK's (slow)."""

    hits: int = 0
    misses: int = 0
    prompt: int = 0
    fast: int = 0
    slow: int = 0


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
    """azure-eventhub's pyamqp transport: each message added to a batch encoded once, links opened promptly."""

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
    """azure-servicebus's pyamqp transport: each message added to a batch encoded once, links opened promptly."""

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
