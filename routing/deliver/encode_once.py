"""Each AMQP message encoded once when it joins a batch, not twice.

`EventDataBatch.add` and `ServiceBusMessageBatch.add_message` (azure-eventhub 5.15, azure-servicebus 7.14,
their vendored pyamqp) encode a message to learn its size (`get_message_encoded_size`), then encode it
again to append it to the batch (`add_batch` -> `utils.add_batch`); the encoder is pure Python and was
the largest share of the router's CPU (issue #15). Both batches call these through their transport,
`batch._amqp_transport` (the batches take it as the `amqp_transport` keyword too); the transports below
are the SDKs' own with the encoding of the first call kept for the second, on the same thread, when it
is for the same message object. The bytes appended are the ones the SDK would have appended.

There is no public way to do this: it rests on the transport attribute and on the two calls coming in
that order, for the same message. An SDK upgrade that changes either leaves it correct (a miss encodes,
as the SDK does) and only slower; `stats` counts hits and misses so a test says when that happens
(tests/test_encode_once.py), and the pins in constraints.txt hold the versions it was checked against.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, TypeVar

from azure.eventhub._pyamqp._encode import encode_payload as _eventhub_encode
from azure.eventhub._transport._pyamqp_transport import PyamqpTransport as _EventHubTransport
from azure.servicebus._pyamqp._encode import encode_payload as _servicebus_encode
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport as _ServiceBusTransport


@dataclass
class Stats:
    """Appends that reused the size's encoding (hits), and those that encoded again (misses)."""

    hits: int = 0
    misses: int = 0


# Counted without a lock: exact on one thread, at worst an undercount across lanes.
stats = Stats()
# The last message a thread measured, with its encoding: (message, bytes).
_measured = threading.local()


def _measure(encode: Any, message: Any) -> int:
    output = bytearray()
    encode(output, message)
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


class EventHubsTransport(_EventHubTransport):
    """azure-eventhub's pyamqp transport, encoding each message added to a batch once."""

    @staticmethod
    def get_message_encoded_size(message: Any) -> int:
        return _measure(_eventhub_encode, message)

    @staticmethod
    def add_batch(event_data_batch: Any, outgoing_event_data: Any, event_data: Any) -> None:
        encoded = _take(outgoing_event_data._message)
        if encoded is None:
            _EventHubTransport.add_batch(event_data_batch, outgoing_event_data, event_data)  # type: ignore[no-untyped-call]
            return
        event_data_batch._internal_events.append(event_data)
        event_data_batch._message[5].append(encoded)  # what `utils.add_batch` appends: the message's bytes


class ServiceBusTransport(_ServiceBusTransport):
    """azure-servicebus's pyamqp transport, encoding each message added to a batch once."""

    @staticmethod
    def get_message_encoded_size(message: Any) -> int:
        return _measure(_servicebus_encode, message)

    @staticmethod
    def add_batch(sb_message_batch: Any, outgoing_sb_message: Any) -> None:
        encoded = _take(outgoing_sb_message._message)
        if encoded is None:
            _ServiceBusTransport.add_batch(sb_message_batch, outgoing_sb_message)
            return
        sb_message_batch._message[5].append(encoded)


B = TypeVar("B")


def encoding_once(batch: B, transport: type) -> B:
    """`batch`, fresh from its client, set to encode each message once with `transport` (one of the above)."""
    if getattr(batch, "_amqp_transport", None) in (_EventHubTransport, _ServiceBusTransport):
        batch._amqp_transport = transport  # type: ignore[attr-defined]
    return batch
