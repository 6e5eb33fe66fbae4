"""Senders: the one way out to each kind of endpoint.

A sender receives, per endpoint, the messages grouped by order key (each group in order) and reports
per message what was delivered and what failed and why. This module holds the protocol and the file
sender the local runner uses; the Azure senders live beside it and keep the same contract.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO, Any, Generic, Protocol, TypeVar

import msgspec
import orjson
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from routing import observability as obs
from routing.errors import SettingsError
from routing.model import Attempt, EndpointType, Outgoing
from routing.routes.table import Endpoint

log = logging.getLogger(__name__)


class KeyGroup(msgspec.Struct, frozen=True):
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


# Which sender delivers an endpoint's messages (a `SenderPool`, or one sender for every endpoint).
SenderFor = Callable[[Endpoint], Sender]


def output_record(endpoint: Endpoint, message: Outgoing) -> dict[str, Any]:
    """The documented line of the local runner's output (a stable format other tools read)."""
    record: dict[str, Any] = {
        "endpoint": endpoint.name,
        "endpointType": endpoint.type.value,
        "eventType": message.event_type.value,
    }
    if endpoint.type is EndpointType.EVENT_HUB:
        record["partitionKey"] = message.order_key
    elif endpoint.type is EndpointType.SERVICE_BUS:
        record["sessionId"] = message.order_key
    record["messageId"] = message.message_id
    record["contentType"] = message.content_type
    record["properties"] = dict(message.properties)
    record["bodyBase64"] = base64.b64encode(message.body).decode("ascii")
    with contextlib.suppress(orjson.JSONDecodeError):
        record["body"] = orjson.loads(message.body)
    return record


