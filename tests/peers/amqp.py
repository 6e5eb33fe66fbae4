"""An AMQP 1.0 peer that the unmodified Event Hubs and Service Bus SDKs send to, for tests.

The protocol engine is python-qpid-proton's (`proton.Transport`/`Connection`/`Collector`), driven by a
small selector loop of our own in one background thread. We own the socket I/O instead of using
proton's `Container` for two reasons, both of which need the raw frames:

* Full performatives. The SDKs' pure-Python AMQP stack (azure-eventhub 5.15.1, azure-servicebus 7.15.0)
  decodes a performative into a list and indexes it by field position (`frame[9]` of OPEN, `frame[13]`
  of ATTACH, `frame[11]` as the payload of TRANSFER, `error[2]` of a REJECTED outcome), so a frame that
  omits trailing default fields -- which the AMQP spec allows and proton's encoder always does -- crashes
  it with `IndexError` (or silently misreads a TRANSFER). Its frame decoder also cannot read `list0`.
  Every frame proton writes therefore passes through `_FramePadder`, which re-encodes, at the byte
  level, each performative and each composite nested in it (error, source, target, delivery states,
  SASL frames) with its full field list: it appends `null` (0x40) for each missing field and rewrites
  the list header (list0/list8/list32) and the frame size. Field values are copied byte for byte, never
  decoded and re-encoded, so nothing else about proton's output changes. Re-encoding through
  `proton.Data` would not work: proton's encoder strips trailing nulls again.
* Message format. A batched send is one transfer with message-format 0x80013700 whose body holds one
  data section per encoded message. Proton's Python binding does not expose a delivery's message
  format, so `_InboundFrameWatcher` reads the incoming ATTACH and TRANSFER frames (without changing
  them) to learn the format of each delivery per link.

The padding grows a performative by at most a few dozen bytes; proton fills frames up to the client's
max-frame-size (1 MB for both SDKs) only with transfer payloads, and the peer only ever sends small
replies, so padded frames stay far below it (the SDKs do not check incoming frame sizes anyway).

The peer answers what the SDK send paths need: SASL ANONYMOUS (the SDKs use it with connection strings
and authenticate through CBS; proton's built-in SASL cannot serve PLAIN without Cyrus), `$cbs` put-token
(status-code 200, correlation-id = request message-id; 401 for refused keys, 404 for unknown entities,
as Azure answers), and `$management` READ of `com.microsoft:eventhub` and `com.microsoft:partition`.
It records every accepted message per entity and can inject the faults listed on `AmqpPeer`. It
touches only its own sockets on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import selectors
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType, TracebackType
from typing import Literal, Self
from urllib.parse import parse_qs, quote_plus, urlsplit

from proton import (
    UNDESCRIBED,
    Array,
    Collector,
    Condition,
    Connection,
    Data,
    Delivery,
    Described,
    Endpoint,
    Event,
    Link,
    Message,
    Receiver,
    Sender,
    Transport,
    timestamp,
)

__all__ = [
    "BATCH_MESSAGE_FORMAT",
    "ENTITY_NOT_FOUND",
    "MESSAGE_SIZE_EXCEEDED",
    "NOT_ALLOWED",
    "SERVER_BUSY",
    "TIMEOUT",
    "AmqpPeer",
    "BlackHole",
    "PeerStats",
    "ReceivedMessage",
]

# Error conditions Azure uses on the send path.
SERVER_BUSY = "com.microsoft:server-busy"
TIMEOUT = "com.microsoft:timeout"
MESSAGE_SIZE_EXCEEDED = "amqp:link:message-size-exceeded"
ENTITY_NOT_FOUND = "amqp:not-found"
NOT_ALLOWED = "amqp:not-allowed"
# What Service Bus answers a batch of several sessions on a partitioned entity.
_MIXED_BATCH_REFUSAL = (
    "Batching brokered messages with distinct SessionId or PartitionKey is not supported for an entity with "
    "partitioning enabled. (test peer)"
)
# ... and what it answers a batch of distinct message ids too (or sessions, or partition keys) on a partitioned
# entity with duplicate detection (azure-sdk-for-python 21955, 36333; the double space is the service's).
_DISTINCT_IDS_REFUSAL = (
    "Batching brokered messages with distinct SessionId, PartitionKey, or MessageId  is not supported for an "
    "entity with partitioning and duplicate detection enabled. (test peer)"
)
# Service Bus' default duplicate detection history window.
DEFAULT_DUPLICATE_WINDOW = 600.0
CONNECTION_FORCED = "amqp:connection:forced"

BATCH_MESSAGE_FORMAT = 0x80013700
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
_CREDIT = 1000
# Where the peer stops answering (`AmqpPeer.black_hole`).
BlackHole = Literal["connect", "open", "transfer"]

# --------------------------------------------------------------------------------------------------
# AMQP type-system helpers working on raw bytes.
# --------------------------------------------------------------------------------------------------

# Full field counts of the composites the SDKs index by position, keyed by numeric descriptor.
_FIELD_COUNTS: Mapping[int, int] = {
    0x10: 10,  # open
    0x11: 8,  # begin
    0x12: 14,  # attach
    0x13: 11,  # flow
    0x14: 11,  # transfer
    0x15: 6,  # disposition
    0x16: 3,  # detach
    0x17: 1,  # end
    0x18: 1,  # close
    0x1D: 3,  # error
    0x23: 2,  # received
    0x24: 0,  # accepted
    0x25: 1,  # rejected
    0x26: 0,  # released
    0x27: 3,  # modified
    0x28: 11,  # source
    0x29: 7,  # target
    0x40: 1,  # sasl-mechanisms
    0x41: 3,  # sasl-init
    0x42: 1,  # sasl-challenge
    0x43: 1,  # sasl-response
    0x44: 2,  # sasl-outcome
}

_FIXED_WIDTH: Mapping[int, int] = {
    **dict.fromkeys((0x40, 0x41, 0x42, 0x43, 0x44, 0x45), 0),
    **dict.fromkeys((0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56), 1),
    **dict.fromkeys((0x60, 0x61), 2),
    **dict.fromkeys((0x70, 0x71, 0x72, 0x73, 0x74), 4),
    **dict.fromkeys((0x80, 0x81, 0x82, 0x83, 0x84), 8),
    **dict.fromkeys((0x94, 0x98), 16),
}
_SIZE1 = frozenset({0xA0, 0xA1, 0xA3, 0xC0, 0xC1, 0xE0})
_SIZE4 = frozenset({0xB0, 0xB1, 0xB3, 0xD0, 0xD1, 0xF0})


class AmqpCodecError(ValueError):
    """Bytes that are not valid AMQP encoding where the peer expected some."""


def _skip(buf: bytes, pos: int) -> int:
    """Return the offset just past the encoded value that starts at `pos`."""
    code = buf[pos]
    pos += 1
    if code == 0x00:  # described: descriptor, then value
        return _skip(buf, _skip(buf, pos))
    if code in _FIXED_WIDTH:
        end = pos + _FIXED_WIDTH[code]
    elif code in _SIZE1:
        end = pos + 1 + buf[pos]
    elif code in _SIZE4:
        end = pos + 4 + struct.unpack_from(">I", buf, pos)[0]
    else:
        raise AmqpCodecError(f"unknown AMQP constructor 0x{code:02x} at offset {pos - 1}")
    if end > len(buf):
        raise AmqpCodecError(f"value at offset {pos - 1} runs past the end of the buffer")
    return end


def _descriptor_code(buf: bytes, pos: int) -> tuple[int | None, int]:
    """Read a described value's numeric descriptor at `pos` (just after 0x00); return (code, value offset)."""
    code = buf[pos]
    if code == 0x53:
        return buf[pos + 1], pos + 2
    if code == 0x80:
        return struct.unpack_from(">Q", buf, pos + 1)[0], pos + 9
    if code == 0x44:
        return 0, pos + 1
    return None, _skip(buf, pos)  # symbolic descriptor: not one we pad


