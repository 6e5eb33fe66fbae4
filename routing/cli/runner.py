"""The local runner: a file of ingress messages through the same pipeline the functions use, with
file senders, into an output folder.

Output is staged in a hidden folder and moved into place only when the run completes, so a run that
stops half-way leaves the previous results whole.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from routing.deadletters import FILE_NAME as DEAD_LETTER_FILE
from routing.deadletters import FileDeadLetters
from routing.deliver.senders import FileSender
from routing.errors import IngressFormatError
from routing.ingest.ingress import parse_line
from routing.model import DeadLetter, IngressMessage
from routing.pipeline import BatchReport, Router, StaticRoutes
from routing.routes.table import RouteTable

SOURCE = "local"
DEFAULT_BATCH_SIZE = 100


def _batches(
    path: Path, batch_size: int, bad_lines: list[DeadLetter], progress: Callable[[int], None]
) -> Iterator[list[IngressMessage]]:
    batch: list[IngressMessage] = []
    with path.open("rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            progress(len(line))
            if not line.strip():
                continue
            try:
                batch.append(parse_line(line, source=SOURCE, line_number=line_number))
            except IngressFormatError as exc:
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                bad_lines.append(DeadLetter(code="bad-line", reason=str(exc), ingress=None, raw_line=text))
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def run(
    *,
    events: Path,
    table: RouteTable,
    out: Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] = lambda _bytes: None,
) -> BatchReport:
    """Route `events` with `table` into `out`; `progress` is told how many bytes were read."""
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".routing-partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    senders = FileSender(staging)
    dead_letters = FileDeadLetters(staging)
    router = Router(routes=StaticRoutes(table), senders=lambda _endpoint: senders, dead_letters=dead_letters)
    report = BatchReport()
    bad_lines: list[DeadLetter] = []
    try:
        for batch in _batches(events, batch_size, bad_lines, progress):
            if bad_lines:
                dead_letters.write(bad_lines)
                for letter in bad_lines:
                    report.count_dead_letter(letter)
                bad_lines.clear()
            report.merge(router.route(batch))
        dead_letters.write(bad_lines)
        for letter in bad_lines:
            report.count_dead_letter(letter)
    except BaseException:
        senders.close()
        dead_letters.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    senders.close()
    dead_letters.close()
    # Every file this run owns is replaced, or removed when this run wrote nothing there.
    for name in [f"{e.name}.jsonl" for e in table.endpoints] + [DEAD_LETTER_FILE]:
        staged = staging / name
        if staged.exists():
            os.replace(staged, out / name)
        else:
            (out / name).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    return report
