"""Senders: the one way out to each kind of endpoint.

A sender receives, per endpoint, the messages grouped by order key (each group in order) and reports
per message what was delivered and what failed and why. This module holds the protocol and the file
sender the local runner uses; the Azure senders live beside it and keep the same contract.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import heapq
import itertools
import logging
import queue
import socket
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Generic, Protocol, TypeVar, cast

import msgspec
import orjson
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from routing import observability as obs
from routing.errors import SettingsError
from routing.model import EVENT_TYPE_TEXT, Attempt, EndpointType, Outgoing, opening_brackets
from routing.routes.table import Endpoint

log = logging.getLogger(__name__)


class KeyGroup(msgspec.Struct, frozen=True, gc=False):
    """One order key's messages for one endpoint, in the order they must arrive."""

    key: str
    messages: tuple[Outgoing, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    message: Outgoing
    reason: str
    permanent: bool
    attempts: tuple[Attempt, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SendReport:
    delivered: tuple[Outgoing, ...] = ()
    failed: tuple[Failure, ...] = ()


class Sender(Protocol):
    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        """Deliver every group, each in order; never raise for a message the endpoint refuses."""
        ...

    def close(self) -> None: ...


def sends_at_once(sender: Sender) -> bool:
    """Whether `sender`'s send never waits (it only takes the messages, in memory): its `sends_at_once`
    attribute, False for a sender without one. The pipeline makes such a send on the routing thread."""
    return getattr(sender, "sends_at_once", False) is True


# Which sender delivers an endpoint's messages (a `SenderPool`, or one sender for every endpoint).
SenderFor = Callable[[Endpoint], Sender]


def output_record(endpoint: Endpoint, message: Outgoing) -> dict[str, Any]:
    """The documented line of the local runner's output (a stable format other tools read)."""
    record = _record_head(*_endpoint_fields(endpoint), message, base64.b64encode(message.body).decode("ascii"))
    with contextlib.suppress(orjson.JSONDecodeError):
        record["body"] = orjson.loads(message.body)
    return record


# The endpoint types' names, looked up (an enum's `.value` is a Python-level property, on every line).
_ENDPOINT_TYPE_TEXT = {t: t.value for t in EndpointType}
# Where an endpoint's order key goes in the record: its partition key, its session id, or nowhere.
_KEY_FIELD = {EndpointType.EVENT_HUB: "partitionKey", EndpointType.SERVICE_BUS: "sessionId"}


def _endpoint_fields(endpoint: Endpoint) -> tuple[str, str, str | None]:
    """What `endpoint` gives each of its records: its name, its type's text, the field its order key goes in."""
    return endpoint.name, _ENDPOINT_TYPE_TEXT[endpoint.type], _KEY_FIELD.get(endpoint.type)


def _record_head(name: str, kind: str, key_field: str | None, message: Outgoing, body_base64: str) -> dict[str, Any]:
    """`output_record` up to its last field, `body`, for the endpoint named `name` of type text `kind`
    whose order key goes in `key_field` (`_KEY_FIELD`; None: nowhere): the fields in one literal."""
    properties = message.properties
    if key_field is None:
        return {
            "endpoint": name,
            "endpointType": kind,
            "eventType": EVENT_TYPE_TEXT[message.event.event_type],
            "messageId": message.message_id,
            "contentType": message.content_type,
            "properties": properties if type(properties) is dict else dict(properties),
            "bodyBase64": body_base64,
        }
    return {
        "endpoint": name,
        "endpointType": kind,
        "eventType": EVENT_TYPE_TEXT[message.event.event_type],
        key_field: message.order_key,
        "messageId": message.message_id,
        "contentType": message.content_type,
        "properties": properties if type(properties) is dict else dict(properties),
        "bodyBase64": body_base64,
    }


# A body with this many opening brackets may nest as deep as orjson writes (254 levels; the record adds
# one): its line is written the plain way, `orjson.dumps(output_record(...))`, failing as that fails.
_MAY_NEST_DEEP = 250

# Per body (by identity, while the messages holding it are alive): its base64 text, the JSON its `body`
# field is written as (None: the bytes hold no JSON), and whether it may nest too deep for either.
_Forms = tuple[str, orjson.Fragment | None, bool]
_BodyForms = dict[int, _Forms]


def _body_forms(body: bytes, body_json: bool) -> _Forms:
    # Fewer bytes than twice the limit hold fewer opening brackets than it (each needs its closing one).
    if len(body) >= 2 * _MAY_NEST_DEEP and opening_brackets(body) >= _MAY_NEST_DEEP:
        return "", None, True
    if body_json:
        # `orjson.dumps` wrote it (`Outgoing.body_json`): read back and written again, it is these bytes.
        written: orjson.Fragment | None = orjson.Fragment(body)
    else:
        try:
            # What `orjson.dumps(record)` writes for `record["body"] = orjson.loads(body)`.
            written = orjson.Fragment(orjson.dumps(orjson.loads(body)))
        except orjson.JSONDecodeError:
            written = None
    return binascii.b2a_base64(body, newline=False).decode("ascii"), written, False


def output_line(endpoint: Endpoint, message: Outgoing, forms: _BodyForms | None = None) -> bytes:
    """`orjson.dumps(output_record(endpoint, message)) + b"\n"`, byte for byte, with the body's base64
    and JSON made once per body object in `forms`: the pipeline builds one envelope per event and format,
    shared by every endpoint that takes it, so a twin event's body is read back once, not once per
    endpoint, and its JSON (orjson's form of the value) goes into each record as made (`orjson.Fragment`)."""
    return output_lines(endpoint, (message,), {} if forms is None else forms)[0]


def output_lines(endpoint: Endpoint, messages: Iterable[Outgoing], forms: _BodyForms) -> list[bytes]:
    """`output_line` of each of `messages`, what the endpoint gives every line looked up once."""
    name, kind, key_field = _endpoint_fields(endpoint)
    dumps = orjson.dumps
    lines = []
    for message in messages:
        body = message.body
        made = forms.get(id(body))
        if made is None:
            made = forms[id(body)] = _body_forms(body, message.body_json)
        body_base64, written, deep = made
        if deep:
            lines.append(dumps(output_record(endpoint, message)) + b"\n")
            continue
        record = _record_head(name, kind, key_field, message, body_base64)
        if written is not None:
            record["body"] = written
        lines.append(dumps(record, option=orjson.OPT_APPEND_NEWLINE))
    return lines


class FileSender:
    """Appends each endpoint's messages to `<dir>/<endpoint name>.jsonl`, one line per message sent.

    `deferred` (the local runner's): `send` only takes the messages, and `flush` writes what every send
    since the last took, on the caller's thread. The pipeline sends to each endpoint of a batch on a
    thread of its own; the lines are the work here, and made on those threads they contend for the GIL
    (and read a body shared by several endpoints once per endpoint). The runner flushes after each batch
    and each redelivery, so the files hold the same lines in the same order; `close` flushes too. (The
    writes on a thread of their own, each handing the interpreter back and forth, made `routing run`
    10-20% slower on two cores: they stay here.)
    """

    def __init__(self, directory: Path, *, deferred: bool = False) -> None:
        self.directory = directory
        self.deferred = deferred
        # Deferred, a send only takes the messages (`sends_at_once`).
        self.sends_at_once = deferred
        self._files: dict[str, IO[bytes]] = {}
        self._lock = threading.Lock()
        self._pending: list[tuple[Endpoint, tuple[Outgoing, ...]]] = []

    def _file(self, name: str) -> IO[bytes]:
        handle = self._files.get(name)
        if handle is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle = self._files[name] = (self.directory / f"{name}.jsonl").open("ab")
        return handle

    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        messages = tuple(m for g in groups for m in g.messages)
        if self.deferred:
            with self._lock:
                self._pending.append((endpoint, messages))
            return SendReport(delivered=messages)
        forms: _BodyForms = {}
        data = b"".join(output_lines(endpoint, messages, forms))
        with self._lock:
            handle = self._file(endpoint.name)
            handle.write(data)
            handle.flush()
        return SendReport(delivered=messages)

    def flush(self) -> None:
        """Write what the sends since the last flush took (deferred), each endpoint's in the order sent."""
        with self._lock:
            pending, self._pending = self._pending, []
            if not pending:
                return
            forms: _BodyForms = {}  # valid while `pending` holds the messages
            lines: dict[str, list[bytes]] = {}
            for endpoint, messages in pending:
                into = lines.setdefault(endpoint.name, [])
                into.extend(output_lines(endpoint, messages, forms))
            for name, written in lines.items():
                handle = self._file(name)
                handle.write(b"".join(written))
                handle.flush()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._lock:
                for handle in self._files.values():
                    handle.close()
                self._files.clear()


# -- time budgets (docs/FAILURE_HANDLING.md, "Send budgets") -------------------------------------------
# One try of one SDK operation (a send, or the connection, token, link and management calls the SDK makes
# before it): a healthy Event Hubs, Service Bus or Event Grid send answers in milliseconds, and opening a
# cold TLS connection with its token and link takes one or two seconds; 10 s leaves a slow but answering
# service room and still lets four tries fit the endpoint budget below.
TRY_TIMEOUT = 10.0
# Everything one endpoint's messages of one invocation may cost (tries, backoff, waiting for a lane):
# 4 tries x 10 s + backoff (0.1 + 0.2 + 0.4 s plus up to 0.1 s of jitter each) ~ 41 s fits in it, and an
# invocation whose every endpoint is black-holed still ends in about a minute, well inside host.json's
# functionTimeout (10 min). When it runs out, what is left fails as transient (parked, in order).
SEND_BUDGET = 60.0
# How long past a try's timeout the sender waits for the SDK to give up by itself (its own timeouts are set
# to the try's), before it abandons the call and breaks the client's connections.
ABANDON_GRACE = 1.0
# Abandoned calls per sender still blocked in the SDK (a black hole the SDK cannot see: e.g. its SASL
# handshake reads without a timeout). Beyond this, tries fail at once instead of leaving more threads behind.
MAX_ABANDONED = 8
# A client whose last try succeeded less than this long ago sends its next batch from the calling thread
# when its subclass says the send opens nothing (`ClientSender._opens_nothing`): then the SDK's own
# timeouts bound it (a send on an open link waits for its settlement only that long, reading with a socket
# timeout). Well inside the services' idle limits (Event Hubs closes an idle connection after 4 minutes,
# Service Bus an idle link after 10), past which the next send would reconnect.
WARM_SECONDS = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryOptions:
    """Retries of transient faults inside one invocation: capped exponential backoff with jitter.

    The senders retry themselves (the SDKs' own retries are off) so that only transient faults are
    retried, every retry is counted, and failover happens before any backoff. `timeout` bounds each try,
    `budget` everything one `send` may take (tries, backoff and waiting for a lane).

    The backoff is short (0.1 s doubling, jitter up to `backoff_initial`): these tries ride out a blip (a
    reset connection, one 500, a moment of throttling) within the invocation; a fault that outlasts them
    parks the endpoint's messages and opens its circuit, and the redelivery's probes (10 s doubling to
    5 min, routing/health.py) are the long backoff. A long one here cost every faulted batch seconds.
    """

    attempts: int = 4
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    timeout: float = TRY_TIMEOUT
    budget: float = SEND_BUDGET


class BatchFailed(Exception):
    """A batch (or the preparing of the batches) failed: none of its messages was delivered."""

    def __init__(self, reason: str, *, permanent: bool, endpoint_wide: bool = False, at_once: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        # A refusal of the endpoint itself (its credentials), not of what the batch held.
        self.endpoint_wide = endpoint_wide
        # A fault the next try may follow without a backoff, the first time (`ClientSender._retry_at_once`).
        self.at_once = at_once
        self.attempts: tuple[Attempt, ...] = ()


class PackingRefused(Exception):
    """The destination refused a batch for what it mixes (order keys, message ids), and took none of it.

    The sender that raises it packs less from now on (e.g. one key, or one message, per batch); the
    messages are packed again.
    """


class Unsendable(Exception):
    """This message can never be sent to the endpoint as it is (e.g. a session id the service would
    refuse): it fails alone, permanently, and its key stops before it; the batch goes on without it."""


class TimedOut(Exception):
    """A try got no answer within its time budget (raised by the SDK's own timeout or by the sender's)."""


# AMQP's long: what the SDKs encode a Python int as, and refuse outside of.
_AMQP_LONG = range(-(2**63), 2**63)


def unencodable_property(properties: Mapping[str, Any]) -> str | None:
    """Why these application properties cannot be encoded for AMQP (naming the property), or None."""

    def problem(value: Any) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool) and value not in _AMQP_LONG:
            return f"{value} is outside the 64-bit integer range AMQP can carry"
        if isinstance(value, Mapping):
            return next((p for p in map(problem, value.values()) if p), None)
        if isinstance(value, list | tuple):
            return next((p for p in map(problem, value) if p), None)
        return None

    for name, value in properties.items():
        if found := problem(value):
            return f"application property '{name}': {found}"
    return None


def sdk_error_text(error: Exception) -> str:
    """An SDK error as one line: its type and message, then what else it says (an AMQP error condition),
    without the "Error Description" the AMQP SDKs add, which repeats the message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    first, *rest = lines
    more = [
        line
        for line in rest
        if not (line.lower().startswith("error description:") and line.partition(":")[2].strip() in first)
    ]
    return f"{type(error).__name__}: " + "; ".join([first, *more])


def unsendable_reason(message: Outgoing, destination: str, error: Exception) -> str:
    """The reason a message the SDK refused to encode fails alone, naming the property when it can."""
    why = unencodable_property(message.properties) or f"{type(error).__name__}: {error}"
    return f"message cannot be encoded for {destination}: {why}"


HELD_BEHIND = "held behind an earlier failure for the same key"


# The name of the thread a try runs on: the name of the one waiting for it, and this.
TRY_THREAD_SUFFIX = "/try"
# The least time worth starting a try with: less than this left of the budget, and the send stops.
_MIN_TRY = 0.05


class _StopAt(stop_base):
    """Stop retrying when too little of the send's budget is left for another try."""

    def __init__(self, remaining: Callable[[], float]) -> None:
        self.remaining = remaining

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.remaining() < _MIN_TRY


def _sockets_of(root: object, limit: int = 20000) -> list[socket.socket]:
    """The sockets reachable from an SDK client's attributes (its connections' transports)."""
    found: list[socket.socket] = []
    seen: set[int] = set()
    todo: list[object] = [root]
    while todo and len(seen) < limit:
        item = todo.pop()
        if (
            id(item) in seen
            or isinstance(item, str | bytes | int | float | type)
            or (callable(item) and not hasattr(item, "__dict__"))
        ):
            continue
        seen.add(id(item))
        if isinstance(item, socket.socket):
            found.append(item)
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset | deque):
            todo.extend(item)
        elif hasattr(item, "__dict__") and not isinstance(item, ModuleType | threading.Thread):
            todo.extend(vars(item).values())
    return found


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class _Watchdog:
    """One thread for the process that calls a late try's `on_late` (which breaks its client's connections,
    ending the call) when a try on the calling thread runs past its time. Watching costs a heap push under
    a lock: the thread is woken only for a watch due before it would wake anyway (it sleeps `_IDLE_WAIT`
    when nothing is watched, and every try is due `ABANDON_GRACE` past its timeout), never once per try."""

    _IDLE_WAIT = 5.0

    def __init__(self) -> None:
        self._due: list[list[Any]] = []  # [due, sequence, on_late or None once cancelled]
        self._sequence = itertools.count()
        self._changed = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        # When the thread wakes next if nothing wakes it (-inf while it is awake: it looks at every watch).
        self._wakes_at = float("-inf")

    def watch(self, due: float, on_late: Callable[[], None]) -> list[Any]:
        entry = [due, next(self._sequence), on_late]
        with self._changed:
            self._forget_cancelled()
            heapq.heappush(self._due, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="send-watchdog", daemon=True)
                self._thread.start()
            elif due < self._wakes_at:
                self._changed.notify()
        return entry

    def cancel(self, entry: list[Any]) -> None:
        with self._changed:
            entry[2] = None
            self._forget_cancelled()

    def _forget_cancelled(self) -> None:
        # Tries mostly end in the order they started (their timeouts are alike), so the earliest watches
        # are the ones cancelled first: popping them here keeps the heap to the tries under way.
        due = self._due
        while due and due[0][2] is None:
            heapq.heappop(due)

    def _serve(self) -> None:
        while True:
            with self._changed:
                self._forget_cancelled()
                now = time.monotonic()
                if not self._due or self._due[0][0] > now:
                    wait = self._due[0][0] - now if self._due else self._IDLE_WAIT
                    self._wakes_at = now + wait
                    self._changed.wait(wait)
                    self._wakes_at = float("-inf")
                    continue
                entry = heapq.heappop(self._due)
                on_late, entry[2] = entry[2], None
            with contextlib.suppress(Exception):
                on_late()


_watchdog = _Watchdog()


ClientT = TypeVar("ClientT")
T = TypeVar("T")
# One SDK operation: the client, and the seconds it may take (given to the SDK's own timeouts).
Operation = Callable[[ClientT, float], T]


@dataclass(frozen=True, slots=True)
class Here(Generic[ClientT]):
    """Whether an operation on (connection index, lane, client) may run on the calling thread (`_bounded`),
    and whether its success says the client's connection works (a send does; packing does not)."""

    may: Callable[[int, int, ClientT], bool]
    warms: bool = False


# Clients (connections) per endpoint connection, and so batches of one endpoint sent at once.
DEFAULT_LANES = 4
# Threads that send the batches of the other lanes, shared by every sender of the process: bounded however
# many endpoints there are (a thread per lane per endpoint would be thousands with a large route table),
# and started only as needed; room for every lane of the endpoints one batch sends to at once.
LANE_THREADS = 128
_lane_threads: ThreadPoolExecutor | None = None
_lane_threads_lock = threading.Lock()


def _lane_pool() -> ThreadPoolExecutor:
    global _lane_threads
    with _lane_threads_lock:
        if _lane_threads is None:
            _lane_threads = ThreadPoolExecutor(LANE_THREADS, thread_name_prefix="send-lane")
        return _lane_threads


@dataclass(slots=True, eq=False)
class Prepared:
    """One SDK batch (or request) ready to send: its messages in the order it carries them, and per key how
    many of that key's next messages it holds."""

    payload: Any
    messages: list[Outgoing] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    """The batches for what is pending, per route: a route's batches are sent in order (a key's batches
    are all in its route's sequence); different routes carry different keys and may go out at once.

    `rejected`: (pending group, position in its pending messages, why) of each message no batch can hold.
    """

    sequences: list[tuple[Hashable, list[Prepared]]]
    rejected: list[tuple[int, int, str]]


class _Key:
    """Where one order key stands: `pending` are its messages neither delivered nor failed yet, in order (a
    tuple, the group's own until something is settled: packing takes it as it is, no copy per key)."""

    __slots__ = ("key", "pending")

    def __init__(self, group: KeyGroup) -> None:
        self.key = group.key
        self.pending: tuple[Outgoing, ...] = group.messages

    def delivered(self, count: int) -> None:
        self.pending = self.pending[count:]

    def fail(self, failed: list[Failure], count: int, failure: BatchFailed, *, at: int = 0) -> None:
        """The `count` pending messages from `at` failed with `failure`.

        A permanent failure costs those messages alone: the key goes on with its next one (a message that
        can never be delivered must never stop its device). A transient one holds the rest of the key behind
        them (stop-the-line: none of it may be delivered ahead), to be parked or dead-lettered in order.
        """
        for message in self.pending[at : at + count]:
            failed.append(
                Failure(message=message, reason=failure.reason, permanent=failure.permanent, attempts=failure.attempts)
            )
        if failure.permanent:
            self.pending = self.pending[:at] + self.pending[at + count :]
            return
        for message in self.pending[at + count :]:
            failed.append(Failure(message=message, reason=HELD_BEHIND, permanent=False))
        self.pending = self.pending[:at]


class _TryWorker:
    """A lane's thread for its tries: each try runs off the calling thread so that it can be given up on
    (ClientSender._bounded), on a thread kept for the next try, since starting one per try cost about
    120 us per send. A worker given up on is replaced, and ends when the call it is stuck in returns."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while (job := self.jobs.get()) is not None:
            job()


class ClientSender(ABC, Generic[ClientT]):
    """What every SDK sender shares: clients per connection, reused; failover from the primary connection to
    the secondary when the primary is refused; many keys packed into few batches; retries of a failed batch
    as a whole; and stop-the-line per key, so a key's messages are never delivered past one that failed
    transiently (one refused for good fails alone).

    Subclasses say where a key's messages may go together (`_route`: the keys of one route may share a
    batch), open and fill a batch, and send it.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        retry: RetryOptions,
        env: Mapping[str, str] | None = None,
        lanes: int = DEFAULT_LANES,
    ) -> None:
        self.endpoint = endpoint
        self.lanes = max(1, lanes)
        # A client is used by one thread at a time (the SDK clients are not thread-safe), across invocations.
        self._lane_locks = [threading.Lock() for _ in range(self.lanes)]
        self.retry = retry
        self.env = env
        self.connections = [endpoint.connection]
        if endpoint.secondary_connection:
            self.connections.append(endpoint.secondary_connection)
        self.active = 0
        self._clients: dict[tuple[int, int], ClientT] = {}
        self._lock = threading.Lock()
        self.failovers = 0
        self.retries = 0
        # Calls given up on that are still blocked inside the SDK (see MAX_ABANDONED).
        self._abandoned: list[threading.Thread] = []
        # Each lane's thread for its tries (`_bounded`), kept across tries and invocations.
        self._workers: dict[int, _TryWorker] = {}
        self.timeouts = 0
        # When each (connection, lane) client's last try succeeded (a failure or a retired client forgets it).
        self._succeeded: dict[tuple[int, int], float] = {}

    @abstractmethod
    def _new_client(self, setting: str) -> ClientT: ...

    def _route(self, client: ClientT, key: str) -> Hashable:
        """Which batches `key`'s messages may share: keys of the same route are packed together."""
        return None

    def _lane(self, route: Hashable) -> int:
        """The lane that sends `route`'s batches: always the same one, so each client opens only the links
        its routes need."""
        return 0 if route is None else zlib.crc32(str(route).encode()) % self.lanes

    @abstractmethod
    def _open(self, client: ClientT, route: Hashable) -> Any:
        """A new, empty batch for `route`."""

    @abstractmethod
    def _add(self, batch: Any, message: Outgoing) -> bool:
        """Add `message` to `batch`; False if it does not fit."""

    @abstractmethod
    def _too_large(self, message: Outgoing, batch: Any) -> str:
        """Why `message` fits no batch (it did not fit an empty one)."""

    @abstractmethod
    def _transmit(self, client: ClientT, prepared: Prepared, timeout: float) -> None:
        """Send a prepared batch within `timeout` seconds; raise the SDK's error if it was not taken."""

    @abstractmethod
    def _is_refused(self, error: Exception) -> bool:
        """Whether `error` says the credentials were refused (then the other connection is tried)."""

    @abstractmethod
    def _describe(self, error: Exception) -> tuple[str, bool]:
        """A reason a person understands, and whether retrying later could help (False) or not (True)."""

    def _retry_at_once(self, error: Exception) -> bool:
        """Whether the first retry after the transient fault `error` may go without a backoff: a connection
        that broke under the try (reset, closed by the far side; the next try reconnects), or a server error
        that asks no one to slow down (HTTP 500, 502, 504; not 429 or 503). azure-core's own retry policy
        sends every first retry at once; a backoff here only added to every batch such a fault touched."""
        return False

    def _packs_offline(self, client: ClientT) -> bool:
        """Whether packing on `client` calls nothing on the service (it knows its batch size and partitions):
        then it runs on the calling thread. False (the safe answer) when unsure."""
        return False

    def _opens_nothing(self, client: ClientT, prepared: Prepared) -> bool:
        """Whether sending `prepared` on `client` opens no connection, link or token (they are open): then its
        own timeouts bound the send, and a warm client sends it on the calling thread. False when unsure."""
        return False

    def _transmit_within(self, prepared: Prepared, client: ClientT, timeout: float) -> None:
        self._transmit(client, prepared, timeout)

    def _sends_here(self, prepared: Prepared, index: int, lane: int, client: ClientT) -> bool:
        succeeded = self._succeeded.get((index, lane))
        return (
            succeeded is not None
            and time.monotonic() - succeeded < WARM_SECONDS
            and self._opens_nothing(client, prepared)
        )

    def _timed_out(self, error: Exception) -> bool:
        """Whether `error` is the SDK giving up for want of an answer (then the client is replaced)."""
        text = str(error).lower()
        return isinstance(error, TimeoutError) or "timed out" in text or "timeout" in type(error).__name__.lower()

    def _client(self, index: int, lane: int) -> ClientT:
        with self._lock:
            client = self._clients.get((index, lane))
            if client is None:
                client = self._clients[(index, lane)] = self._new_client(self.connections[index])
            return client

    # -- packing ----------------------------------------------------------------------------------------
    def _pack(
        self,
        client: ClientT,
        timeout: float,
        pending: Sequence[tuple[str, Sequence[Outgoing]]],
        alone: Collection[int] = frozenset(),
    ) -> Plan:
        """Every pending message in as few batches as its route allows, each key's messages in order; those
        in `alone` (`id()`s: messages of a batch the service refused for good) each in a batch of its own."""
        sequences: dict[Hashable, list[Prepared]] = {}
        rejected: list[tuple[int, int, str]] = []
        for position, (key, messages) in enumerate(pending):
            route = self._route(client, key)
            sequence = sequences.get(route)
            if sequence is None:
                sequence = sequences[route] = [Prepared(self._open(client, route))]
            current = sequence[-1]
            held = 0  # of this key's messages, how many `current` holds (counted once per batch, not per message)
            for offset, message in enumerate(messages):
                if alone and current.messages and (id(message) in alone or id(current.messages[-1]) in alone):
                    if held:
                        current.counts[key] = current.counts.get(key, 0) + held
                        held = 0
                    current = Prepared(self._open(client, route))  # a batch of its own: nothing before or after
                    sequence.append(current)
                try:
                    if not self._add(current.payload, message):
                        fresh = Prepared(self._open(client, route)) if current.messages else current
                        if fresh is current or not self._add(fresh.payload, message):
                            # Too large even alone; the batch in use keeps its room for the other keys.
                            rejected.append((position, offset, self._too_large(message, fresh.payload)))
                            break
                        if held:
                            current.counts[key] = current.counts.get(key, 0) + held
                            held = 0
                        current = fresh  # the other was full: the rest of this route goes in the next batch
                        sequence.append(current)
                except Unsendable as unsendable:
                    rejected.append((position, offset, str(unsendable)))
                    break
                current.messages.append(message)
                held += 1
            if held:
                current.counts[key] = current.counts.get(key, 0) + held
        batches = [(route, [p for p in sequence if p.messages]) for route, sequence in sequences.items()]
        return Plan([(route, sequence) for route, sequence in batches if sequence], rejected)

    # -- sending ----------------------------------------------------------------------------------------
    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        """Every key's messages in order, many keys to a batch; the batches of independent routes at once."""
        return self.prepare(endpoint, groups)()

    def _regroup(self, groups: Sequence[KeyGroup]) -> Sequence[KeyGroup]:
        """The groups as this sender keeps them apart (the order keys', unless a subclass says otherwise)."""
        return groups

    def prepare(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> Callable[[], SendReport]:
        """The send of `groups`, as a call to make on any thread, with the first round's packing done now,
        on this thread, when it asks nothing of the service (`_packs_offline`) and lane 0 is free.

        Packing is CPU alone; the sends are mostly waiting. The pipeline packs every endpoint's batches on
        its own thread and hands only the sends to others: packed on the thread that sends, a thousand
        endpoints' packing contended for the interpreter on the endpoints' threads (issue #15). Anything
        that stops packing here (a client not yet connected, lane 0 busy with another invocation's send, an
        error) leaves it to the call, which packs and reports it as `send` always has.
        """
        keys = [_Key(group) for group in self._regroup(groups) if group.messages]
        packed: Plan | None = None
        lane = self._lane_locks[0]
        if keys and lane.acquire(blocking=False):
            try:
                client = self._client(self.active, 0)
                if self._packs_offline(client):
                    packed = self._pack(client, self.retry.timeout, [(state.key, state.pending) for state in keys])
            except Exception:  # packed again in the call, which reports the error
                packed = None
            finally:
                lane.release()
        return partial(self._deliver, keys, packed)

    def _deliver(self, keys: list[_Key], packed: Plan | None) -> SendReport:
        """In rounds: pack what is pending (the first round's plan may be `packed` already), send the
        batches; a batch that fails fails its messages, and a transient failure holds the rest of its keys
        (a permanent one lets them go on: `_Key.fail`); batches that were not sent because an earlier one
        of their sequence failed (or was refused for mixing keys) are packed again in the next round,
        without the held keys. The send's budget starts here, when it starts, as it did before packing
        moved to `prepare` (a send waiting for an endpoint thread behind others does not spend it).
        """
        deadline = time.monotonic() + self.retry.budget
        by_key = {state.key: state for state in keys}
        delivered: list[Outgoing] = []
        failed: list[Failure] = []
        alone: set[int] = set()
        # Each round settles at least one batch or changes how keys are packed; this bound is a guard.
        total = sum([len(state.pending) for state in keys])
        for _round in range(2 * total + 2):
            pending = [state for state in keys if state.pending]
            if not pending:
                break
            try:
                if packed is not None:  # the first round, packed by `prepare` (every key pending, in order)
                    plan, packed = packed, None
                else:
                    slices = [(state.key, state.pending) for state in pending]
                    # On lane 0, whose client asks what packing needs (sizes, partitions) once.
                    with self._holding(0, deadline):
                        plan = self._attempt(
                            0,
                            partial(self._pack, pending=slices, alone=alone),
                            pending[0].pending[0],
                            total if _round == 0 else sum([len(m) for _k, m in slices]),
                            deadline,
                            here=Here(self._packs_on),
                        )
            except BatchFailed as unprepared:
                # Nothing could be prepared: a permanent cause (a setting missing) fails every message, a
                # transient one each key's next message, with the rest of the key held behind it.
                for state in pending:
                    state.fail(failed, len(state.pending) if unprepared.permanent else 1, unprepared)
                break
            # Too large for any batch, or unsendable: it fails at once, alone; what came before it is in this
            # round's batches, what comes after it in the next round's. Latest first, so positions hold.
            for position, offset, reason in sorted(plan.rejected, key=lambda item: item[1], reverse=True):
                refusal = BatchFailed(reason, permanent=True)
                refusal.attempts = (Attempt(time=_now(), error=reason),)
                pending[position].fail(failed, 1, refusal, at=offset)
            results = self._run(plan.sequences, deadline)
            if (
                not plan.rejected
                and all(failure is None for _prepared, failure in results)
                and len(results) == sum([len(sequence) for _route, sequence in plan.sequences])
            ):
                # Every batch of the round went (the common case, in its first round): every pending message
                # was in one, so no key is left to settle one by one.
                for prepared, _failure in results:
                    delivered.extend(prepared.messages)
                return SendReport(delivered=tuple(delivered), failed=tuple(failed))
            for prepared, failure in results:
                if failure is None:
                    delivered.extend(prepared.messages)
                    for key, count in prepared.counts.items():
                        by_key[key].delivered(count)
                elif failure.permanent and not failure.endpoint_wide and len(prepared.messages) > 1:
                    # Refused for good, but for what? One message may be why (too large, a 400): each goes
                    # again alone, so only a message the service refuses by itself fails, and its key goes
                    # on without the others being dead-lettered with it. Nothing of the batch was taken.
                    alone.update(id(message) for message in prepared.messages)
                else:
                    for key, count in prepared.counts.items():
                        by_key[key].fail(failed, count, failure)
        else:
            for state in keys:
                if state.pending:
                    state.fail(failed, 1, BatchFailed("the sender made no progress", permanent=False))
        return SendReport(delivered=tuple(delivered), failed=tuple(failed))

    def _run(
        self, sequences: list[tuple[Hashable, list[Prepared]]], deadline: float
    ) -> list[tuple[Prepared, BatchFailed | None]]:
        """Send each route's batches on its lane: on this thread when one lane has them all, else at once."""
        lanes: dict[int, list[list[Prepared]]] = {}
        for route, batches in sequences:
            lanes.setdefault(self._lane(route), []).append(batches)
        work = list(lanes.items())
        # This thread holds no lane while it waits for the others, so lanes never wait on each other.
        futures = [_lane_pool().submit(self._run_on_lane, lane, batches, deadline) for lane, batches in work[1:]]
        results = self._run_on_lane(*work[0], deadline) if work else []
        for future in futures:
            results.extend(future.result())
        return results

    @contextlib.contextmanager
    def _holding(self, lane: int, deadline: float) -> Iterator[None]:
        """Hold `lane` (its client is used by one thread at a time), waiting for it no longer than the budget."""
        lock = self._lane_locks[lane]
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise BatchFailed(
                f"endpoint '{self.endpoint.name}': its send budget of {self.retry.budget:g} s ran out waiting for "
                "another invocation's send to it (timed out)",
                permanent=False,
            )
        try:
            yield
        finally:
            lock.release()

    def _run_on_lane(
        self, lane: int, sequences: list[list[Prepared]], deadline: float
    ) -> list[tuple[Prepared, BatchFailed | None]]:
        try:
            with self._holding(lane, deadline):
                return self._run_sequences(sequences, lane, deadline)
        except BatchFailed as busy:
            busy.attempts = (Attempt(time=_now(), error=busy.reason),)
            return [(sequence[0], busy) for sequence in sequences if sequence]

    def _run_sequences(
        self, sequences: list[list[Prepared]], lane: int, deadline: float
    ) -> list[tuple[Prepared, BatchFailed | None]]:
        """Each sequence's batches in order, up to the first that fails (the rest are packed again)."""
        results: list[tuple[Prepared, BatchFailed | None]] = []
        for sequence in sequences:
            for prepared in sequence:
                try:
                    self._attempt(
                        lane,
                        partial(self._transmit_within, prepared),
                        prepared.messages[0],
                        len(prepared.messages),
                        deadline,
                        here=Here(partial(self._sends_here, prepared), warms=True),
                    )
                except BatchFailed as failure:
                    results.append((prepared, failure))
                    break
                except PackingRefused:
                    break
                results.append((prepared, None))
        return results

    # -- one operation: bounded in time, failover, then retries -----------------------------------------
    def _packs_on(self, index: int, lane: int, client: ClientT) -> bool:
        return self._packs_offline(client)

    def _bounded(
        self, index: int, lane: int, operation: Operation[ClientT, T], timeout: float, here: Here[ClientT] | None = None
    ) -> T:
        """`operation` on this lane's client of connection `index`, given up on after `timeout` seconds.

        The SDKs' own timeouts are set to `timeout` and bound most waits, but not all of them (their AMQP
        SASL handshake reads without one; a link attach that is never answered is waited for in a loop), so
        the call runs on a thread of its own and this one stops waiting `ABANDON_GRACE` later. Then, and
        whenever the SDK itself reports a timeout, the client is retired (its connections broken, closed)
        so a hung connection or link is never used again: the next try opens a new one.

        When `here` says the call cannot hang (it opens nothing, its own timeouts bound it), it runs on this
        thread instead, with the process' watchdog to break the client's connections should it still run
        `ABANDON_GRACE` past its time: a hand-off to another thread and back cost more CPU than packing a
        batch of telemetry (issue #15).
        """
        client = self._client(index, lane)
        warms = here is not None and here.warms
        if here is not None and here.may(index, lane, client):
            return self._here(index, lane, client, operation, timeout, warms)
        with self._lock:
            self._abandoned = [thread for thread in self._abandoned if thread.is_alive()]
            stuck = len(self._abandoned)
        if stuck >= MAX_ABANDONED:
            raise TimedOut(f"{stuck} earlier calls to it are still unanswered; not starting another")
        outcome: list[tuple[bool, Any]] = []
        done = threading.Event()
        caller = threading.current_thread().name
        context = contextvars.copy_context()

        def run() -> None:
            # Named for the thread (the lane) it does the work of.
            threading.current_thread().name = f"{caller}{TRY_THREAD_SUFFIX}"
            try:
                outcome.append((True, context.run(operation, client, timeout)))
            except BaseException as error:  # handed to the waiting thread
                outcome.append((False, error))
            finally:
                done.set()

        worker = self._worker(lane)
        worker.jobs.put(run)
        if not done.wait(timeout + ABANDON_GRACE):
            with self._lock:
                if self._workers.get(lane) is worker:
                    del self._workers[lane]
                self._abandoned.append(worker.thread)
            worker.jobs.put(None)  # it ends once the SDK lets its call go
            self._retire(index, lane, client)
            raise TimedOut(f"no answer within {timeout:g} s")
        succeeded, value = outcome[0]
        if succeeded:
            if warms:
                self._succeeded[(index, lane)] = time.monotonic()
            return cast(T, value)
        self._succeeded.pop((index, lane), None)
        if isinstance(value, Exception) and self._timed_out(value):
            self._retire(index, lane, client)
        raise value

    def _here(  # noqa: PLR0917 - the arguments of `_bounded`
        self, index: int, lane: int, client: ClientT, operation: Operation[ClientT, T], timeout: float, warms: bool
    ) -> T:
        """`operation` on this thread, its client retired (its connections broken) if it runs late."""
        late: list[bool] = []

        def on_late() -> None:
            late.append(True)
            self._retire(index, lane, client)

        watch = _watchdog.watch(time.monotonic() + timeout + ABANDON_GRACE, on_late)
        try:
            value = operation(client, timeout)
        except Exception as error:
            self._succeeded.pop((index, lane), None)
            if late:
                raise TimedOut(f"no answer within {timeout:g} s") from error
            if self._timed_out(error):
                self._retire(index, lane, client)
            raise
        finally:
            _watchdog.cancel(watch)
        if late:  # the call ended as its connections were broken: what it did is not to be trusted
            self._succeeded.pop((index, lane), None)
            raise TimedOut(f"no answer within {timeout:g} s")
        if warms:
            self._succeeded[(index, lane)] = time.monotonic()
        return value

    def _worker(self, lane: int) -> _TryWorker:
        with self._lock:
            worker = self._workers.get(lane)
            if worker is None:
                worker = self._workers[lane] = _TryWorker(f"{self.endpoint.name}-lane{lane}{TRY_THREAD_SUFFIX}")
            return worker

    def _retire(self, index: int, lane: int, client: ClientT) -> None:
        """Never use `client` again: break its connections (which ends a call blocked on them) and close it,
        on a thread of its own, since closing waits for answers a black hole never gives."""
        with self._lock:
            if self._clients.get((index, lane)) is client:
                del self._clients[(index, lane)]
                self._succeeded.pop((index, lane), None)
            self.timeouts += 1

        def close() -> None:
            for sock in _sockets_of(client):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(Exception):
                getattr(client, "close", lambda: None)()

        threading.Thread(target=close, name=f"retire-{self.endpoint.name}", daemon=True).start()

    def _with_failover(
        self, lane: int, operation: Operation[ClientT, T], timeout: float, here: Here[ClientT] | None = None
    ) -> T:
        """`operation` on this lane's client, trying the other connection once if this one is refused."""
        tried: list[int] = []
        while True:
            index = self.active
            tried.append(index)
            try:
                return self._bounded(index, lane, operation, timeout, here)
            except (BatchFailed, PackingRefused):
                raise
            except TimedOut as error:
                raise BatchFailed(
                    f"endpoint '{self.endpoint.name}' ({self.connections[index]}) timed out: {error}", permanent=False
                ) from error
            except SettingsError as error:
                # A setting missing from the app's configuration: retrying in this invocation cannot
                # help (a replay can, once it is set), and the reason names the setting to fix.
                raise BatchFailed(f"endpoint '{self.endpoint.name}': {error}", permanent=True) from error
            except Exception as error:
                refused = self._is_refused(error)
                untried = [i for i in range(len(self.connections)) if i not in tried]
                if refused and untried:
                    with self._lock:
                        # Another lane may have failed over already: then this one just follows.
                        switched = self.active == index
                        if switched:
                            self.active = untried[0]
                            self.failovers += 1
                    if switched:
                        obs.FAILOVERS.add(1, {"endpoint": self.endpoint.name})
                        log.warning(
                            "endpoint '%s': connection %s was refused (%s); failing over to %s",
                            self.endpoint.name,
                            self.connections[index],
                            type(error).__name__,
                            self.connections[untried[0]],
                            extra={"endpoint": self.endpoint.name, "connection": self.connections[untried[0]]},
                        )
                    continue
                reason, permanent = self._describe(error)
                if refused:
                    names = " and ".join(self.connections[i] for i in tried)
                    raise BatchFailed(
                        f"unauthorized with {names}: {reason}", permanent=True, endpoint_wide=True
                    ) from error
                if self._timed_out(error):
                    reason = f"timed out after {timeout:g} s: {reason}" if "timed out" not in reason else reason
                raise BatchFailed(
                    reason, permanent=permanent, at_once=not permanent and self._retry_at_once(error)
                ) from error

    def _attempt(
        self,
        lane: int,
        operation: Operation[ClientT, T],
        first: Outgoing,
        count: int,
        deadline: float,
        *,
        here: Here[ClientT] | None = None,
    ) -> T:
        """`operation` with failover, retried as a whole on transient faults; every failed try is kept.

        Each try gets at most `RetryOptions.timeout` seconds, and no try starts or waits past `deadline`
        (the send's budget): what is still failing then stays failed, as transient.
        """
        attempts: list[Attempt] = []

        def remaining() -> float:
            return deadline - time.monotonic()

        def once() -> T:
            try:
                left = remaining()
                if left < _MIN_TRY:
                    raise BatchFailed(
                        f"endpoint '{self.endpoint.name}': its send budget of {self.retry.budget:g} s ran out "
                        "before this try (timed out)",
                        permanent=False,
                    )
                return self._with_failover(lane, operation, min(self.retry.timeout, left), here)
            except BatchFailed as failure:
                attempts.append(Attempt(time=_now(), error=failure.reason))
                failure.attempts = tuple(attempts)
                raise

        try:
            return once()  # the first try is a plain call: tenacity only once something has failed
        except BatchFailed as failure:
            if failure.permanent or self.retry.attempts < 2:
                raise
            first_failure = failure
        replayed = False

        def again() -> T:
            # Tenacity sees the first try's failure as its own first attempt, so waits and stops are the same.
            nonlocal replayed
            if not replayed:
                replayed = True
                raise first_failure
            return once()

        backoff = wait_exponential_jitter(
            multiplier=self.retry.backoff_initial, max=self.retry.backoff_max, jitter=self.retry.backoff_initial
        )

        def wait(state: RetryCallState) -> float:
            # A lost connection or a server error is retried at once, the first time (`_retry_at_once`): a
            # backoff would only add to every batch such a fault touches. Only a second failure backs off.
            failure = state.outcome.exception() if state.outcome else None
            if state.attempt_number == 1 and isinstance(failure, BatchFailed) and failure.at_once:
                return 0.0
            return max(0.0, min(backoff(state), remaining() - _MIN_TRY))

        retrying = Retrying(
            # Out of tries, or too little of the budget left for another one after the wait.
            stop=stop_any(stop_after_attempt(self.retry.attempts), _StopAt(remaining)),
            wait=wait,
            retry=retry_if_exception(lambda e: isinstance(e, BatchFailed) and not e.permanent),
            before_sleep=partial(self._note_retry, first, count),
            reraise=True,
        )
        return retrying(again)

    def _note_retry(self, first: Outgoing, count: int, state: RetryCallState) -> None:
        with self._lock:
            self.retries += 1
        obs.RETRIES.add(1, {"endpoint": self.endpoint.name})
        failure = state.outcome.exception() if state.outcome else None
        pause = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "endpoint '%s': retrying a batch of %d message(s), key %s first, %s, after %s (attempt %d)",
            self.endpoint.name,
            count,
            first.order_key,
            f"in {pause:.2f} s" if pause else "at once",
            getattr(failure, "reason", failure),
            state.attempt_number,
            extra={
                "endpoint": self.endpoint.name,
                "order_key": first.order_key,
                "message_id": first.message_id,
                "event_type": str(first.event_type),
                "attempt": state.attempt_number,
            },
        )

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.jobs.put(None)
        for client in clients:
            close = getattr(client, "close", None)
            if close is not None:
                close()


class Sent:
    """A send `prepared` made at once (its sender's send never waits): the call gives its report."""

    __slots__ = ("report",)

    def __init__(self, report: SendReport) -> None:
        self.report = report

    def __call__(self) -> SendReport:
        return self.report


def prepared(sender: Sender, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> Callable[[], SendReport]:
    """The send of `groups` to `endpoint` as a call to make on any thread, with what may be done on this one
    done now: a `ClientSender` packs its first round here (`ClientSender.prepare`); a sender whose send
    never waits (`sends_at_once`: the local runner's deferred `FileSender`, whose `flush` writes what its
    sends took) sends here (`Sent`: nothing to hand to a thread); any other sender does everything in the
    call."""
    if isinstance(sender, ClientSender):
        return sender.prepare(endpoint, groups)
    if sends_at_once(sender):
        return Sent(sender.send(endpoint, groups))
    return partial(sender.send, endpoint, groups)