def _list_items(buf: bytes, pos: int) -> tuple[int, int, int]:
    """For a list at `pos` return (count, offset of first item, offset past the list)."""
    code = buf[pos]
    if code == 0x45:
        return 0, pos + 1, pos + 1
    if code == 0xC0:
        return buf[pos + 2], pos + 3, pos + 2 + buf[pos + 1]
    if code == 0xD0:
        size, count = struct.unpack_from(">II", buf, pos + 1)
        return count, pos + 9, pos + 5 + size
    raise AmqpCodecError(f"expected a list at offset {pos}, found constructor 0x{code:02x}")


def _encode_list(items: bytes, count: int) -> bytes:
    if count == 0:
        return b"\x45"
    if len(items) + 1 <= 0xFF and count <= 0xFF:
        return bytes((0xC0, len(items) + 1, count)) + items
    return b"\xd0" + struct.pack(">II", len(items) + 4, count) + items


def _pad_value(buf: bytes, pos: int) -> tuple[bytes, int]:
    """Copy the value at `pos`, padding it (and composites nested in it) to full field lists.

    Returns the new encoding and the offset past the original value.
    """
    end = _skip(buf, pos)
    if buf[pos] != 0x00:
        return buf[pos:end], end
    code, value_pos = _descriptor_code(buf, pos + 1)
    full = _FIELD_COUNTS.get(code) if code is not None else None
    if full is None or buf[value_pos] not in (0x45, 0xC0, 0xD0):
        return buf[pos:end], end
    count, item, _ = _list_items(buf, value_pos)
    parts: list[bytes] = []
    for _ in range(count):
        encoded, item = _pad_value(buf, item)
        parts.append(encoded)
    parts.extend(b"\x40" for _ in range(full - count))
    return buf[pos:value_pos] + _encode_list(b"".join(parts), max(count, full)), end


def pad_frame_body(body: bytes) -> bytes:
    """Return a frame body whose performative carries its full field list; any payload is kept."""
    if not body:
        return body  # an empty frame (heartbeat)
    performative, end = _pad_value(body, 0)
    return performative + body[end:]


class _FrameStream:
    """Splits a byte stream into protocol headers and frames (extended header kept with the body)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes | None]]:
        """Yield (header, body) pairs: an 8-byte protocol header has body None."""
        self._buffer += data
        while len(self._buffer) >= 8:
            if self._buffer[:4] == b"AMQP":
                header = bytes(self._buffer[:8])
                del self._buffer[:8]
                yield header, None
                continue
            size, doff = struct.unpack_from(">IB", self._buffer, 0)
            if len(self._buffer) < size:
                return
            frame = bytes(self._buffer[:size])
            del self._buffer[:size]
            body_start = max(doff * 4, 8)
            yield frame[:body_start], frame[body_start:]


class _FramePadder:
    """Rewrites proton's outgoing bytes so every performative has its full field list."""

    def __init__(self) -> None:
        self._stream = _FrameStream()

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for header, body in self._stream.feed(data):
            if body is None:
                out += header
                continue
            padded = pad_frame_body(body)
            out += struct.pack(">I", len(header) + len(padded)) + header[4:] + padded
        return bytes(out)


def _read_simple(buf: bytes, pos: int) -> object:
    """Decode the scalar at `pos` if it is one of the few types frame fields need, else None."""
    code = buf[pos]
    if code in (0x40, 0x43, 0x44):
        return None if code == 0x40 else 0
    if code in (0x41, 0x42):
        return code == 0x41
    if code == 0x56:
        return buf[pos + 1] != 0
    if code in (0x50, 0x52, 0x53):
        return buf[pos + 1]
    if code == 0x70:
        return int(struct.unpack_from(">I", buf, pos + 1)[0])
    if code == 0x80:
        return int(struct.unpack_from(">Q", buf, pos + 1)[0])
    if code in (0xA1, 0xA3):
        return buf[pos + 2 : pos + 2 + buf[pos + 1]].decode()
    if code in (0xB1, 0xB3):
        size = struct.unpack_from(">I", buf, pos + 1)[0]
        return buf[pos + 5 : pos + 5 + size].decode()
    return None


