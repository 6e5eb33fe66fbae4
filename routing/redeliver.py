"""Redelivery: parked messages sent again, in order per key, once their endpoint answers.

The timer function `redeliver_parked` (function_app.py) runs it; the Functions host runs a timer
function on one instance at a time, so one redelivery runs at once. Each run:

1. reads every parked blob (routing/parking.py);
2. per endpoint, in original order per key (hub, partition, sequence number, position), one message
   once however many blobs hold it: what has outlived the endpoint's time to live (`timeToLiveMinutes`,
   counted from when it was first parked) becomes a dead letter (`expired`) with every attempt, an alert
   is logged, and the key goes on without it (the one documented way order can break);
3. if the endpoint is in the table, enabled, and its circuit allows a probe now (routing/health.py:
   capped exponential backoff per endpoint), sends what is left through the same senders, stop-the-line
   per key: what is delivered is removed, what the endpoint refuses for good is dead-lettered, what still
   fails transiently waits for the next probe with the new attempt in its record;
4. writes the dead letters first, then rewrites each blob with what is left, or deletes it, but only if
   it is unchanged since it was read (a batch the host retried meanwhile rewrote it: the next run sees it,
   and repeats what it repeats with the same message ids).

A key is released once none of its messages is parked: the live pipeline, listing the partition before
its next batch, then delivers the key's messages itself. Only removing happens here, so a key cannot be
released while the live pipeline parks more of it: what it parks is in a blob this run did not read.
"""

from __future__ import annotations

import base64
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError, ResourceModifiedError

from routing import observability as obs
from routing.deadletters import DeadLetterStore, attempts_of, ingress_of, parse_time
from routing.deliver.senders import HELD_BEHIND, KeyGroup, SenderFor
from routing.health import Breaker, HealthStore
from routing.model import Attempt, DeadLetter, Event, EventType, Outgoing, message_id
from routing.parking import ParkedBlob, ParkStore, endpoint_of, keys_of, pack, record_key, record_position
from routing.routes.table import DEFAULT_TIME_TO_LIVE_MINUTES, Endpoint, RouteTable

log = logging.getLogger(__name__)

# Attempts kept per parked message: the first ones (how it started) and the latest; the count is kept too.
ATTEMPTS_KEPT = 20


@dataclass
class RedeliveryReport:
    delivered: Counter[str] = field(default_factory=Counter)  # per endpoint
    expired: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)  # refused for good on redelivery
    waiting: dict[str, str] = field(default_factory=dict)  # endpoint -> why it was not tried this run
    # What is still parked after the run, per endpoint whose blobs the run read.
    parked_messages: Counter[str] = field(default_factory=Counter)
    parked_keys: Counter[str] = field(default_factory=Counter)
    parked_blobs: Counter[str] = field(default_factory=Counter)  # per endpoint, as listed at the start
    stale_blobs: int = 0  # blobs changed meanwhile, left for the next run


@dataclass(slots=True)
class _Item:
    blob: ParkedBlob
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.record["id"])


def outgoing_of(record: Mapping[str, Any]) -> Outgoing:
    """The message a parked record holds, exactly as the live pipeline built it."""
    ingress = ingress_of(record)
    index = int(record.get("index") or 0)
    envelope = record["envelope"]
    key = str(record["orderKey"])
    event = Event(
        event_type=EventType(record["eventType"]),
        order_key=key,
        message_id=message_id(ingress, index),
        ingress=ingress,
        index=index,
    )
    return Outgoing(
        endpoint=str(record["endpoint"]),
        event=event,
        body=base64.b64decode(envelope["bodyBase64"]),
        content_type=envelope.get("contentType"),
        properties=envelope.get("properties") or {},
        order_key=key,
        message_id=str(record["id"]),
    )


def letter_of(record: Mapping[str, Any], *, code: str, reason: str, attempts: list[Attempt]) -> DeadLetter:
    return DeadLetter.of_message(outgoing_of(record), code=code, reason=reason, attempts=attempts)


def _with_attempt(record: dict[str, Any], attempt: Attempt) -> dict[str, Any]:
    attempts = [*(record.get("attempts") or []), {"time": attempt.time, "error": attempt.error}]
    count = int(record.get("attemptCount") or len(record.get("attempts") or [])) + 1
    if len(attempts) > ATTEMPTS_KEPT:
        half = ATTEMPTS_KEPT // 2
        attempts = attempts[:half] + attempts[-half:]
    return {**record, "attempts": attempts, "attemptCount": count}


def _now_text(now: datetime) -> str:
    return now.astimezone(UTC).isoformat().replace("+00:00", "Z")


# Endpoints redelivered to at once: each may take its send budget (60 s) against an endpoint still down.
ENDPOINT_CONCURRENCY = 16


