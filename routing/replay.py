"""Replay: dead letters sent again, through the same senders, honouring the current route table.

Letters are replayed in their original order per key (ingress hub, partition, sequence number,
position), a key stops at its first failure so nothing overtakes it, and a blob is deleted only once
its message is delivered. A letter whose endpoint is gone, or no longer wants its type, is kept.

A letter whose key is parked for its endpoint (routing/parking.py) is not sent ahead of the parked
messages: it is parked with them, at its own position, so the redelivery sends the key's messages in
their original order, and the letter is deleted once it is parked.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from routing.deadletters import attempts_of, ingress_of
from routing.deliver import envelope
from routing.deliver.senders import KeyGroup, SenderFor
from routing.ingest.classify import classify
from routing.model import DeadLetter, Event, IngressMessage, Outgoing, message_id
from routing.parking import PARKED_CODE, ParkedKey, partition_of
from routing.routes.table import Endpoint, RouteTable, matching


@dataclass(frozen=True, slots=True, kw_only=True)
class Letter:
    """A stored dead letter: its name in the store and its record."""

    name: str
    record: Mapping[str, Any]

    @property
    def position(self) -> tuple[str, str, int, int]:
        """Where the message sat on its ingress hub. A record too broken to tell sorts first; it is kept
        (with why) rather than failing the whole replay."""
        try:
            original = self.record["original"]
            return (
                str(original.get("source")),
                str(original.get("partition")),
                int(original.get("sequenceNumber") or 0),
                int(self.record.get("index") or 0),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return ("", "", -1, -1)


@dataclass
class ReplayReport:
    delivered: list[str] = field(default_factory=list)  # names of letters delivered (and deleted)
    failed: dict[str, str] = field(default_factory=dict)  # name -> why it is kept
    kept: dict[str, str] = field(default_factory=dict)  # name -> why it was not tried
    parked: list[str] = field(default_factory=list)  # names of letters parked behind their key (and deleted)


def replay(
    letters: Iterable[Letter],
    *,
    table: RouteTable,
    senders: SenderFor,
    delete: Callable[[str], None],
    progress: Callable[[int], None] = lambda _n: None,
    unconfirmed: Collection[str] = frozenset(),
    parked: Collection[ParkedKey] = frozenset(),
    park: Callable[[Sequence[DeadLetter]], object] | None = None,
) -> ReplayReport:
    """Replay `letters`; `unconfirmed` names the store's writes that are under way or failed (their
    letters are kept: the host's retry of their batch rewrites them or delivered their messages).
    `parked`: the keys parked now; a letter of one is handed to `park` (one endpoint's and partition's at
    a time) instead of being sent, and deleted once parked."""
    report = ReplayReport()
    # endpoint name -> (endpoint, key -> [(letter, message)]) in original order
    plan: dict[str, tuple[Endpoint, dict[str, list[tuple[Letter, Outgoing]]]]] = {}
    # A letter bound for several endpoints (one that was never classified) is deleted when all took it.
    outstanding: dict[str, int] = {}

    # (endpoint, hub, partition) -> the letters to park there, in original order.
    to_park: dict[tuple[str, str, str], list[tuple[Letter, Outgoing]]] = {}

    for letter in sorted(letters, key=lambda item: item.position):
        planned = _plan_one(letter, table, unconfirmed)
        if isinstance(planned, str):
            report.kept[letter.name] = planned
            progress(1)
            continue
        outstanding[letter.name] = len(planned)
        for endpoint, message in planned:
            ingress = message.event.ingress
            where = (ingress.source, partition_of(ingress.partition), endpoint.name, message.order_key)
            if park is not None and where in parked:
                to_park.setdefault(where[:3], []).append((letter, message))
                continue
            entry = plan.setdefault(endpoint.name, (endpoint, {}))
            entry[1].setdefault(message.order_key, []).append((letter, message))

    for items in to_park.values():
        assert park is not None
        park([_parked(letter, message) for letter, message in items])
        for letter, _message in items:
            outstanding[letter.name] -= 1
            if outstanding[letter.name] == 0:
                delete(letter.name)
                report.parked.append(letter.name)
                progress(1)

    for endpoint, by_key in plan.values():
        by_message = {id(message): letter for items in by_key.values() for letter, message in items}
        groups = [KeyGroup(key, tuple(message for _letter, message in items)) for key, items in by_key.items()]
        sent = senders(endpoint).send(endpoint, groups)
        for message in sent.delivered:
            letter = by_message[id(message)]
            outstanding[letter.name] -= 1
            if outstanding[letter.name] == 0:
                delete(letter.name)
                report.delivered.append(letter.name)
                progress(1)
        for failure in sent.failed:
            letter = by_message[id(failure.message)]
            if letter.name not in report.failed:
                report.failed[letter.name] = f"'{endpoint.name}': {failure.reason}"
                progress(1)
    return report


def _parked(letter: Letter, message: Outgoing) -> DeadLetter:
    """The dead letter as a parked message: its record, its attempts, its position."""
    return DeadLetter.of_message(
        message,
        code=PARKED_CODE,
        reason=f"replayed behind the parked messages of its key: {letter.record.get('reason')}",
        attempts=attempts_of(letter.record),
    )


# Why a letter of a failed write is not replayed (docs/FAILURE_HANDLING.md, "dead-letter store down").
UNCONFIRMED = (
    "written by a try of its batch that failed (or is still being written): the host retries the batch, "
    "which writes this letter again if the message still fails, or delivered it; not sent, so it is not "
    "delivered twice"
)


def _plan_one(letter: Letter, table: RouteTable, unconfirmed: Collection[str]) -> list[tuple[Endpoint, Outgoing]] | str:
    """Where the letter's message goes now and what it is there, or why it is kept. Never raises: one
    letter that breaks anything (a record edited by hand, data nested deeper than JSON can be written,
    a bug) is kept with the reason, and the replay goes on."""
    if str(letter.record.get("write") or "") in unconfirmed:
        return UNCONFIRMED
    event = _event_of(letter)
    if isinstance(event, str):
        return event
    stage = "matching the route filters"
    try:
        wanted = letter.record.get("endpoint")
        if wanted:
            endpoint = table.get(str(wanted))
            if endpoint is None:
                return f"endpoint '{wanted}' is no longer in the route table"
            if not endpoint.enabled or event.event_type not in endpoint.event_types:
                return f"endpoint '{wanted}' no longer takes {event.event_type}"
            if not matching(event, (endpoint,)):
                return f"the filter of '{wanted}' no longer matches the event"
            targets: tuple[Endpoint, ...] = (endpoint,)
        else:
            # The same choice the pipeline makes: the endpoints taking the type, then their filters.
            targets = table.targets(event)
            if not targets:
                return f"no endpoint takes this {event.event_type} event"
        out = []
        for endpoint in targets:
            stage = f"building its message for '{endpoint.name}'"
            out.append((endpoint, envelope.build(event, endpoint)))
    except Exception as exc:
        return f"cannot be replayed: {stage} failed: {exc}"
    return out


def _at(event: Event, ingress: IngressMessage, index: int) -> Event:
    """`event`, classified from its own JSON cut from an array, as it was at `index` of its message."""
    alone = message_id(ingress, 0)
    identity = message_id(ingress, index)
    return msgspec.structs.replace(
        event,
        index=index,
        message_id=identity,
        event_id=identity if event.event_id == alone else event.event_id,  # an id classify gave it
    )


def _event_of(letter: Letter) -> Event | str:
    """The letter's event, classified again from the original message (or why it cannot be)."""
    try:
        ingress = ingress_of(letter.record)
        index = int(letter.record.get("index") or 0)
        results = classify(ingress)
    except Exception as exc:  # a record edited by hand (or a bug) must cost one letter, not the replay
        return f"the dead letter is unreadable: {exc!r}"
    count = int(letter.record.get("count") or 1)
    if index and len(results) == 1 and results[0].index == 0:
        # The letter keeps its event cut from its array (`element_body`: marked `element`; or parked by a
        # replay since, its mark lost): the event is at `index` of the original message, and its ids say so.
        [result] = results
        if not isinstance(result, Event):
            return f"still cannot be classified: {result.reason}"
        return _at(result, ingress, index)
    for result in results:
        if result.index == index:
            if isinstance(result, Event) and count > 1:
                # Classification changed since: this one event alone would be sent and the letter deleted.
                return (
                    f"the letter stands for {count} rejected events of its message; position {index} classifies "
                    "now, but replaying it alone would delete the letter of the others: route them by hand"
                )
            return result if isinstance(result, Event) else f"still cannot be classified: {result.reason}"
    return f"the original message has no event at position {index}"