def _performative_fields(body: bytes, wanted: int) -> tuple[int | None, list[object]]:
    """Return the performative's descriptor code and its first `wanted` fields (simple types only)."""
    if not body or body[0] != 0x00:
        return None, []
    code, value_pos = _descriptor_code(body, 1)
    count, item, _ = _list_items(body, value_pos)
    fields: list[object] = []
    for _ in range(min(count, wanted)):
        fields.append(_read_simple(body, item))
        item = _skip(body, item)
    fields.extend(None for _ in range(wanted - len(fields)))
    return code, fields


class _InboundFrameWatcher:
    """Learns each incoming delivery's message format from the client's ATTACH and TRANSFER frames."""

    def __init__(self) -> None:
        self._stream = _FrameStream()
        self._link_names: dict[tuple[int, int], str] = {}
        self._in_progress: set[tuple[int, int]] = set()
        self._formats: dict[str, deque[int]] = {}

    def feed(self, data: bytes) -> None:
        for header, body in self._stream.feed(data):
            if body is None or header[5] != 0:  # protocol header or SASL frame
                continue
            channel = struct.unpack_from(">H", header, 6)[0]
            code, fields = _performative_fields(body, 10)
            if code == 0x12 and fields[2] is False:  # attach from a sending client
                self._link_names[(channel, int(fields[1]))] = str(fields[0])  # type: ignore[call-overload]
            elif code == 0x14:
                key = (channel, int(fields[0]))  # type: ignore[call-overload]
                name = self._link_names.get(key)
                if name is not None and key not in self._in_progress:
                    message_format = fields[3]
                    self._formats.setdefault(name, deque()).append(
                        message_format if isinstance(message_format, int) else 0
                    )
                if fields[5] and not fields[9]:  # more, and not aborted
                    self._in_progress.add(key)
                else:
                    self._in_progress.discard(key)

    def next_format(self, link_name: str) -> int:
        formats = self._formats.get(link_name)
        return formats.popleft() if formats else 0


# --------------------------------------------------------------------------------------------------
# Messages.
# --------------------------------------------------------------------------------------------------


def _plain(value: object) -> object:
    """Turn proton's wrapper types into plain Python values (symbol -> str, ulong -> int, ...)."""
    if isinstance(value, Described):
        return value  # a described value the SDKs never send on these paths: kept as proton's type
    if isinstance(value, Array):
        return [_plain(v) for v in value.elements]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, memoryview):  # proton hands out binary values as memoryviews
        return value.tobytes()
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def _as_str_map(value: object) -> Mapping[str, object]:
    if not isinstance(value, dict):
        return MappingProxyType({})
    return MappingProxyType({str(k): v for k, v in value.items()})


_PROPERTY_NAMES = (
    "message_id",
    "user_id",
    "to",
    "subject",
    "reply_to",
    "correlation_id",
    "content_type",
    "content_encoding",
    "absolute_expiry_time",
    "creation_time",
    "group_id",
    "group_sequence",
    "reply_to_group_id",
)


@dataclass(frozen=True, kw_only=True)
class ReceivedMessage:
    """One message as the peer accepted it, in the shape tests check.

    `body` joins the data sections (what EventData/ServiceBusMessage bodies become); `value` holds an
    amqp-value body instead. Property names follow the AMQP properties section: a Service Bus session
    id is `group_id`, an Event Hubs partition key is the message annotation `x-opt-partition-key`.
    """

    entity: str
    partition_id: str | None = None
    batched: bool = False
    body: bytes = b""
    value: object = None
    sequence: tuple[object, ...] | None = None
    header: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    delivery_annotations: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    message_annotations: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    application_properties: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    message_id: object = None
    user_id: bytes | None = None
    to: str | None = None
    subject: str | None = None
    reply_to: str | None = None
    correlation_id: object = None
    content_type: str | None = None
    content_encoding: str | None = None
    absolute_expiry_time: int | None = None
    creation_time: int | None = None
    group_id: str | None = None
    group_sequence: int | None = None
    reply_to_group_id: str | None = None

    @property
    def partition_key(self) -> str | None:
        key = self.message_annotations.get("x-opt-partition-key")
        return None if key is None else str(key)

    @property
    def session_id(self) -> str | None:
        return self.group_id

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class _Sections:
    header: dict[str, object] = field(default_factory=dict)
    delivery_annotations: object = None
    message_annotations: object = None
    properties: list[object] = field(default_factory=list)
    application_properties: object = None
    data: list[bytes] = field(default_factory=list)
    sequence: list[object] | None = None
    value: object = None


def _decode_sections(payload: bytes) -> _Sections:
    """Split an encoded message into its sections, decoding each value with proton's codec."""
    sections = _Sections()
    pos = 0
    while pos < len(payload):
        if payload[pos] != 0x00:
            raise AmqpCodecError(f"expected a message section at offset {pos}")
        code, value_pos = _descriptor_code(payload, pos + 1)
        end = _skip(payload, pos)
        data = Data()
        data.decode(payload[value_pos:end])
        data.rewind()
        data.next()
        value = _plain(data.get_object())
        if code == 0x70 and isinstance(value, list):
            names = ("durable", "priority", "ttl", "first_acquirer", "delivery_count")
            sections.header = {n: v for n, v in zip(names, value, strict=False) if v is not None}
        elif code == 0x71:
            sections.delivery_annotations = value
        elif code == 0x72:
            sections.message_annotations = value
        elif code == 0x73 and isinstance(value, list):
            sections.properties = value
        elif code == 0x74:
            sections.application_properties = value
        elif code == 0x75 and isinstance(value, bytes):
            sections.data.append(value)
        elif code == 0x76 and isinstance(value, list):
            sections.sequence = [*(sections.sequence or []), *value]
        elif code == 0x77:
            sections.value = value
        pos = end
    return sections