@dataclass
class _Run:
    """One endpoint's part of a run: what was read, and what becomes of each record."""

    name: str
    blobs: list[ParkedBlob] = field(default_factory=list)
    removed: set[tuple[str, str]] = field(default_factory=set)  # (blob name, message id): delivered or repeated
    to_letter: set[tuple[str, str]] = field(default_factory=set)  # dead-lettered: removed once the letter is kept
    updated: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # records with a new attempt
    letters: list[DeadLetter] = field(default_factory=list)
    delivered: int = 0
    expired: int = 0
    dead_lettered: int = 0
    waiting: str | None = None


def redeliver(
    *,
    store: ParkStore,
    table: RouteTable,
    senders: SenderFor,
    dead_letters: DeadLetterStore,
    breaker: Breaker,
    health: HealthStore | None = None,
    clock: Callable[[], datetime] | None = None,
) -> RedeliveryReport:
    """One run over everything parked (see the module). Raises `DeadLetterStoreError` if the dead letters
    of the run cannot be kept; what was delivered is removed first all the same.

    What it costs: one listing of the parked folder (one request per 5,000 blobs); then only the blobs of
    endpoints that may be tried now, or that hold a message past its time to live (a blob's creation time
    tells), are read: an endpoint waiting for its next probe costs nothing more."""
    now = (clock or (lambda: datetime.now(UTC)))()
    report = RedeliveryReport()
    listing = store.listing()
    if not listing:
        _nothing_parked(e.name for e in table.endpoints)
        return report
    shared = health.read_all() if health is not None else {}
    by_endpoint: dict[str, list[str]] = {}
    for name in sorted(listing):
        by_endpoint.setdefault(endpoint_of(name), []).append(name)

    work: list[tuple[str, Endpoint | None, list[str], bool]] = []
    for name, names in by_endpoint.items():
        report.parked_blobs[name] = len(names)
        endpoint = table.get(name)
        ttl = _ttl(endpoint)
        expiring = any(listing[blob].created + ttl <= now for blob in names)
        if endpoint is None:
            waiting = "no longer in the route table: its messages wait until their time to live"
        elif not endpoint.enabled:
            waiting = "disabled: its messages wait until it is enabled or their time to live"
        elif not breaker.may_probe(name, shared.get(name)):
            waiting = "its next probe is not due yet (backoff)"
        else:
            waiting = ""
        if waiting:
            report.waiting[name] = waiting
        if expiring or not waiting:
            work.append((name, endpoint, names, not waiting))

    def one(item: tuple[str, Endpoint | None, list[str], bool]) -> _Run:
        name, endpoint, names, send = item
        return _endpoint_run(name, endpoint, store.read_all(names), send, senders, breaker, now)

    if len(work) > 1:
        with ThreadPoolExecutor(min(ENDPOINT_CONCURRENCY, len(work)), thread_name_prefix="redeliver") as pool:
            runs = list(pool.map(one, work))
    else:
        runs = [one(item) for item in work]

    letters = [letter for run in runs for letter in run.letters]
    unkept: Exception | None = None
    try:
        dead_letters.write(letters)
    except Exception as exc:  # delivered messages still go from the parking; the rest waits for the next run
        unkept = exc
    for run in runs:
        report.delivered[run.name] += run.delivered
        report.expired[run.name] += run.expired
        report.dead_lettered[run.name] += run.dead_lettered
        removed = run.removed | (run.to_letter if unkept is None else set())
        remaining = _settle(store, run, removed, report)
        counts = keys_of(remaining)
        report.parked_messages[run.name] += sum(counts.values())
        report.parked_keys[run.name] += len(counts)
        obs.PARKED_MESSAGES.set(report.parked_messages[run.name], {"endpoint": run.name})
        obs.PARKED_KEYS.set(report.parked_keys[run.name], {"endpoint": run.name})
    # Gauges keep their last value until set again: every run sets every endpoint's. Of one it did not
    # read, the messages come from the listing (each blob's count), and its keys are left as they were.
    read = {run.name for run in runs}
    for name, names in by_endpoint.items():
        listed = [listing[blob].messages for blob in names]
        if name not in read and all(count is not None for count in listed):
            report.parked_messages[name] = sum(count or 0 for count in listed)
            obs.PARKED_MESSAGES.set(report.parked_messages[name], {"endpoint": name})
    _nothing_parked(e.name for e in table.endpoints if e.name not in by_endpoint)
    if unkept is not None:
        raise unkept
    return report


def _nothing_parked(names: Iterable[str]) -> None:
    for name in names:
        obs.PARKED_MESSAGES.set(0, {"endpoint": name})
        obs.PARKED_KEYS.set(0, {"endpoint": name})


