"""Endpoint health: healthy, degraded, unhealthy or dead (IoT Hub's names), and the circuit breaker.

Each process keeps the state of every endpoint it sends to, from what its sends report, and shares it
through a small record per endpoint (`_health/<endpoint>.json` in the dead-letter container), which
every instance, the redelivery and `routing routes status` read. The states:

- **healthy**: sends succeed;
- **degraded**: sends succeed, but one failed within the last `DEGRADED_SECONDS` (permanent refusals,
  a transient fault that a retry got past), or the endpoint is recovering from an outage;
- **unhealthy**: a transient fault outlasted the in-invocation tries, and messages are parked. The
  circuit is open: the live pipeline parks the endpoint's messages without trying it, and only the
  redelivery probes it, with capped exponential backoff (`PROBE_INITIAL_SECONDS` doubling up to
  `PROBE_MAX_SECONDS`). A probe that succeeds closes the circuit everywhere: the live pipeline of every
  instance reads the shared record of an endpoint whose circuit it holds open at most every
  `REFRESH_SECONDS`;
- **dead**: unhealthy for longer than the endpoint's time to live: its oldest parked messages are
  expiring into dead letters. Treated as unhealthy otherwise.

The record is written when the state changes, and while the endpoint is not healthy at most every
`HEARTBEAT_SECONDS` besides (its `lastSuccess`). An endpoint that was never anything but healthy has no
record: routing to a healthy endpoint costs no storage call. Writes are last-writer-wins; a reader
takes a record for what it says at its `updated` time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from azure.core.exceptions import AzureError, ResourceNotFoundError

from routing import observability as obs
from routing.deadletters import blob_sdk, parse_time

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

log = logging.getLogger(__name__)

HEALTH_FOLDER = "_health"
# A failure this recent keeps a delivering endpoint degraded.
DEGRADED_SECONDS = 60.0
# While the circuit is open here, the shared record is read at most this often (one read per endpoint).
REFRESH_SECONDS = 10.0
# The first probe after the circuit opens, and the most time between probes (capped doubling).
PROBE_INITIAL_SECONDS = 10.0
PROBE_MAX_SECONDS = 300.0
# A healthy endpoint's record is brought up to date (its last success) at most this often.
HEARTBEAT_SECONDS = 300.0
# Server-side limit per operation: the record is a few hundred bytes.
SERVER_TIMEOUT_SECONDS = 5


class State(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    DEAD = "dead"

    @property
    def is_open(self) -> bool:
        """Whether the circuit is open: messages are parked without trying the endpoint."""
        return self in (State.UNHEALTHY, State.DEAD)


# The number each state is exported as (metric `router.endpoint.state`), worst highest.
STATE_VALUES = {State.HEALTHY: 0, State.DEGRADED: 1, State.UNHEALTHY: 2, State.DEAD: 3}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _moment(value: Any) -> datetime | None:
    return parse_time(value) if isinstance(value, str) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    """One endpoint's health as a process (or the shared record) knows it."""

    endpoint: str
    state: State = State.HEALTHY
    since: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    # Failed probes (or parking sends) in a row since the circuit opened: the backoff's exponent.
    failures: int = 0
    next_probe: datetime | None = None
    updated: datetime | None = None

    def to_record(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "state": self.state.value,
            "since": _iso(self.since),
            "lastSuccess": _iso(self.last_success),
            "lastError": self.last_error,
            "lastErrorAt": _iso(self.last_error_at),
            "failures": self.failures,
            "nextProbe": _iso(self.next_probe),
            "updated": _iso(self.updated),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Health:
        state = State(record.get("state") or State.HEALTHY.value)
        return cls(
            endpoint=str(record.get("endpoint") or ""),
            state=state,
            since=_moment(record.get("since")),
            last_success=_moment(record.get("lastSuccess")),
            last_error=record.get("lastError"),
            last_error_at=_moment(record.get("lastErrorAt")),
            failures=int(record.get("failures") or 0),
            next_probe=_moment(record.get("nextProbe")),
            updated=_moment(record.get("updated")),
        )


class HealthStore(Protocol):
    def read(self, endpoint: str) -> Health | None: ...

    def read_all(self) -> dict[str, Health]: ...

    def write(self, health: Health) -> None: ...


class MemoryHealth:
    """Health records in this process only: the local runner, where nothing else needs to read them."""

    def __init__(self) -> None:
        self._records: dict[str, Health] = {}
        self._lock = threading.Lock()

    def read(self, endpoint: str) -> Health | None:
        with self._lock:
            return self._records.get(endpoint)

    def read_all(self) -> dict[str, Health]:
        with self._lock:
            return dict(self._records)

    def write(self, health: Health) -> None:
        with self._lock:
            self._records[health.endpoint] = health


class BlobHealth:
    """Health records as blobs `_health/<endpoint>.json` in the dead-letter container (its client, with
    the dead-letter store's time budget: routing/deadletters.py)."""

    def __init__(self, container: ContainerClient) -> None:
        self.container = container

    @staticmethod
    def name(endpoint: str) -> str:
        return f"{HEALTH_FOLDER}/{endpoint}.json"

    def read(self, endpoint: str) -> Health | None:
        try:
            data = self.container.download_blob(self.name(endpoint), timeout=SERVER_TIMEOUT_SECONDS).readall()
        except ResourceNotFoundError:
            return None
        return Health.from_record(orjson.loads(data))

    def read_all(self) -> dict[str, Health]:
        found: dict[str, Health] = {}
        try:
            names = [b.name for b in self.container.list_blobs(name_starts_with=f"{HEALTH_FOLDER}/")]
        except ResourceNotFoundError:
            return found
        for name in names:
            with contextlib.suppress(ResourceNotFoundError, orjson.JSONDecodeError, ValueError):
                data = self.container.download_blob(name, timeout=SERVER_TIMEOUT_SECONDS).readall()
                health = Health.from_record(orjson.loads(data))
                found[health.endpoint] = health
        return found

    def write(self, health: Health) -> None:
        data = orjson.dumps(health.to_record(), option=orjson.OPT_INDENT_2)
        try:
            self._upload(health.endpoint, data)
        except ResourceNotFoundError:
            with contextlib.suppress(AzureError):
                self.container.create_container(timeout=SERVER_TIMEOUT_SECONDS)
            self._upload(health.endpoint, data)

    def _upload(self, endpoint: str, data: bytes) -> None:
        self.container.upload_blob(
            self.name(endpoint),
            data,
            overwrite=True,
            content_settings=blob_sdk().ContentSettings(content_type="application/json"),
            timeout=SERVER_TIMEOUT_SECONDS,
        )


def probe_delay(failures: int) -> float:
    """Seconds before the next probe after `failures` failed tries in a row: capped doubling."""
    return float(min(PROBE_MAX_SECONDS, PROBE_INITIAL_SECONDS * 2 ** max(0, min(failures - 1, 30))))


class Breaker:
    """The health of the endpoints this process sends to, and whether their circuit is open.

    `record` takes what a live send reported; `probed` what a redelivery probe did; `is_open` answers the
    live pipeline (park without trying?), `may_probe` the redelivery (is a probe due?). Shared records
    are written on state changes (a store that fails is logged, never raised: health is advice, and the
    parked messages, not the health record, are what keep order).
    """

    def __init__(self, store: HealthStore, *, clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.clock = clock or (lambda: datetime.now(UTC))
        self._local: dict[str, Health] = {}
        self._read_at: dict[str, datetime] = {}
        self._written_at: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def states(self) -> dict[str, Health]:
        with self._lock:
            return dict(self._local)

    def _get(self, endpoint: str) -> Health:
        return self._local.get(endpoint) or Health(endpoint=endpoint)

    def is_open(self, endpoint: str) -> bool:
        """Whether to park `endpoint`'s messages without trying it. While open, the shared record is read
        at most every `REFRESH_SECONDS`: a success there (a probe by the redelivery) closes it here."""
        now = self.clock()
        with self._lock:
            current = self._get(endpoint)
            if not current.state.is_open:
                return False
            read_at = self._read_at.get(endpoint)
            if read_at is not None and (now - read_at).total_seconds() < REFRESH_SECONDS:
                return True
            self._read_at[endpoint] = now
        try:
            shared = self.store.read(endpoint)
        except AzureError as exc:
            log.warning("could not read the health of endpoint '%s': %s", endpoint, type(exc).__name__)
            return True
        with self._lock:
            current = self._get(endpoint)
            if (
                shared is not None
                and not shared.state.is_open
                and shared.last_success is not None
                and (current.since is None or shared.last_success > current.since)
            ):
                self._local[endpoint] = replace(shared, updated=now)
                obs.ENDPOINT_STATE.set(STATE_VALUES[shared.state], {"endpoint": endpoint})
                log.info("endpoint '%s' answers again (%s): its circuit closes", endpoint, shared.state.value)
                return False
            return current.state.is_open

    def record(self, endpoint: str, *, delivered: int, transient: str | None, permanent: str | None) -> Health:
        """What a live send to `endpoint` did: `transient` names a fault that outlasted the tries (its
        messages were parked), `permanent` one the endpoint refuses for good (dead-lettered)."""
        now = self.clock()
        with self._lock:
            before = self._get(endpoint)
            after = _next(before, now, delivered=delivered, transient=transient, permanent=permanent)
            self._local[endpoint] = after
        self._publish(before, after, now)
        return after

    def may_probe(self, endpoint: str, shared: Health | None = None) -> bool:
        """Whether the redelivery may try `endpoint` now: its circuit is closed, or its next probe is due."""
        now = self.clock()
        with self._lock:
            current = self._get(endpoint)
            if shared is not None and (current.updated is None or (shared.updated or now) > current.updated):
                current = self._local[endpoint] = shared
        if not current.state.is_open:
            return True
        return current.next_probe is None or current.next_probe <= now

    def probed(self, endpoint: str, *, delivered: int, transient: str | None, permanent: str | None) -> Health:
        """What a redelivery probe (or drain) of `endpoint` did."""
        return self.record(endpoint, delivered=delivered, transient=transient, permanent=permanent)

    def expiring(self, endpoint: str) -> Health:
        """Parked messages of `endpoint` reached their time to live while it is unhealthy: it is dead."""
        now = self.clock()
        with self._lock:
            before = self._get(endpoint)
            if not before.state.is_open or before.state is State.DEAD:
                return before
            after = self._local[endpoint] = replace(before, state=State.DEAD, since=now, updated=now)
        self._publish(before, after, now)
        return after

    def _publish(self, before: Health, after: Health, now: datetime) -> None:
        obs.ENDPOINT_STATE.set(STATE_VALUES[after.state], {"endpoint": after.endpoint})
        changed = before.state is not after.state or before.next_probe != after.next_probe
        with self._lock:
            written = self._written_at.get(after.endpoint)
            # An endpoint that was never anything but healthy has no record: routing to it costs nothing.
            beat = written is not None and (now - written).total_seconds() >= HEARTBEAT_SECONDS
            if not (changed or (beat and after.state is not State.HEALTHY)):
                return
            self._written_at[after.endpoint] = now
        if before.state is not after.state:
            level = logging.WARNING if after.state.is_open else logging.INFO
            log.log(
                level,
                "endpoint '%s' is %s (was %s)%s",
                after.endpoint,
                after.state.value,
                before.state.value,
                f": {after.last_error}" if after.state.is_open and after.last_error else "",
                extra={"endpoint": after.endpoint, "state": after.state.value},
            )
        try:
            self.store.write(after)
        except AzureError as exc:
            # Advice only: the next change writes it again.
            log.warning("could not keep the health of endpoint '%s': %s", after.endpoint, type(exc).__name__)


def _older(moment: datetime, now: datetime) -> bool:
    return (now - moment).total_seconds() >= DEGRADED_SECONDS


def _next(before: Health, now: datetime, *, delivered: int, transient: str | None, permanent: str | None) -> Health:
    """The state after one send's outcome."""
    if transient is not None:
        failures = before.failures + 1 if before.state.is_open else 1
        opened = before.state.is_open
        return replace(
            before,
            state=before.state if opened else State.UNHEALTHY,
            since=before.since if opened else now,
            last_error=transient,
            last_error_at=now,
            failures=failures,
            next_probe=now + timedelta(seconds=probe_delay(failures)),
            updated=now,
        )
    success = before.last_success
    if delivered:
        success = now
    error, error_at = before.last_error, before.last_error_at
    if permanent is not None:
        error, error_at = permanent, now
    if before.state.is_open and not delivered:
        # A permanent refusal while the circuit is open says nothing about whether it is back.
        return replace(before, last_error=error, last_error_at=error_at, updated=now)
    recent = error_at is not None and (now - error_at).total_seconds() < DEGRADED_SECONDS
    # Back from an outage, or degraded lately: degraded until a quiet `DEGRADED_SECONDS` has passed.
    settling = before.state is not State.HEALTHY and before.since is not None and not _older(before.since, now)
    state = State.DEGRADED if before.state.is_open or recent or settling else State.HEALTHY
    since = before.since if state is before.state else now
    return replace(
        before,
        state=state,
        since=since,
        last_success=success,
        last_error=error,
        last_error_at=error_at,
        failures=0,
        next_probe=None,
        updated=now,
    )