def _received(sections: _Sections, *, entity: str, partition_id: str | None, batched: bool) -> ReceivedMessage:
    props = dict(zip(_PROPERTY_NAMES, sections.properties, strict=False))

    def opt_str(name: str) -> str | None:
        v = props.get(name)
        return None if v is None else str(v)

    def opt_int(name: str) -> int | None:
        v = props.get(name)
        return v if isinstance(v, int) else None

    user_id = props.get("user_id")
    return ReceivedMessage(
        entity=entity,
        partition_id=partition_id,
        batched=batched,
        body=b"".join(sections.data),
        value=sections.value,
        sequence=None if sections.sequence is None else tuple(sections.sequence),
        header=MappingProxyType(sections.header),
        delivery_annotations=_as_str_map(sections.delivery_annotations),
        message_annotations=_as_str_map(sections.message_annotations),
        application_properties=_as_str_map(sections.application_properties),
        message_id=props.get("message_id"),
        user_id=user_id if isinstance(user_id, bytes) else None,
        to=opt_str("to"),
        subject=opt_str("subject"),
        reply_to=opt_str("reply_to"),
        correlation_id=props.get("correlation_id"),
        content_type=opt_str("content_type"),
        content_encoding=opt_str("content_encoding"),
        absolute_expiry_time=opt_int("absolute_expiry_time"),
        creation_time=opt_int("creation_time"),
        group_id=opt_str("group_id"),
        group_sequence=opt_int("group_sequence"),
        reply_to_group_id=opt_str("reply_to_group_id"),
    )


def _decode_delivery(
    payload: bytes, *, message_format: int, entity: str, partition_id: str | None
) -> list[ReceivedMessage]:
    envelope = _decode_sections(payload)
    if message_format != BATCH_MESSAGE_FORMAT:
        return [_received(envelope, entity=entity, partition_id=partition_id, batched=False)]
    return [
        _received(_decode_sections(inner), entity=entity, partition_id=partition_id, batched=True)
        for inner in envelope.data
    ]


def _entity_of(address: str) -> tuple[str, str | None]:
    """Map a link address (`amqps://host/hub`, `hub/Partitions/1`, `queue`) to (entity, partition id)."""
    path = urlsplit(address).path if "://" in address else address
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "", None
    partition = parts[2] if len(parts) >= 3 and parts[1].lower() == "partitions" else None
    return parts[0], partition


