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
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Generic, Protocol, TypeVar

import orjson
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from routing import observability as obs
from routing.model import Attempt, EndpointType, Outgoing
from routing.routes import Endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyGroup:
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
    """The first `count` of the messages offered could not be delivered."""

    def __init__(self, reason: str, *, count: int, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.count = count
        self.permanent = permanent
        self.attempts: tuple[Attempt, ...] = ()


HELD_BEHIND = "held behind an earlier failure for the same key"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


ClientT = TypeVar("ClientT")

# Keys of one endpoint sent at once: each lane has its own client (connection) to the endpoint.
DEFAULT_LANES = 4


class ClientSender(ABC, Generic[ClientT]):
    """What every SDK sender shares: one client per connection, reused; failover from the primary
    connection to the secondary when the primary is refused; and stop-the-line per key, so a key's
    messages are never delivered past one that failed.

    Subclasses build one batch from the front of a key's messages, and send it.
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
        self._executor: ThreadPoolExecutor | None = None
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

    @abstractmethod
    def _prepare(self, client: ClientT, key: str, messages: Sequence[Outgoing]) -> tuple[Any, int]:
        """A batch of a prefix of `messages` and its length; `BatchFailed` if the first cannot fit."""

    @abstractmethod
    def _transmit(self, client: ClientT, batch: Any) -> None:
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

    def _send_with_failover(self, key: str, messages: Sequence[Outgoing], lane: int = 0) -> int:
        """One batch from the front of `messages`, trying the other connection once if this one is refused."""
        tried: list[int] = []
        while True:
            index = self.active
            tried.append(index)
            # Until the batch is built, a failure is the first message's; the others wait behind it.
            count = 1
            try:
                client = self._client(index, lane)
                batch, count = self._prepare(client, key, messages)
                self._transmit(client, batch)
                return count
            except BatchFailed:
                raise
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
                raise BatchFailed(reason, count=count, permanent=permanent) from error

    def _send_with_retries(self, key: str, messages: Sequence[Outgoing], lane: int) -> int:
        attempts: list[Attempt] = []

        def attempt(key: str, messages: Sequence[Outgoing]) -> int:
            try:
                return self._send_with_failover(key, messages, lane)
            except BatchFailed as failure:
                attempts.append(Attempt(time=_now(), error=failure.reason))
                failure.attempts = tuple(attempts)
                raise

        def note_retry(state: RetryCallState) -> None:
            with self._lock:
                self.retries += 1
            obs.RETRIES.add(1, {"endpoint": self.endpoint.name})
            failure = state.outcome.exception() if state.outcome else None
            log.warning(
                "endpoint '%s': retrying key %s after %s (attempt %d)",
                self.endpoint.name,
                key,
                getattr(failure, "reason", failure),
                state.attempt_number,
                extra={
                    "endpoint": self.endpoint.name,
                    "order_key": key,
                    "message_id": messages[0].message_id,
                    "event_type": str(messages[0].event_type),
                    "attempt": state.attempt_number,
                },
            )

        retrying = Retrying(
            stop=stop_after_attempt(self.retry.attempts),
            wait=wait_exponential_jitter(multiplier=self.retry.backoff_initial, max=self.retry.backoff_max),
            retry=retry_if_exception(lambda e: isinstance(e, BatchFailed) and not e.permanent),
            before_sleep=note_retry,
            reraise=True,
        )
        sent: int = retrying(attempt, key, messages)
        if sent < 1:
            raise BatchFailed("the sender took no message", count=1, permanent=False)
        return sent

    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        """Every key's group in order; different keys go out at once on separate lanes.

        A key always maps to the same lane, and a lane (its own client, as the SDK clients are not
        thread-safe) sends its groups one after another, so a key's order holds.
        """
        if self.lanes == 1 or len(groups) == 1:
            return self._send_lane(groups, 0)
        buckets: list[list[KeyGroup]] = [[] for _ in range(self.lanes)]
        for group in groups:
            buckets[zlib.crc32(group.key.encode()) % self.lanes].append(group)
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.lanes, thread_name_prefix=f"send-{self.endpoint.name}")
            executor = self._executor
        futures = [executor.submit(self._send_lane, bucket, lane) for lane, bucket in enumerate(buckets) if bucket]
        reports = [future.result() for future in futures]
        return SendReport(
            delivered=tuple(m for r in reports for m in r.delivered),
            failed=tuple(f for r in reports for f in r.failed),
        )

    def _send_lane(self, groups: Sequence[KeyGroup], lane: int) -> SendReport:
        delivered: list[Outgoing] = []
        failed: list[Failure] = []
        for group in groups:
            messages = group.messages
            start = 0
            while start < len(messages):
                try:
                    start += self._send_with_retries(group.key, messages[start:], lane)
                except BatchFailed as failure:
                    count = max(1, min(failure.count, len(messages) - start))
                    for message in messages[start : start + count]:
                        failed.append(
                            Failure(
                                message=message,
                                reason=failure.reason,
                                permanent=failure.permanent,
                                attempts=failure.attempts,
                            )
                        )
                    for message in messages[start + count :]:
                        failed.append(Failure(message=message, reason=HELD_BEHIND, permanent=False))
                    break
            delivered.extend(messages[:start])
        return SendReport(delivered=tuple(delivered), failed=tuple(failed))

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            for client in self._clients.values():
                close = getattr(client, "close", None)
                if close is not None:
                    close()
            self._clients.clear()