class FileSender:
    """Appends each endpoint's messages to `<dir>/<endpoint name>.jsonl`, one line per message sent."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, IO[bytes]] = {}
        self._lock = threading.Lock()

    def _file(self, name: str) -> IO[bytes]:
        handle = self._files.get(name)
        if handle is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle = self._files[name] = (self.directory / f"{name}.jsonl").open("ab")
        return handle

    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        lines = [
            orjson.dumps(output_record(endpoint, message)) + b"\n" for group in groups for message in group.messages
        ]
        with self._lock:
            handle = self._file(endpoint.name)
            handle.write(b"".join(lines))
            handle.flush()
        return SendReport(delivered=tuple(m for g in groups for m in g.messages))

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryOptions:
    """Retries of transient faults inside one invocation: capped exponential backoff with jitter.

    The senders retry themselves (the SDKs' own retries are off) so that only transient faults are
    retried, every retry is counted, and failover happens before any backoff.
    """

    attempts: int = 4
    backoff_initial: float = 0.5
    backoff_max: float = 10.0


class BatchFailed(Exception):
    """A batch (or the preparing of the batches) failed: none of its messages was delivered."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.attempts: tuple[Attempt, ...] = ()


class PackingRefused(Exception):
    """The destination refused a batch for what it mixes (order keys, message ids), and took none of it.

    The sender that raises it packs less from now on (e.g. one key, or one message, per batch); the
    messages are packed again.
    """


class Unsendable(Exception):
    """This message can never be sent to the endpoint as it is (e.g. a session id the service would
    refuse): it fails alone, permanently, and its key stops before it; the batch goes on without it."""


HELD_BEHIND = "held behind an earlier failure for the same key"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


ClientT = TypeVar("ClientT")
T = TypeVar("T")

# Clients (connections) per endpoint connection, and so batches of one endpoint sent at once.
DEFAULT_LANES = 4
# Threads that send the batches of the other lanes, shared by every sender of the process: bounded however
# many endpoints there are (a thread per lane per endpoint would be thousands with a large route table).
LANE_THREADS = 32
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
    """Where one order key stands: its first `sent` messages are delivered; the rest before `end` wait."""

    __slots__ = ("end", "key", "messages", "sent")

    def __init__(self, group: KeyGroup) -> None:
        self.key = group.key
        self.messages = group.messages
        self.sent = 0
        self.end = len(group.messages)

    def fail(self, failed: list[Failure], index: int, count: int, failure: BatchFailed) -> None:
        """Messages `index` to `index + count` failed with `failure`; the rest of the key is held behind them."""
        for message in self.messages[index : index + count]:
            failed.append(
                Failure(message=message, reason=failure.reason, permanent=failure.permanent, attempts=failure.attempts)
            )
        for message in self.messages[index + count : self.end]:
            failed.append(Failure(message=message, reason=HELD_BEHIND, permanent=False))
        self.end = index


class ClientSender(ABC, Generic[ClientT]):
    """What every SDK sender shares: clients per connection, reused; failover from the primary connection to
    the secondary when the primary is refused; many keys packed into few batches; retries of a failed batch
    as a whole; and stop-the-line per key, so a key's messages are never delivered past one that failed.

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
    def _transmit(self, client: ClientT, prepared: Prepared) -> None:
        """Send a prepared batch; raise the SDK's error if it was not taken."""

    @abstractmethod
    def _is_refused(self, error: Exception) -> bool:
        """Whether `error` says the credentials were refused (then the other connection is tried)."""

    @abstractmethod
    def _describe(self, error: Exception) -> tuple[str, bool]:
        """A reason a person understands, and whether retrying later could help (False) or not (True)."""

    def _client(self, index: int, lane: int) -> ClientT:
        with self._lock:
            client = self._clients.get((index, lane))
            if client is None:
                client = self._clients[(index, lane)] = self._new_client(self.connections[index])
            return client

    # -- packing ----------------------------------------------------------------------------------------
    def _pack(self, client: ClientT, pending: Sequence[tuple[str, Sequence[Outgoing]]]) -> Plan:
        """Every pending message in as few batches as its route allows, each key's messages in order."""
        sequences: dict[Hashable, list[Prepared]] = {}
        rejected: list[tuple[int, int, str]] = []
        for position, (key, messages) in enumerate(pending):
            route = self._route(client, key)
            sequence = sequences.get(route)
            if sequence is None:
                sequence = sequences[route] = [Prepared(self._open(client, route))]
            current = sequence[-1]
            for offset, message in enumerate(messages):
                try:
                    if not self._add(current.payload, message):
                        fresh = Prepared(self._open(client, route)) if current.messages else current
                        if fresh is current or not self._add(fresh.payload, message):
                            # Too large even alone; the batch in use keeps its room for the other keys.
                            rejected.append((position, offset, self._too_large(message, fresh.payload)))
                            break
                        current = fresh  # the other was full: the rest of this route goes in the next batch
                        sequence.append(current)
                except Unsendable as unsendable:
                    rejected.append((position, offset, str(unsendable)))
                    break
                current.messages.append(message)
                current.counts[key] = current.counts.get(key, 0) + 1
        batches = [(route, [p for p in sequence if p.messages]) for route, sequence in sequences.items()]
        return Plan([(route, sequence) for route, sequence in batches if sequence], rejected)

    # -- sending ----------------------------------------------------------------------------------------
    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        """Every key's messages in order, many keys to a batch; the batches of independent routes at once.

        In rounds: pack what is pending, send the batches; a batch that fails fails its messages and holds
        the rest of its keys; batches that were not sent because an earlier one of their sequence failed
        (or was refused for mixing keys) are packed again in the next round, without the held keys.
        """
        keys = [_Key(group) for group in groups if group.messages]
        by_key = {state.key: state for state in keys}
        delivered: list[Outgoing] = []
        failed: list[Failure] = []
        # Each round settles at least one batch or changes how keys are packed; this bound is a guard.
        for _round in range(sum(len(state.messages) for state in keys) + 2):
            pending = [state for state in keys if state.sent < state.end]
            if not pending:
                break
            slices = [(state.key, state.messages[state.sent : state.end]) for state in pending]
            first = pending[0].messages[pending[0].sent]
            try:
                # On lane 0, whose client asks what packing needs (sizes, partitions) once.
                with self._lane_locks[0]:
                    plan = self._attempt(0, partial(self._pack, pending=slices), first, sum(len(m) for _k, m in slices))
            except BatchFailed as unprepared:
                # Nothing could be prepared: each key's next message failed, and the rest waits behind it.
                for state in pending:
                    state.fail(failed, state.sent, 1, unprepared)
                break
            for position, offset, reason in plan.rejected:
                # Too large for any batch: it fails at once, and its key stops before it. What came
                # before it is in this round's batches.
                refusal = BatchFailed(reason, permanent=True)
                refusal.attempts = (Attempt(time=_now(), error=reason),)
                pending[position].fail(failed, pending[position].sent + offset, 1, refusal)
            for prepared, failure in self._run(plan.sequences):
                if failure is None:
                    delivered.extend(prepared.messages)
                    for key, count in prepared.counts.items():
                        by_key[key].sent += count
                else:
                    for key, count in prepared.counts.items():
                        by_key[key].fail(failed, by_key[key].sent, count, failure)
        else:
            for state in keys:
                if state.sent < state.end:
                    state.fail(failed, state.sent, 1, BatchFailed("the sender made no progress", permanent=False))
        return SendReport(delivered=tuple(delivered), failed=tuple(failed))

    def _run(self, sequences: list[tuple[Hashable, list[Prepared]]]) -> list[tuple[Prepared, BatchFailed | None]]:
        """Send each route's batches on its lane: on this thread when one lane has them all, else at once."""
        lanes: dict[int, list[list[Prepared]]] = {}
        for route, batches in sequences:
            lanes.setdefault(self._lane(route), []).append(batches)
        work = list(lanes.items())
        # This thread holds no lane while it waits for the others, so lanes never wait on each other.
        futures = [_lane_pool().submit(self._run_on_lane, lane, batches) for lane, batches in work[1:]]
        results = self._run_on_lane(*work[0]) if work else []
        for future in futures:
            results.extend(future.result())
        return results

    def _run_on_lane(self, lane: int, sequences: list[list[Prepared]]) -> list[tuple[Prepared, BatchFailed | None]]:
        with self._lane_locks[lane]:
            return self._run_sequences(sequences, lane)

    def _run_sequences(self, sequences: list[list[Prepared]], lane: int) -> list[tuple[Prepared, BatchFailed | None]]:
        """Each sequence's batches in order, up to the first that fails (the rest are packed again)."""
        results: list[tuple[Prepared, BatchFailed | None]] = []
        for sequence in sequences:
            for prepared in sequence:
                try:
                    self._attempt(
                        lane, partial(self._transmit, prepared=prepared), prepared.messages[0], len(prepared.messages)
                    )
                except BatchFailed as failure:
                    results.append((prepared, failure))
                    break
                except PackingRefused:
                    break
                results.append((prepared, None))
        return results

    # -- one operation: failover, then retries -----------------------------------------------------------
    def _with_failover(self, lane: int, operation: Callable[[ClientT], T]) -> T:
        """`operation` on this lane's client, trying the other connection once if this one is refused."""
        tried: list[int] = []
        while True:
            index = self.active
            tried.append(index)
            try:
                return operation(self._client(index, lane))
            except (BatchFailed, PackingRefused):
                raise
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
                    reason, permanent = f"unauthorized with {names}: {reason}", True
                raise BatchFailed(reason, permanent=permanent) from error

    def _attempt(self, lane: int, operation: Callable[[ClientT], T], first: Outgoing, count: int) -> T:
        """`operation` with failover, retried as a whole on transient faults; every failed try is kept."""
        attempts: list[Attempt] = []

        def once() -> T:
            try:
                return self._with_failover(lane, operation)
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

        retrying = Retrying(
            stop=stop_after_attempt(self.retry.attempts),
            wait=wait_exponential_jitter(multiplier=self.retry.backoff_initial, max=self.retry.backoff_max),
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
        log.warning(
            "endpoint '%s': retrying a batch of %d message(s), key %s first, after %s (attempt %d)",
            self.endpoint.name,
            count,
            first.order_key,
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
        for client in clients:
            close = getattr(client, "close", None)
            if close is not None:
                close()
