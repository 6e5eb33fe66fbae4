"""The local runner: a file of ingress messages through the same pipeline the functions use, with
file senders, into an output folder.

Output is staged in a hidden folder and moved into place only when the run completes, so a run that
stops half-way leaves the previous results whole.

`--fail NAME[:FROM[-TO]]` takes an endpoint down for those batches (an outage, as a transient fault):
then the run parks and redelivers as a deployment does (routing/parking.py, routing/redeliver.py), in
memory, on a clock that moves `BATCH_SECONDS` per batch, with a redelivery run after every batch and,
after the last, until nothing is parked or the endpoint is still down; what is still parked at the end
is written to `parked.jsonl` (the dead-letter record of each, with `parkedAt`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from routing.deadletters import FILE_NAME as DEAD_LETTER_FILE
from routing.deadletters import FileDeadLetters
from routing.deliver.senders import HELD_BEHIND, Failure, FileSender, KeyGroup, SendReport
from routing.errors import IngressFormatError, RoutingError
from routing.health import PROBE_MAX_SECONDS, Breaker, MemoryHealth
from routing.ingest.ingress import parse_line
from routing.model import Attempt, DeadLetter, IngressMessage
from routing.parking import MemoryParking, Parking
from routing.pipeline import BatchReport, Router, StaticRoutes
from routing.redeliver import RedeliveryReport, redeliver
from routing.routes.table import Endpoint, RouteTable

SOURCE = "local"
DEFAULT_BATCH_SIZE = 100
# The events file is read this much at a time: a third of the default buffer's cost per line (fewer reads).
READ_BUFFER = 1 << 16
PARKED_FILE = "parked.jsonl"
# How far the run's clock moves per batch when an endpoint is made to fail: a probe is due after the
# first batch of an outage, and the backoff then doubles as it would in a deployment.
BATCH_SECONDS = 10.0
# Redelivery runs after the last batch before giving up on an endpoint still down (each moves the clock
# by the longest backoff, so each is a probe).
DRAIN_RUNS = 5


@dataclass(frozen=True, slots=True)
class Outage:
    """`--fail NAME[:FROM[-TO]]`: the endpoint fails every send during batches FROM to TO (1-based, both
    included; without them, the whole run)."""

    endpoint: str
    first: int = 1
    last: int | None = None

    @classmethod
    def parse(cls, text: str) -> Outage:
        match = re.fullmatch(r"([^:]+)(?::(\d+)(?:-(\d+))?)?", text.strip())
        if match is None or (match.group(2) is not None and int(match.group(2)) < 1):
            raise RoutingError(
                f"--fail {text!r}: write NAME, NAME:FROM or NAME:FROM-TO (batches, counted from 1), e.g. raw:2-4"
            )
        first = int(match.group(2) or 1)
        last = int(match.group(3)) if match.group(3) else (first if match.group(2) else None)
        if last is not None and last < first:
            raise RoutingError(f"--fail {text!r}: the last batch {last} comes before the first {first}")
        return cls(match.group(1).strip(), first, last)

    def down(self, batch: int) -> bool:
        return batch >= self.first and (self.last is None or batch <= self.last)


class _Flaky:
    """The file sender, with endpoints taken down by `--fail`: while one is down, every send to it fails,
    transiently, as an unreachable endpoint does (each key's first message with the attempt, the rest
    held behind it)."""

    def __init__(self, files: FileSender, outages: Sequence[Outage], clock: Callable[[], datetime]) -> None:
        self.files = files
        self.outages = {o.endpoint.lower(): o for o in outages}
        self.clock = clock
        self.batch = 0  # the batch being routed (0 before the first; past the last while draining)
        # An outage's failures are made here, in memory, as the files' sends are (`sends_at_once`).
        self.sends_at_once = files.sends_at_once

    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        outage = self.outages.get(endpoint.name.lower())
        if outage is None or not outage.down(self.batch):
            return self.files.send(endpoint, groups)
        reason = f"endpoint '{endpoint.name}' is down (routing run --fail, batch {self.batch})"
        attempt = Attempt(time=self.clock().isoformat().replace("+00:00", "Z"), error=reason)
        failed = []
        for group in groups:
            first, *rest = group.messages
            failed.append(Failure(message=first, reason=reason, permanent=False, attempts=(attempt,)))
            failed.extend(Failure(message=m, reason=HELD_BEHIND, permanent=False) for m in rest)
        return SendReport(failed=tuple(failed))

    def close(self) -> None:
        self.files.close()


def _batches(
    path: Path, batch_size: int, bad_lines: list[DeadLetter], progress: Callable[[int], None]
) -> Iterator[list[IngressMessage]]:
    batch: list[IngressMessage] = []
    read = 0  # bytes read since `progress` was last told, which it is once a batch
    with path.open("rb", buffering=READ_BUFFER) as handle:
        for line_number, line in enumerate(handle, start=1):
            read += len(line)
            if line.isspace():  # a line read from a file is never empty: it has its newline at least
                continue
            try:
                batch.append(parse_line(line, source=SOURCE, line_number=line_number))
            except IngressFormatError as exc:
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                bad_lines.append(DeadLetter(code="bad-line", reason=str(exc), ingress=None, raw_line=text))
            if len(batch) >= batch_size:
                progress(read)
                read = 0
                yield batch
                batch = []
    if read:
        progress(read)
    if batch:
        yield batch


def check_outages(outages: Sequence[Outage], table: RouteTable) -> None:
    """Refuse an outage of an endpoint the routes do not have, naming the ones they do."""
    unknown = [o.endpoint for o in outages if table.get(o.endpoint) is None]
    if unknown:
        names = ", ".join(e.name for e in table.endpoints)
        missing = ", ".join(map(repr, unknown))
        raise RoutingError(f"--fail: no endpoint named {missing} in the routes (they are: {names})")


def run(
    *,
    events: Path,
    table: RouteTable,
    out: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] = lambda _bytes: None,
    outages: Sequence[Outage] = (),
) -> BatchReport:
    """Route `events` with `table` into `out`; `progress` is told how many bytes were read. With
    `outages`, those endpoints fail for their batches, and what they miss is parked and redelivered."""
    check_outages(outages, table)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".routing-partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    # Lines are made on this thread after each batch, not on the pipeline's delivery threads (FileSender).
    files = FileSender(staging, deferred=True)
    dead_letters = FileDeadLetters(staging)
    moment = [datetime.now(UTC)]

    def clock() -> datetime:
        return moment[0]

    senders = _Flaky(files, outages, clock)
    parking = Parking(MemoryParking(clock), clock=clock) if outages else None
    breaker = Breaker(MemoryHealth(), clock=clock) if outages else None
    router = Router(
        routes=StaticRoutes(table),
        senders=lambda _endpoint: senders,
        dead_letters=dead_letters,
        parking=parking,
        breaker=breaker,
    )
    report = BatchReport()
    bad_lines: list[DeadLetter] = []

    def redelivery() -> RedeliveryReport:
        assert parking is not None and breaker is not None
        done = redeliver(
            store=parking.store,
            table=table,
            senders=lambda _endpoint: senders,
            dead_letters=dead_letters,
            breaker=breaker,
            health=breaker.store,
            clock=clock,
        )
        files.flush()
        report.redelivered.update(done.delivered)
        for code, count in (("expired", done.expired.total()), ("delivery-failed", done.dead_lettered.total())):
            if count:
                report.dead_letters[code] += count
                report.dead_lettered += count
        return done

    try:
        for number, batch in enumerate(_batches(events, batch_size, bad_lines, progress), start=1):
            senders.batch = number
            if bad_lines:
                dead_letters.write(bad_lines)
                for letter in bad_lines:
                    report.count_dead_letter(letter)
                bad_lines.clear()
            report.merge(router.route(batch))
            files.flush()
            if parking is not None:
                redelivery()
                moment[0] += timedelta(seconds=BATCH_SECONDS)
        dead_letters.write(bad_lines)
        for letter in bad_lines:
            report.count_dead_letter(letter)
        if parking is not None:
            senders.batch += 1  # past the last batch: an outage with an end is over
            for _run in range(DRAIN_RUNS):
                if not parking.store.names():
                    break
                moment[0] += timedelta(seconds=PROBE_MAX_SECONDS)
                redelivery()
            still = [r for blob in parking.store.snapshot() for r in blob.records]
            if still:
                (staging / PARKED_FILE).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in still))
            report.still_parked.update(str(r["endpoint"]) for r in still)
    except BaseException:
        senders.close()
        dead_letters.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    senders.close()
    dead_letters.close()
    # Every file this run owns is replaced, or removed when this run wrote nothing there.
    for name in [f"{e.name}.jsonl" for e in table.endpoints] + [DEAD_LETTER_FILE, PARKED_FILE]:
        staged = staging / name
        if staged.exists():
            os.replace(staged, out / name)
        else:
            (out / name).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    return report
