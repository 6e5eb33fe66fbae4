"""The pipeline: one batch of ingress messages, classified, matched, enveloped, delivered, and
accounted for.

Every message ends as delivered to each endpoint that wants it, parked behind its key while that
endpoint fails (routing/parking.py: the redelivery sends it later, in order), dead-lettered with a
reason, or counted as unrouted. A message that breaks anything in the pure stages is dead-lettered on
its own and never fails the batch; only a dead-letter or parking store that cannot keep what it is given
raises, so the Functions retry policy holds the checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import chain
from typing import Protocol

from opentelemetry.trace import Span, SpanContext, SpanKind, TraceFlags, TraceState

from routing import observability as obs
from routing.deadletters import DeadLetterStore
from routing.deliver import envelope
from routing.deliver.senders import HELD_BEHIND, KeyGroup, SenderFor, SendReport, Sent, prepared
from routing.health import Breaker
from routing.ingest import trace
from routing.ingest.classify import classify
from routing.model import (
    DeadLetter,
    Event,
    EventType,
    IngressMessage,
    Outgoing,
    Rejection,
    message_id,
)
from routing.parking import PARKED_CODE, ParkedKey, Parking, partition_of
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
    # Messages parked behind an endpoint's outage, per endpoint (routing/parking.py); for a local run, what
    # the redelivery delivered of them and what was still parked at the end.
    parked: Counter[str] = field(default_factory=Counter)
    redelivered: Counter[str] = field(default_factory=Counter)
    still_parked: Counter[str] = field(default_factory=Counter)

    def merge(self, other: BatchReport) -> None:
        self.messages += other.messages
        self.events.update(other.events)
        self.delivered.update(other.delivered)
        self.dead_letters.update(other.dead_letters)
        self.dead_lettered += other.dead_lettered
        for code, reason in other.dead_letter_examples.items():
            self.dead_letter_examples.setdefault(code, reason)
        self.unrouted.update(other.unrouted)
        self.parked.update(other.parked)
        self.redelivered.update(other.redelivered)
        self.still_parked.update(other.still_parked)

    def count_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters[letter.code] += 1
        self.dead_lettered += letter.count
        self.dead_letter_examples.setdefault(letter.code, letter.reason)


# An ingress partition: (hub, partition).
_Where = tuple[str, str | None]

# Endpoints delivered to at once (each sender then spreads its keys over lanes of its own). Threads start
# only as needed, so this costs nothing with few endpoints; it is high so that endpoints black-holed at
# once (each holding a thread for up to its send budget, once: then its circuit opens) do not make the
# healthy ones of the batch wait for a thread.
ENDPOINT_CONCURRENCY = 64


class Router:
    """Routes batches. With `parking` (and its `breaker`), what an endpoint fails transiently is parked in
    order behind its key (routing/parking.py) and redelivered later; without (the local runner), it is
    dead-lettered, replayable by hand."""

    def __init__(
        self,
        *,
        routes: RouteSource,
        senders: SenderFor,
        dead_letters: DeadLetterStore,
        parking: Parking | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        self.routes = routes
        self.senders = senders
        self.dead_letters = dead_letters
        self.parking = parking
        self.breaker = breaker
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(ENDPOINT_CONCURRENCY, thread_name_prefix="deliver")
            return self._pool

    def route(self, messages: Iterable[IngressMessage]) -> BatchReport:
        """Route one batch, in a span of its own linked to the trace of each message that carries one
        (W3C trace context: routing/ingest/trace.py), so a trace runs from the device or twin through the
        router (and, since the messages carry it on, to the consumer)."""
        with obs.tracer.start_as_current_span("route batch", kind=SpanKind.CONSUMER) as span:
            return self._route(messages, span if span.is_recording() else None)

    def _route(self, messages: Iterable[IngressMessage], traced: Span | None) -> BatchReport:
        table = self.routes.current()
        linked: set[str] = set()
        report = BatchReport()
        letters: list[DeadLetter] = []
        # Endpoint name -> (endpoint, order key -> messages in arrival order); dicts keep first-seen order.
        plan: dict[str, tuple[Endpoint, dict[str, list[Outgoing]]]] = {}
        hub = ""
        # Per ingress partition: the first and last sequence number of the batch (a host batch has one).
        spans: dict[_Where, list[int | None]] = {}

        events: dict[EventType, int] = {}
        unrouted: dict[EventType, int] = {}
        reads_event, targets, forwarded = table.reads_event, table.targets, table.forwarded
        received = 0
        for msg in messages:
            received += 1
            where = (msg.source, msg.partition)
            span = spans.get(where)
            if span is None:
                spans[where] = [msg.sequence_number, msg.sequence_number]
            elif msg.sequence_number is not None:
                span[1] = msg.sequence_number
            if received == 1:
                hub = msg.source
                if msg.enqueued_time:
                    # The oldest message of the batch tells how far behind the router runs.
                    _record_lag(msg)
            try:
                results = classify(msg)
            except Exception as exc:  # a bug must cost one message, not the batch
                log.exception("internal error while classifying")
                results = [Rejection(code="internal-error", reason=f"internal error while classifying: {exc!r}")]
            if traced is not None:
                _link(traced, msg, results, linked)
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
                    # Telemetry and IoT Hub's other sources, where each endpoint gets them as they came
                    # (the route table decides per type): their messages in one step, no envelope.
                    endpoints = forwarded[event_type]
                    if endpoints is not None:
                        if not endpoints:
                            unrouted[event_type] = unrouted.get(event_type, 0) + 1
                            continue
                        stage = "building the envelope"
                        outgoing = envelope.forward_all(result, endpoints)
                    else:
                        # Parsed at most once, and only if a filter, order key or enrichment reads it.
                        body = EventBody(result) if reads_event(event_type) else None
                        # Type first (an index look-up), then the filters of those endpoints.
                        endpoints = targets(result, body)
                        if not endpoints:
                            unrouted[event_type] = unrouted.get(event_type, 0) + 1
                            continue
                        stage = "building the envelope"
                        outgoing = envelope.build_all(result, endpoints, body)
                except envelope.UnserialisableError as exc:  # the event's fault: its own reason, not a crash
                    letters.append(DeadLetter(code="unserialisable", reason=str(exc), ingress=msg, index=result.index))
                    continue
                except Exception as exc:  # a bug costs this event, not the batch
                    log.exception("internal error while %s", stage)
                    reason = f"internal error while {stage}: {exc!r}"
                    letters.append(DeadLetter(code="internal-error", reason=reason, ingress=msg, index=result.index))
                    continue
                for endpoint, message in zip(endpoints, outgoing, strict=True):
                    entry = plan.get(endpoint.name)
                    if entry is None:
                        entry = plan[endpoint.name] = (endpoint, {})
                    keyed = entry[1].get(message.order_key)
                    if keyed is None:
                        entry[1][message.order_key] = [message]
                    else:
                        keyed.append(message)
        report.messages = received
        report.events.update(events)
        report.unrouted.update(unrouted)

        parked = self._parked_keys(spans)
        to_park: list[DeadLetter] = []
        entries: list[tuple[Endpoint, list[KeyGroup]]] = []
        for endpoint, by_key in plan.values():
            groups = self._hold(endpoint, by_key, parked, to_park)
            if groups:
                entries.append((endpoint, groups))

        def deliver(entry: tuple[Endpoint, list[KeyGroup]]) -> Callable[[], SendReport]:
            endpoint, groups = entry
            started = time.perf_counter()
            send = prepared(self.senders(endpoint), endpoint, groups)

            def sent() -> SendReport:
                report = send()
                obs.LATENCY.record((time.perf_counter() - started) * 1000, {"endpoint": endpoint.name})
                return report

            return Sent(sent()) if isinstance(send, Sent) else sent

        # Endpoints are independent: a slow one must not hold the others back, so their sends go out at
        # once, on the pool's threads, the first on this one (no hand-off for a batch with one endpoint).
        # Their packing (CPU alone, where it asks nothing of the service) is done here, endpoint by
        # endpoint, each send handed off as soon as it is packed: packed on the sending threads, a thousand
        # endpoints' packing contended for the interpreter (issue #15). A send made while it was prepared
        # (`Sent`: the local runner's files) has nothing left to hand off.
        pending: list[Sent | Future[SendReport]] = []
        for later in entries[1:]:
            call = deliver(later)
            pending.append(call if isinstance(call, Sent) else self._executor().submit(call))
        sent_reports = [deliver(e)() for e in entries[:1]] + [
            p() if isinstance(p, Sent) else p.result() for p in pending
        ]
        for (endpoint, _groups), sent in zip(entries, sent_reports, strict=True):
            delivered: dict[EventType, int] = {}  # counted here: a Counter's += costs a call per message
            for message in sent.delivered:
                event_type = message.event.event_type
                delivered[event_type] = delivered.get(event_type, 0) + 1
            for event_type, count in delivered.items():
                report.delivered[(endpoint.name, event_type)] += count
            transient = permanent = None
            for failure in sent.failed:
                held = failure.reason == HELD_BEHIND
                if failure.permanent:
                    permanent = permanent or failure.reason
                elif not held:
                    transient = transient or failure.reason
                letter = DeadLetter.of_message(
                    failure.message,
                    code="held-behind" if held else "delivery-failed",
                    reason=f"delivery to '{endpoint.name}' failed: {failure.reason}",
                    attempts=failure.attempts,
                )
                if self.parking is not None and not failure.permanent:
                    # Transient: kept in order until the endpoint takes it (routing/parking.py).
                    to_park.append(replace(letter, code=PARKED_CODE))
                else:
                    letters.append(letter)
            if self.breaker is not None:
                self.breaker.record(
                    endpoint.name, delivered=len(sent.delivered), transient=transient, permanent=permanent
                )

        # Kept before anything is reported as done: if either raises, the batch is retried whole.
        self._park(to_park, spans, report)
        for letter in letters:
            report.count_dead_letter(letter)
        # Kept before anything is reported as done: if this raises, the batch is retried whole. What was
        # delivered lets the store delete letters a failed earlier try of this batch left for those messages.
        self.dead_letters.write(letters, delivered=chain.from_iterable(sent.delivered for sent in sent_reports))
        if self.parking is not None:
            for (source, partition), (_first, last) in spans.items():
                self.parking.routed(source, partition, None if last is None else last + 1)
        _record(report, letters, hub)
        return report

    def _parked_keys(self, spans: Mapping[_Where, list[int | None]]) -> frozenset[ParkedKey]:
        if self.parking is None:
            return frozenset()
        found: frozenset[ParkedKey] = frozenset()
        for (source, partition), (first, _last) in spans.items():
            found |= self.parking.parked(source, partition, first)
        return found

    def _hold(
        self,
        endpoint: Endpoint,
        by_key: Mapping[str, list[Outgoing]],
        parked: frozenset[ParkedKey],
        to_park: list[DeadLetter],
    ) -> list[KeyGroup]:
        """The groups to send to `endpoint`; what must wait goes to `to_park` instead: every message while
        its circuit is open, and a parked key's messages from the first one of a partition it is parked in."""
        if self.parking is None:
            return [KeyGroup(key, tuple(items)) for key, items in by_key.items()]
        if self.breaker is not None and self.breaker.is_open(endpoint.name):
            reason = f"endpoint '{endpoint.name}' is unhealthy: its messages wait, in order, until it answers again"
            to_park.extend(_parked_letter(message, reason) for items in by_key.values() for message in items)
            return []
        groups = []
        for key, items in by_key.items():
            start = len(items)
            if parked:
                for position, message in enumerate(items):
                    ingress = message.event.ingress
                    if (ingress.source, partition_of(ingress.partition), endpoint.name, key) in parked:
                        start = position
                        break
            if start:
                groups.append(KeyGroup(key, tuple(items[:start])))
            for message in items[start:]:
                to_park.append(_parked_letter(message, f"held behind the parked messages of key '{key}'"))
        return groups

    def _park(
        self, to_park: Sequence[DeadLetter], spans: Mapping[_Where, list[int | None]], report: BatchReport
    ) -> None:
        """One blob per endpoint and ingress partition; raises if any cannot be kept."""
        if not to_park or self.parking is None:
            return
        by_blob: dict[tuple[str, str, str | None], list[DeadLetter]] = {}
        for letter in to_park:
            assert letter.ingress is not None and letter.endpoint is not None
            by_blob.setdefault((letter.endpoint, letter.ingress.source, letter.ingress.partition), []).append(letter)
        for (endpoint, source, partition), parked in by_blob.items():
            # In ingress order: a key's messages are parked (and redelivered) as they arrived.
            parked.sort(key=lambda letter: (letter.ingress.sequence_number or 0, letter.index))  # type: ignore[union-attr]
            first = spans.get((source, partition), [None])[0]
            self.parking.park(parked, hub=source, partition=partition, first_sequence=first, endpoint=endpoint)
            report.parked[endpoint] += len(parked)
            obs.PARKED.add(len(parked), {"endpoint": endpoint})
            keys = {letter.message.order_key for letter in parked if letter.message is not None}
            log.warning(
                "parked %d message(s) of %d key(s) for endpoint '%s': %s",
                len(parked),
                len(keys),
                endpoint,
                parked[0].reason,
                extra={"endpoint": endpoint, "hub": source, "partition": partition or ""},
            )


def _parked_letter(message: Outgoing, reason: str) -> DeadLetter:
    return DeadLetter.of_message(message, code=PARKED_CODE, reason=reason)


# Links one batch's span keeps (OpenTelemetry's default limit is 128): the rest are counted in an attribute.
MAX_LINKS = 64


def _link(span: Span, msg: IngressMessage, results: Sequence[Event | Rejection], linked: set[str]) -> None:
    """Link the batch's span to the trace each of the message's events came with (once per trace)."""
    contexts = [trace.of_event(r) for r in results if isinstance(r, Event)] or [trace.of_message(msg)]
    for context in contexts:
        if context is None or context.traceparent in linked:
            continue
        linked.add(context.traceparent)
        if len(linked) > MAX_LINKS:
            span.set_attribute("routing.unlinked_traces", len(linked) - MAX_LINKS)
            continue
        _version, trace_id, span_id, flags = context.traceparent.split("-")
        state = TraceState.from_header([context.tracestate]) if context.tracestate else None
        span.add_link(
            SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16)),
                        trace_state=state)
        )  # fmt: skip


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