def _ttl(endpoint: Endpoint | None) -> timedelta:
    return timedelta(minutes=endpoint.time_to_live_minutes if endpoint else DEFAULT_TIME_TO_LIVE_MINUTES)


def _endpoint_run(  # noqa: PLR0917 - one endpoint's share of `redeliver`, on a thread of its own
    name: str,
    endpoint: Endpoint | None,
    blobs: list[ParkedBlob],
    send: bool,
    senders: SenderFor,
    breaker: Breaker,
    now: datetime,
) -> _Run:
    run = _Run(name=name, blobs=blobs)
    items = [_Item(blob, record) for blob in blobs for record in blob.records]
    items.sort(key=lambda item: (record_key(item.record)[:2], record_position(item.record)))
    unique: list[_Item] = []
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            run.removed.add((item.blob.name, item.id))  # the same message in two blobs: sent once
        else:
            seen.add(item.id)
            unique.append(item)
    ttl = _ttl(endpoint)
    live: list[_Item] = []
    for item in unique:
        parked_at = parse_time(item.record.get("parkedAt")) or now
        if parked_at + ttl <= now:
            reason = (
                f"parked for '{name}' since {item.record.get('parkedAt')} and not delivered within its time to "
                f"live ({ttl.total_seconds() / 60:g} min): {item.record.get('reason')}"
            )
            run.letters.append(letter_of(item.record, code="expired", reason=reason, attempts=attempts_of(item.record)))
            run.to_letter.add((item.blob.name, item.id))
            run.expired += 1
        else:
            live.append(item)
    if run.expired:
        obs.EXPIRED.add(run.expired, {"endpoint": name})
        log.error(
            "endpoint '%s': %d parked message(s) expired after %g min and were dead-lettered; their keys go on "
            "without them (order breaks here: replay them with `routing deadletters replay --endpoint %s`)",
            name,
            run.expired,
            ttl.total_seconds() / 60,
            name,
            extra={"endpoint": name, "alert": "parked-expired"},
        )
        if live:
            breaker.expiring(name)
    if not live or not send or endpoint is None:
        return run

    by_message: dict[int, _Item] = {}
    groups: dict[str, list[Outgoing]] = {}
    for item in live:
        message = outgoing_of(item.record)
        by_message[id(message)] = item
        groups.setdefault(message.order_key, []).append(message)
    sent = senders(endpoint).send(endpoint, [KeyGroup(key, tuple(messages)) for key, messages in groups.items()])
    for message in sent.delivered:
        item = by_message[id(message)]
        run.removed.add((item.blob.name, item.id))
    run.delivered = len(sent.delivered)
    if sent.delivered:
        obs.REDELIVERED.add(len(sent.delivered), {"endpoint": name})
    transient = permanent = None
    for failure in sent.failed:
        item = by_message[id(failure.message)]
        if failure.permanent:
            permanent = permanent or failure.reason
            attempts = attempts_of(item.record) + list(failure.attempts)
            reason = f"redelivery to '{name}' failed: {failure.reason}"
            run.letters.append(letter_of(item.record, code="delivery-failed", reason=reason, attempts=attempts))
            run.to_letter.add((item.blob.name, item.id))
            run.dead_lettered += 1
        elif failure.reason != HELD_BEHIND:
            transient = transient or failure.reason
            attempt = failure.attempts[-1] if failure.attempts else Attempt(_now_text(now), failure.reason)
            run.updated[(item.blob.name, item.id)] = _with_attempt(item.record, attempt)
    breaker.probed(name, delivered=len(sent.delivered), transient=transient, permanent=permanent)
    return run


def _settle(store: ParkStore, run: _Run, removed: set[tuple[str, str]], report: RedeliveryReport) -> list[ParkedBlob]:
    """Rewrite each of the run's blobs with what is left, or delete it, if unchanged since it was read;
    what stays parked."""
    remaining: list[ParkedBlob] = []
    for blob in run.blobs:
        left = [
            run.updated.get((blob.name, str(record["id"])), record)
            for record in blob.records
            if (blob.name, str(record["id"])) not in removed
        ]
        changed = len(left) != len(blob.records) or any((blob.name, str(r["id"])) in run.updated for r in blob.records)
        try:
            if not left:
                store.delete(blob.name, etag=blob.etag)
            elif changed:
                store.write(blob.name, pack(left, **blob.header), etag=blob.etag, messages=len(left))
                remaining.append(ParkedBlob(name=blob.name, etag="", header=blob.header, records=left))
            else:
                remaining.append(blob)
        except ResourceModifiedError:
            report.stale_blobs += 1  # rewritten by a retried batch since it was read: the next run takes it
            remaining.append(blob)
        except AzureError as exc:
            log.warning("could not update the parked blob %s: %s", blob.name, type(exc).__name__)
            remaining.append(blob)
    return remaining
