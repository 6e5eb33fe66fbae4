"""The pipeline: one batch of ingress messages, classified, matched, enveloped, delivered, and
accounted for.

Every message ends as delivered to each endpoint that wants it, dead-lettered with a reason, or
counted as unrouted. A message that breaks anything in the pure stages is dead-lettered on its own and
never fails the batch; only a dead-letter store that cannot keep what it is given raises, so the
Functions retry policy holds the checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from typing import Protocol

from routing import observability as obs
from routing.deadletters import DeadLetterStore
from routing.deliver import envelope
from routing.deliver.senders import HELD_BEHIND, KeyGroup, SenderFor, SendReport
from routing.ingest.classify import classify
from routing.model import (
    TELEMETRY_TYPES,
    DeadLetter,
    EnvelopeFormat,
    Event,
    EventType,
    IngressMessage,
    Outgoing,
    Rejection,
    message_id,
)
from routing.routes.filters import EventBody
from routing.routes.table import Endpoint, RouteTable

log = logging.getLogger(__name__)


class RouteSource(Protocol):
    def current(self) -> RouteTable:
        """The table to route this batch with (a store may refresh it; it never returns half a table)."""
        ...


@dataclass(frozen=True, slots=True)
class StaticRoutes:
    table: RouteTable

    def current(self) -> RouteTable:
        return self.table


@dataclass
class BatchReport:
    """What happened to a batch (or, merged, to a whole run)."""

    messages: int = 0
    events: Counter[EventType] = field(default_factory=Counter)
    delivered: Counter[tuple[str, EventType]] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    # Events dead-lettered: more than the letters when one letter stands for several events of a message.
    dead_lettered: int = 0
    dead_letter_examples: dict[str, str] = field(default_factory=dict)
    unrouted: Counter[EventType] = field(default_factory=Counter)

    def merge(self, other: BatchReport) -> None:
        self.messages += other.messages
        self.events.update(other.events)
        self.delivered.update(other.delivered)
        self.dead_letters.update(other.dead_letters)
        self.dead_lettered += other.dead_lettered
        for code, reason in other.dead_letter_examples.items():
            self.dead_letter_examples.setdefault(code, reason)
        self.unrouted.update(other.unrouted)

    def count_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters[letter.code] += 1
        self.dead_lettered += letter.count
        self.dead_letter_examples.setdefault(letter.code, letter.reason)


# Endpoints delivered to at once (each sender then spreads its keys over lanes of its own).
ENDPOINT_CONCURRENCY = 8


class Router:
    def __init__(self, *, routes: RouteSource, senders: SenderFor, dead_letters: DeadLetterStore) -> None:
        self.routes = routes
        self.senders = senders
        self.dead_letters = dead_letters
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(ENDPOINT_CONCURRENCY, thread_name_prefix="deliver")
            return self._pool

    def route(self, messages: Iterable[IngressMessage]) -> BatchReport:
        table = self.routes.current()
        report = BatchReport()
        letters: list[DeadLetter] = []
        # Endpoint name -> (endpoint, order key -> messages in arrival order); dicts keep first-seen order.
        plan: dict[str, tuple[Endpoint, dict[str, list[Outgoing]]]] = {}
        hub = ""

        events: dict[EventType, int] = {}
        unrouted: dict[EventType, int] = {}
        reads_event, targets = table.reads_event, table.targets
        for msg in messages:
            report.messages += 1
            if report.messages == 1:
                hub = msg.source
                if msg.enqueued_time:
                    # The oldest message of the batch tells how far behind the router runs.
                    _record_lag(msg)
            try:
                results = classify(msg)
            except Exception as exc:  # a bug must cost one message, not the batch
                log.exception("internal error while classifying")
                results = [Rejection(code="internal-error", reason=f"internal error while classifying: {exc!r}")]
            for result in results:
                if isinstance(result, Rejection):
                    # The rejected events of one message are one rejection (classify): one letter, bounded.
                    letters.append(
                        DeadLetter(
                            code=result.code,
                            reason=result.reason,
                            ingress=msg,
                            index=result.index,
                            count=result.count,
                            positions=result.positions,
                        )
                    )
                    continue
                event_type = result.event_type
                events[event_type] = events.get(event_type, 0) + 1
                stage = "matching route filters"
                try:
                    # Parsed at most once, and only if a filter, order key or enrichment reads it.
                    body = EventBody(result) if reads_event(event_type) else None
                    # Type first (an index look-up), then the filters of those endpoints.
                    endpoints = targets(result, body)
                    if not endpoints:
                        unrouted[event_type] = unrouted.get(event_type, 0) + 1
                        continue
                    stage = "building the envelope"
                    outgoing = _build_all(result, endpoints, body)
                except envelope.UnserialisableError as exc:  # the event's fault: its own reason, not a crash
                    letters.append(DeadLetter(code="unserialisable", reason=str(exc), ingress=msg, index=result.index))
                    continue
                except Exception as exc:  # a bug costs this event, not the batch
                    log.exception("internal error while %s", stage)
                    reason = f"internal error while {stage}: {exc!r}"
                    letters.append(DeadLetter(code="internal-error", reason=reason, ingress=msg, index=result.index))
                    continue
                for endpoint, message in outgoing:
                    entry = plan.get(endpoint.name)
                    if entry is None:
                        entry = plan[endpoint.name] = (endpoint, {})
                    entry[1].setdefault(message.order_key, []).append(message)
        report.events.update(events)
        report.unrouted.update(unrouted)

        def deliver(entry: tuple[Endpoint, dict[str, list[Outgoing]]]) -> SendReport:
            endpoint, by_key = entry
            groups = [KeyGroup(key, tuple(items)) for key, items in by_key.items()]
            started = time.perf_counter()
            sent = self.senders(endpoint).send(endpoint, groups)
            obs.LATENCY.record((time.perf_counter() - started) * 1000, {"endpoint": endpoint.name})
            return sent

        entries = list(plan.values())
        # Endpoints are independent: a slow one must not hold the others back. The first goes out on
        # this thread while the others are on the pool's (no hand-off for a batch with one endpoint).
        futures = [self._executor().submit(deliver, e) for e in entries[1:]]
        sent_reports = [deliver(e) for e in entries[:1]] + [future.result() for future in futures]
        for (endpoint, _by_key), sent in zip(entries, sent_reports, strict=True):
            for message in sent.delivered:
                report.delivered[(endpoint.name, message.event_type)] += 1
            for failure in sent.failed:
                letters.append(
                    DeadLetter(
                        code="held-behind" if failure.reason == HELD_BEHIND else "delivery-failed",
                        reason=f"delivery to '{endpoint.name}' failed: {failure.reason}",
                        ingress=failure.message.event.ingress,
                        index=failure.message.event.index,
                        endpoint=endpoint.name,
                        message=failure.message,
                        attempts=failure.attempts,
                    )
                )

        for letter in letters:
            report.count_dead_letter(letter)
        # Kept before anything is reported as done: if this raises, the batch is retried whole. What was
        # delivered lets the store delete letters a failed earlier try of this batch left for those messages.
        self.dead_letters.write(letters, delivered=chain.from_iterable(sent.delivered for sent in sent_reports))
        _record(report, letters, hub)
        return report


def _record_lag(msg: IngressMessage) -> None:
    try:
        enqueued = datetime.fromisoformat(str(msg.enqueued_time).replace("Z", "+00:00"))
    except ValueError:
        return
    if enqueued.tzinfo is None:
        enqueued = enqueued.replace(tzinfo=UTC)
    obs.LAG.record(max(0.0, (datetime.now(UTC) - enqueued).total_seconds()), {"hub": msg.source})


def _record(report: BatchReport, letters: list[DeadLetter], hub: str) -> None:
    """Metrics for the batch, added per dimension rather than per event, and a log line per dead letter."""
    for event_type, count in report.events.items():
        obs.EVENTS_IN.add(count, {"hub": hub, "event_type": str(event_type)})
    unclassified = sum(letter.count for letter in letters if letter.message is None)
    if unclassified:
        obs.EVENTS_IN.add(unclassified, {"hub": hub, "event_type": obs.UNCLASSIFIED})
    for (endpoint, event_type), count in report.delivered.items():
        obs.DELIVERED.add(count, {"endpoint": endpoint, "event_type": str(event_type)})
    for event_type, count in report.unrouted.items():
        obs.UNROUTED.add(count, {"event_type": str(event_type)})
    for code, count in report.dead_letters.items():
        obs.DEAD_LETTERS.add(count, {"reason": code})
    for letter in letters:
        dimensions: dict[str, str] = {"reason_code": letter.code, "reason": letter.reason}
        if letter.endpoint:
            dimensions["endpoint"] = letter.endpoint
        if letter.ingress is not None:
            dimensions["hub"] = letter.ingress.source
            dimensions["message_id"] = message_id(letter.ingress, letter.index)
        if letter.message is not None:
            dimensions["event_type"] = str(letter.message.event_type)
            dimensions["order_key"] = letter.message.order_key
        log.warning("dead-lettered: %s", letter.reason, extra=dimensions)


def _build_all(
    event: Event, endpoints: tuple[Endpoint, ...], event_body: EventBody | None
) -> list[tuple[Endpoint, Outgoing]]:
    if event.event_type in TELEMETRY_TYPES:  # no envelope: the message is the telemetry itself
        return [(endpoint, envelope.build(event, endpoint, None, event_body)) for endpoint in endpoints]
    bodies: dict[EnvelopeFormat, bytes] = {}
    out = []
    for endpoint in endpoints:
        body = bodies.get(endpoint.format)
        if body is None and event.event_type not in TELEMETRY_TYPES:
            body = bodies[endpoint.format] = envelope.envelope_body(event, endpoint.format)
        out.append((endpoint, envelope.build(event, endpoint, body, event_body)))
    return out