def sas_signature(resource_uri: str, expiry: str, key: str) -> str:
    """The SharedAccessSignature `sig` the SDKs compute for `resource_uri` and `expiry` with `key`."""
    to_sign = f"{quote_plus(resource_uri)}\n{expiry}".encode()
    digest = hmac.new(key.encode(), to_sign, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _parse_sas_token(token: str) -> dict[str, str]:
    if token.startswith("SharedAccessSignature "):
        token = token[len("SharedAccessSignature ") :]
    return {k: v[0] for k, v in parse_qs(token, keep_blank_values=True).items()}


# --------------------------------------------------------------------------------------------------
# The peer.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PeerStats:
    """Counters since start (or the last `clear()`), for asserting retries and faults happened."""

    connections: int = 0
    cbs_requests: int = 0
    cbs_refused: int = 0
    management_requests: tuple[tuple[str, str], ...] = ()  # (type, name) per request
    deliveries_accepted: int = 0
    # (entity, partition id, messages) of each accepted delivery: a batched send is one delivery.
    accepted_transfers: tuple[tuple[str, str | None, int], ...] = ()
    deliveries_rejected: tuple[str, ...] = ()  # the condition of each rejected delivery
    connections_dropped: int = 0
    links_not_found: tuple[str, ...] = ()
    # (entity, message id) of each message accepted as a duplicate and dropped, as duplicate detection does.
    duplicates_dropped: tuple[tuple[str, object], ...] = ()
    transfers_held: int = 0  # sends received and never settled (black hole "transfer")


@dataclass
class _Fault:
    kind: Literal["reject", "drop"]
    remaining: int
    entity: str | None
    condition: str = ""
    description: str = ""
    abrupt: bool = False
    partition: str | None = None  # only transfers on this partition's link (`<hub>/Partitions/<id>`)

    def matches(self, entity: str, partition: str | None) -> bool:
        return (
            self.remaining > 0
            and self.entity in (None, entity)
            and (self.partition is None or self.partition == partition)
        )


@dataclass
class _Refusal:
    key_name: str | None
    key: str | None


_DEFAULT_KEY_NAME = "RootManageSharedAccessKey"
_DEFAULT_KEY = "SAS_KEY_VALUE"


class _Driver:
    """One accepted socket and the proton engine behind it."""

    ids = itertools.count(1)

    def __init__(self, peer: AmqpPeer, sock: socket.socket) -> None:
        self.peer = peer
        self.sock = sock
        self.id = next(self.ids)
        self.collector = Collector()
        self.transport = Transport(Transport.SERVER)
        sasl = self.transport.sasl()
        sasl.allow_insecure_mechs = True
        sasl.allowed_mechs("ANONYMOUS")
        self.connection = Connection()
        self.connection.collect(self.collector)
        self.transport.bind(self.connection)
        self.padder = _FramePadder()
        self.watcher = _InboundFrameWatcher()
        self.incoming = bytearray()
        self.outgoing = bytearray()
        self.input_closed = False
        self.tail_closed = False
        self.finished = False
        self.replies: dict[str, deque[Message]] = {}
        self.reply_links: dict[str, Sender] = {}
        # Black-hole mode: whether the AMQP open was answered, and whether bytes were swallowed (then the
        # stream is broken for good, so the connection is dropped once the black hole ends).
        self.opened = False
        self.swallowed = False
        self.held: list[Delivery] = []

    def silent(self) -> bool:
        """Whether this connection is in the black hole now: nothing read is processed, nothing is written."""
        mode = self.peer._black_hole_mode()
        if mode == "connect" or (mode == "open" and self.opened):
            return True
        if self.swallowed:
            self.abort()  # the black hole ended, but this connection lost bytes: drop it
        return False

    # -- I/O -------------------------------------------------------------------------------------
    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data and self.silent():
            self.swallowed = True  # read (so the client's writes never block) and never answered
            return
        if data:
            self.watcher.feed(data)
            self.incoming += data
        else:
            self.input_closed = True
        self.process()

    def _push_input(self) -> None:
        # The transport takes only `capacity()` bytes at a time; it frees room as it processes them.
        while self.incoming:
            capacity = self.transport.capacity()
            if capacity <= 0:
                if capacity < 0:  # the transport stopped reading (it is closing): drop the rest
                    self.incoming.clear()
                return
            chunk = bytes(self.incoming[:capacity])
            del self.incoming[:capacity]
            self.transport.push(chunk)
            self._dispatch_events()
        if self.input_closed and not self.tail_closed:
            self.tail_closed = True
            self.transport.close_tail()

    def on_writable(self) -> None:
        if not self.silent():
            self.flush()

    def process(self) -> None:
        self._push_input()
        self._dispatch_events()
        self._collect_output()
        self.flush()

    def tick(self, now: float) -> float:
        if self.silent():
            return 0.0  # no heartbeats either: a black hole sends nothing
        deadline = self.transport.tick(now)
        self.process()
        return deadline

    def _collect_output(self) -> None:
        while True:
            pending = self.transport.pending()
            if pending < 0:
                if not self.outgoing:
                    self.finished = True
                return
            if pending == 0:
                return
            chunk = self.transport.peek(pending) or b""
            self.transport.pop(len(chunk))
            self.outgoing += self.padder.feed(chunk)

    def flush(self) -> None:
        while self.outgoing:
            try:
                sent = self.sock.send(self.outgoing)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.outgoing.clear()
                self.finished = True
                return
            del self.outgoing[:sent]
        if self.transport.pending() < 0 or (self.input_closed and self.transport.closed):
            self.finished = True

    def abort(self) -> None:
        self.finished = True
        self.outgoing.clear()

    # -- engine events -----------------------------------------------------------------------------
    def _dispatch_events(self) -> None:
        while True:
            event = self.collector.peek()
            if event is None:
                return
            try:
                self._on_event(event)
            finally:
                self.collector.pop()
            if self.finished:
                return

    def _on_event(self, event: Event) -> None:
        kind = event.type
        if kind == Event.CONNECTION_REMOTE_OPEN:
            conn = event.connection
            if conn is not None and conn.state & Endpoint.LOCAL_UNINIT:
                conn.container = "amqp-test-peer"
                conn.open()
                self.opened = True
        elif kind == Event.CONNECTION_REMOTE_CLOSE:
            if event.connection is not None and not event.connection.state & Endpoint.LOCAL_CLOSED:
                event.connection.close()
        elif kind == Event.SESSION_REMOTE_OPEN:
            session = event.session
            if session is not None and session.state & Endpoint.LOCAL_UNINIT:
                session.open()
        elif kind == Event.SESSION_REMOTE_CLOSE:
            if event.session is not None and not event.session.state & Endpoint.LOCAL_CLOSED:
                event.session.close()
        elif kind == Event.LINK_REMOTE_OPEN:
            if event.link is not None and event.link.state & Endpoint.LOCAL_UNINIT:
                self._on_link_open(event.link)
        elif kind == Event.LINK_REMOTE_CLOSE:
            if event.link is not None and not event.link.state & Endpoint.LOCAL_CLOSED:
                event.link.close()
        elif kind == Event.LINK_FLOW:
            if isinstance(event.link, Sender):
                self._send_replies(event.link)
        elif kind == Event.DELIVERY:
            delivery = event.delivery
            if delivery is not None and isinstance(delivery.link, Receiver):
                self._on_delivery(delivery, delivery.link)
            elif delivery is not None and delivery.remote_state and not delivery.settled:
                delivery.settle()

    def _on_link_open(self, link: Link) -> None:
        if isinstance(link, Sender):
            address = link.remote_source.address or ""
            link.source.copy(link.remote_source)
            link.target.copy(link.remote_target)
            link.open()
            self.reply_links[address] = link
            self._send_replies(link)
            return
        address = link.remote_target.address or ""
        entity, _ = _entity_of(address)
        if address not in ("$cbs", "$management") and not self.peer._entity_exists(entity):
            # Azure answers the attach and at once detaches with amqp:not-found. (An attach with a null
            # target, which the spec suggests, makes the SDKs report a generic error instead.)
            link.source.copy(link.remote_source)
            link.target.copy(link.remote_target)
            link.open()
            link.condition = Condition(ENTITY_NOT_FOUND, f"The messaging entity '{entity}' could not be found.")
            link.close()
            self.peer._count_not_found(entity)
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.max_message_size = self.peer.max_message_size
        link.open()
        assert isinstance(link, Receiver)
        link.flow(_CREDIT)

    def _on_delivery(self, delivery: Delivery, link: Receiver) -> None:
        if not delivery.readable or delivery.partial:
            return
        payload = link.recv(delivery.pending) or b""
        link.advance()
        message_format = self.watcher.next_format(link.name)
        if link.credit < _CREDIT // 2:
            link.flow(_CREDIT - link.credit)
        node = link.target.address or ""
        if node == "$cbs":
            self._answer_cbs(delivery, link, payload)
        elif node == "$management":
            self._answer_management(delivery, link, payload)
        else:
            self._accept_send(delivery, link, payload, message_format)

    def _settle(self, delivery: Delivery, condition: Condition | None = None) -> None:
        if condition is None:
            delivery.update(Delivery.ACCEPTED)
        else:
            delivery.local.condition = condition
            delivery.update(Delivery.REJECTED)
        delivery.settle()

    def _accept_send(self, delivery: Delivery, link: Receiver, payload: bytes, message_format: int) -> None:
        entity, partition_id = _entity_of(link.target.address or "")
        if self.peer._holds_transfer(entity):
            self.held.append(delivery)  # never settled: the sender waits for an answer that does not come
            return
        action = self.peer._on_transfer(entity, partition_id, len(payload), link.max_message_size)
        if isinstance(action, _Fault):
            if action.kind == "drop":
                self._drop(abrupt=action.abrupt)
            else:
                self._settle(delivery, Condition(action.condition, action.description or None))
            return
        messages = _decode_delivery(payload, message_format=message_format, entity=entity, partition_id=partition_id)
        refusal = self.peer._refuses_mixed_batch(entity, messages)
        if refusal is not None:
            self._settle(delivery, Condition(refusal.condition, refusal.description))
            return
        self.peer._record(entity, partition_id, messages)
        self._settle(delivery)

    def _drop(self, *, abrupt: bool) -> None:
        if abrupt:
            self.abort()
            return
        self.connection.condition = Condition(CONNECTION_FORCED, "The test peer closed the connection.")
        self.connection.close()

    # -- $cbs and $management ------------------------------------------------------------------------
    def _reply(
        self, link: Receiver, request: Message, *, status: int, description: str, body: dict[str, object] | None
    ) -> None:
        reply = Message(
            correlation_id=request.id,
            properties={"status-code": status, "status-description": description},
            body=body,
        )
        # The SDKs attach their reply link with source = the node ($cbs, $management) and also name it in
        # reply-to; route by the node, which is always there.
        node = link.target.address or ""
        self.replies.setdefault(node, deque()).append(reply)
        sender = self.reply_links.get(node)
        if sender is not None:
            self._send_replies(sender)

    def _send_replies(self, sender: Sender) -> None:
        queue = self.replies.get(sender.source.address or "")
        while queue and sender.credit > 0:
            delivery = sender.delivery(uuid.uuid4().hex)
            sender.send(queue.popleft().encode())
            sender.advance()
            delivery.settle()

    def _answer_cbs(self, delivery: Delivery, link: Receiver, payload: bytes) -> None:
        request, props = _decode_request(payload)
        self._settle(delivery)
        token = request.body if isinstance(request.body, str) else ""
        operation = str(props.get("operation", ""))
        if operation != "put-token":
            self._reply(link, request, status=400, description=f"unsupported operation {operation}", body=None)
            return
        # Azure checks the token before the entity, so that callers cannot probe for entity names.
        audience = str(props.get("name", ""))
        entity, _ = _entity_of(audience)
        if self.peer._cbs_refuses(token):
            self._reply(link, request, status=401, description="InvalidSignature: The token is refused.", body=None)
        elif entity and not self.peer._entity_exists(entity):
            description = f"The messaging entity '{audience}' could not be found. (test peer)"
            self._reply(link, request, status=404, description=description, body=None)
        else:
            self._reply(link, request, status=200, description="OK", body=None)

    def _answer_management(self, delivery: Delivery, link: Receiver, payload: bytes) -> None:
        request, props = _decode_request(payload)
        self._settle(delivery)
        kind = str(props.get("type", ""))
        name = str(props.get("name", ""))
        self.peer._count_management(kind, name)
        if props.get("operation") != "READ" or kind not in ("com.microsoft:eventhub", "com.microsoft:partition"):
            self._reply(link, request, status=501, description=f"The test peer does not implement {kind}.", body=None)
            return
        if not self.peer._entity_exists(name):
            self._reply(
                link, request, status=404, description=f"The messaging entity '{name}' could not be found.", body=None
            )
            return
        ids = [str(i) for i in range(self.peer.partition_count)]
        created = timestamp(int(self.peer.created_at * 1000))
        body: dict[str, object]
        if kind == "com.microsoft:eventhub":
            body = {
                "name": name,
                "type": "com.microsoft:eventhub",
                "created_at": created,
                "partition_count": self.peer.partition_count,
                # An array of strings, as Azure sends; proton's stub does not admit UNDESCRIBED.
                "partition_ids": Array(UNDESCRIBED, Data.STRING, *ids),  # type: ignore[arg-type]
            }
        else:
            partition = str(props.get("partition", ""))
            if partition not in ids:
                self._reply(link, request, status=404, description=f"Partition '{partition}' not found.", body=None)
                return
            body = {
                "name": name,
                "type": "com.microsoft:partition",
                "partition": partition,
                "begin_sequence_number": 0,
                "last_enqueued_sequence_number": -1,
                "last_enqueued_offset": "-1",
                "last_enqueued_time_utc": created,
                "is_partition_empty": True,
            }
        self._reply(link, request, status=200, description="OK", body=body)


class AmqpPeer:
    """A local AMQP 1.0 endpoint for the Event Hubs and Service Bus SDKs' send paths.

    `entities`: names that exist (event hubs, queues, topics); others get `amqp:not-found`. None (the
    default) means every name exists. `max_message_size` is advertised on each attach, so the SDKs size
    their batches by it (set before the client connects). `partition_count` is what `$management`
    reports for every event hub.

    Faults, all switchable while running, each consumed in order by the next matching transfers:
    `reject_next_sends`, `server_busy` (both for one partition's link too), `throttle`,
    `drop_connection_on_next_sends`, `reject_messages_larger_than`, `refuse_auth`; and
    `partition_entities`, after which those entities refuse batches mixing sessions. A transfer that is
    rejected or dropped is never recorded. `detect_duplicates` gives entities Service Bus duplicate
    detection: a repeat is settled as accepted and dropped (counted in `PeerStats.duplicates_dropped`).
    `black_hole` accepts and never answers (at connect, after the AMQP open, or sends only).
    """

    def __init__(
        self,
        *,
        entities: Iterable[str] | None = None,
        partition_count: int = 2,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = 0
        self.partition_count = partition_count
        self.created_at = time.time()
        self._lock = threading.Lock()
        self._entities = None if entities is None else set(entities)
        self._max_message_size = max_message_size
        self._size_limit: int | None = None
        self._partitioned: set[str] = set()
        # entity -> duplicate detection window (seconds); entity -> dedup key -> when it was last accepted
        self._deduplicated: dict[str, float] = {}
        self._seen: dict[str, dict[tuple[object, ...], float]] = {}
        self._faults: list[_Fault] = []
        self._refusals: list[_Refusal] = []
        self._messages: list[ReceivedMessage] = []
        self._stats = PeerStats()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._black_hole: BlackHole | None = None
        self._black_hole_entity: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("the AMQP peer is already running")
        listener = socket.create_server((self.host, 0))
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"amqp-peer-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        self._thread = None
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self._selector is not None:
            self._selector.close()
        self._listener = self._wake_r = self._wake_w = None
        self._selector = None
        if self._error is not None:
            raise RuntimeError("the AMQP peer's loop failed") from self._error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"sb://{self.host}:{self.port}"

    def connection_string(
        self, entity: str | None = None, *, key_name: str = _DEFAULT_KEY_NAME, key: str = _DEFAULT_KEY
    ) -> str:
        """A connection string the SDKs accept for this peer (plain TCP via UseDevelopmentEmulator)."""
        parts = [f"Endpoint={self.endpoint}", f"SharedAccessKeyName={key_name}", f"SharedAccessKey={key}"]
        if entity is not None:
            parts.append(f"EntityPath={entity}")
        parts.append("UseDevelopmentEmulator=true")
        return ";".join(parts)

    # -- what arrived ------------------------------------------------------------------------------
    def received(self, entity: str | None = None) -> list[ReceivedMessage]:
        """Accepted messages in arrival order, for one entity or (None) all of them."""
        with self._lock:
            return [m for m in self._messages if entity is None or m.entity == entity]

    def transfers(self, entity: str) -> list[tuple[str | None, int]]:
        """(partition id, messages) of each accepted delivery to `entity`, in arrival order: one per send."""
        with self._lock:
            return [(partition, count) for name, partition, count in self._stats.accepted_transfers if name == entity]

    def stats(self) -> PeerStats:
        with self._lock:
            return self._stats

    def clear(self) -> None:
        """Forget recorded messages and counters, and switch every fault off."""
        with self._lock:
            self._messages.clear()
            self._stats = PeerStats()
            self._black_hole = None
            self._black_hole_entity = None
            self._faults.clear()
            self._refusals.clear()
            self._size_limit = None
            self._partitioned = set()
            self._deduplicated = {}
            self._seen = {}

    # -- configuration and faults ------------------------------------------------------------------
    @property
    def max_message_size(self) -> int:
        with self._lock:
            return self._max_message_size

    @max_message_size.setter
    def max_message_size(self, size: int) -> None:
        """Advertised on links attached from now on (0 means no limit)."""
        with self._lock:
            self._max_message_size = size

    def set_entities(self, entities: Iterable[str] | None) -> None:
        with self._lock:
            self._entities = None if entities is None else set(entities)

    def reject_next_sends(
        self,
        times: int = 1,
        *,
        condition: str,
        description: str = "",
        entity: str | None = None,
        partition: str | None = None,
    ) -> None:
        """Reject the next `times` transfers (to `entity`, or any; on `partition`'s link, or any) with an
        AMQP error `condition`."""
        with self._lock:
            self._faults.append(_Fault("reject", times, entity, condition, description, partition=partition))

    def server_busy(self, times: int = 1, *, entity: str | None = None, partition: str | None = None) -> None:
        self.reject_next_sends(
            times,
            condition=SERVER_BUSY,
            description="The server is busy. Please retry the operation. (test peer)",
            entity=entity,
            partition=partition,
        )

    def throttle(self, times: int = 1, *, entity: str | None = None) -> None:
        self.reject_next_sends(
            times, condition=TIMEOUT, description="The operation did not complete in time. (test peer)", entity=entity
        )

    def drop_connection_on_next_sends(self, times: int = 1, *, abrupt: bool = False, entity: str | None = None) -> None:
        """Close the connection instead of settling the next `times` transfers.

        Graceful (default): an AMQP close with `amqp:connection:forced`, as Azure does when it moves a
        connection. `abrupt=True` shuts the socket without a close frame.
        """
        with self._lock:
            self._faults.append(_Fault("drop", times, entity, abrupt=abrupt))

    def partition_entities(self, entities: Iterable[str]) -> None:
        """Make `entities` behave as partitioned Service Bus queues or topics: a batched send whose messages
        carry different session ids or partition keys is rejected whole with `amqp:not-allowed`, as Azure
        rejects it (a single message, or a batch of one session, is accepted)."""
        with self._lock:
            self._partitioned = set(entities)

    def detect_duplicates(self, entities: Iterable[str], *, window: float = DEFAULT_DUPLICATE_WINDOW) -> None:
        """Give `entities` Service Bus duplicate detection: a message whose MessageId (MessageId and
        PartitionKey -- the session id when it has none -- on a partitioned entity) was accepted within the
        last `window` seconds is settled as accepted and dropped, as the service does. A partitioned one
        then also refuses batches of distinct MessageIds."""
        with self._lock:
            self._deduplicated = dict.fromkeys(entities, window)

    def reject_messages_larger_than(self, size: int | None) -> None:
        """Reject transfers whose encoded size exceeds `size` with amqp:link:message-size-exceeded."""
        with self._lock:
            self._size_limit = size

    def refuse_auth(self, *, key: str | None = None, key_name: str | None = None) -> None:
        """Answer CBS put-token with 401 for tokens signed with `key` and/or named `key_name`."""
        if key is None and key_name is None:
            raise ValueError("name the key or the key name to refuse")
        with self._lock:
            self._refusals.append(_Refusal(key_name, key))

    def black_hole(self, after: BlackHole = "connect", *, entity: str | None = None) -> None:
        """Accept and never answer, from now until `reset_faults()` (open connections too):

        - "connect": every connection is accepted and then nothing it sends is answered (no SASL, no AMQP
          open, no heartbeat), as when a network path swallows the traffic but the TCP stays up;
        - "open": new connections are opened (SASL, AMQP open) and then answered nothing more (no session,
          no link attach, no token, no management answer); open connections go silent at once;
        - "transfer": everything is answered except sends (to `entity`, or any), which are received and
          never settled, as a broker that takes the message and never says whether it kept it.

        Held transfers are never recorded. A connection that was silenced is dropped when the black hole
        ends (it lost frames).
        """
        with self._lock:
            self._black_hole = after
            self._black_hole_entity = entity
        self._wake()

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")

    def reset_faults(self) -> None:
        with self._lock:
            self._black_hole = None
            self._black_hole_entity = None
            self._faults.clear()
            self._refusals.clear()
            self._size_limit = None
            self._partitioned = set()
            self._deduplicated = {}

    # -- called from the loop thread ---------------------------------------------------------------
    def _black_hole_mode(self) -> BlackHole | None:
        with self._lock:
            return self._black_hole

    def _holds_transfer(self, entity: str) -> bool:
        with self._lock:
            held = self._black_hole == "transfer" and self._black_hole_entity in (None, entity)
            if held:
                self._stats = _replace(self._stats, transfers_held=self._stats.transfers_held + 1)
            return held

    def _entity_exists(self, name: str) -> bool:
        with self._lock:
            return self._entities is None or name in self._entities

    def _on_transfer(self, entity: str, partition: str | None, size: int, link_limit: int) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(entity, partition):
                    fault.remaining -= 1
                    self._count_fault(fault)
                    return fault
            limits = [n for n in (self._size_limit, link_limit) if n]
            if limits and size > min(limits):
                fault = _Fault(
                    "reject",
                    0,
                    entity,
                    MESSAGE_SIZE_EXCEEDED,
                    f"The received message (size {size}) exceeds the limit ({min(limits)} bytes). (test peer)",
                )
                self._count_fault(fault)
                return fault
            return None

    def _refuses_mixed_batch(self, entity: str, messages: list[ReceivedMessage]) -> _Fault | None:
        with self._lock:
            if entity not in self._partitioned:
                return None
            if entity in self._deduplicated:
                distinct = {(m.session_id, m.partition_key, m.message_id) for m in messages}
                description = _DISTINCT_IDS_REFUSAL
            else:
                distinct = {(m.session_id, m.partition_key, None) for m in messages}
                description = _MIXED_BATCH_REFUSAL
            if len(distinct) < 2:
                return None
            fault = _Fault("reject", 0, entity, NOT_ALLOWED, description)
            self._count_fault(fault)
            return fault

    def _new_messages(self, entity: str, messages: list[ReceivedMessage]) -> list[ReceivedMessage]:
        """`messages` without the repeats duplicate detection drops; under the lock."""
        window = self._deduplicated.get(entity)
        if window is None:
            return messages
        seen = self._seen.setdefault(entity, {})
        now = time.monotonic()
        partitioned = entity in self._partitioned
        kept = []
        for message in messages:
            key: tuple[object, ...] = (message.message_id,)
            if partitioned:
                key = (message.message_id, message.partition_key or message.session_id)
            first = seen.get(key)
            if message.message_id is not None and first is not None and now - first < window:
                s = self._stats
                self._stats = _replace(s, duplicates_dropped=(*s.duplicates_dropped, (entity, message.message_id)))
                continue
            seen[key] = now
            kept.append(message)
        return kept

    def _count_fault(self, fault: _Fault) -> None:
        s = self._stats
        if fault.kind == "drop":
            self._stats = _replace(s, connections_dropped=s.connections_dropped + 1)
        else:
            self._stats = _replace(s, deliveries_rejected=(*s.deliveries_rejected, fault.condition))

    def _record(self, entity: str, partition_id: str | None, messages: list[ReceivedMessage]) -> None:
        with self._lock:
            self._messages.extend(self._new_messages(entity, messages))
            s = self._stats
            self._stats = _replace(
                s,
                deliveries_accepted=s.deliveries_accepted + 1,
                accepted_transfers=(*s.accepted_transfers, (entity, partition_id, len(messages))),
            )

    def _cbs_refuses(self, token: str) -> bool:
        fields = _parse_sas_token(token)
        with self._lock:
            refusals = list(self._refusals)
            refused = any(_refusal_matches(r, fields) for r in refusals)
            s = self._stats
            self._stats = _replace(s, cbs_requests=s.cbs_requests + 1, cbs_refused=s.cbs_refused + int(refused))
        return refused

    def _count_management(self, kind: str, name: str) -> None:
        with self._lock:
            s = self._stats
            self._stats = _replace(s, management_requests=(*s.management_requests, (kind, name)))

    def _count_not_found(self, entity: str) -> None:
        with self._lock:
            s = self._stats
            self._stats = _replace(s, links_not_found=(*s.links_not_found, entity))

    def _count_connection(self) -> None:
        with self._lock:
            self._stats = _replace(self._stats, connections=self._stats.connections + 1)

    # -- the loop ------------------------------------------------------------------------------------
    def _run(self) -> None:
        selector = self._selector
        assert selector is not None
        drivers: dict[int, _Driver] = {}
        try:
            while not self._stopping.is_set():
                timeout = 0.2
                now = time.monotonic()
                for driver in list(drivers.values()):
                    deadline = driver.tick(now)
                    if deadline:
                        timeout = max(0.0, min(timeout, deadline - now))
                self._reap(drivers)
                for driver in drivers.values():
                    writing = driver.outgoing and not driver.silent()
                    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
                    selector.modify(driver.sock, events, driver)
                for key, mask in selector.select(timeout):
                    if key.fileobj is self._listener:
                        self._accept(drivers)
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                    elif isinstance(key.data, _Driver):
                        if mask & selectors.EVENT_READ:
                            key.data.on_readable()
                        if mask & selectors.EVENT_WRITE:
                            key.data.on_writable()
                self._reap(drivers)
        except BaseException as exc:  # re-raised by stop()
            self._error = exc
        finally:
            # Close everything at once, so that SDK clients fail fast instead of waiting on a dead peer.
            for driver in drivers.values():
                selector.unregister(driver.sock)
                driver.sock.close()
            if self._error is not None and self._listener is not None:
                selector.unregister(self._listener)
                self._listener.close()

    def _accept(self, drivers: dict[int, _Driver]) -> None:
        assert self._listener is not None and self._selector is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        driver = _Driver(self, sock)
        drivers[driver.id] = driver
        self._selector.register(sock, selectors.EVENT_READ, driver)
        self._count_connection()
        driver.process()

    def _reap(self, drivers: dict[int, _Driver]) -> None:
        assert self._selector is not None
        for driver_id, driver in list(drivers.items()):
            if driver.finished:
                self._selector.unregister(driver.sock)
                with contextlib.suppress(OSError):
                    driver.sock.shutdown(socket.SHUT_RDWR)
                driver.sock.close()
                driver.transport.unbind()
                del drivers[driver_id]


def _decode_request(payload: bytes) -> tuple[Message, dict[str, object]]:
    request = Message()
    request.decode(payload)
    raw = request.properties
    properties: dict[str, object] = {} if raw is None else {str(k): v for k, v in raw.items()}
    return request, properties


def _refusal_matches(refusal: _Refusal, token: Mapping[str, str]) -> bool:
    if refusal.key_name is not None and token.get("skn") != refusal.key_name:
        return False
    if refusal.key is None:
        return True
    resource, expiry, signature = token.get("sr", ""), token.get("se", ""), token.get("sig", "")
    return hmac.compare_digest(sas_signature(resource, expiry, refusal.key), signature)


def _replace(stats: PeerStats, **changes: object) -> PeerStats:
    return replace(stats, **changes)  # type: ignore[arg-type]  # each caller passes a PeerStats field
