"""The Functions worker's own work before the function runs: the azure-functions library's Event Hubs
trigger converter (`EventHubTriggerConverter.decode`, what the worker calls for a `cardinality: many`,
`dataType: binary` trigger) over trigger data shaped as the host sends it (`tests.host`).

Most of it is the enqueued times. The host writes each `EnqueuedTimeUtc` without a zone
(`2026-11-26T09:00:00.15`), and the library's `_parse_datetime` tries twelve UTC formats with
`datetime.strptime` before a local one matches: thirteen `strptime` calls per event, twelve of them
raising. `strptime` keeps the regular expressions of only five formats (`_strptime._CACHE_MAX_SIZE`),
so with fourteen formats in turn every call compiles its format again.

`fast_enqueued_times()` measures what an app could do about it: the same classmethod replaced by one
that reads the forms the host writes (`YYYY-MM-DDTHH:MM:SS`, 0-7 fraction digits, `Z`, `+00:00` or
`-00:00` or no zone) with `datetime.fromisoformat`, and hands anything else to the library's own. It
gives the same values (`check_fast_enqueued_times` compares every event of the corpus). Only the
benchmark applies it, and only around its own stage.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from azure.functions import meta
from azure.functions.eventhub import EventHubTriggerConverter

from bench.corpus import Batch
from tests.host import trigger_metadata

HostInput = tuple[meta.Datum, dict[str, meta.Datum]]

# What the host writes: a .NET DateTime by Newtonsoft, 0-7 fraction digits, a UTC zone or none.
_HOST_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d{1,7}))?(Z|[+-]00:00)?")


def host_inputs(batches: Sequence[Batch]) -> list[HostInput]:
    """Each batch's data and trigger metadata as the worker receives them from the host."""
    return [
        (
            meta.Datum(SimpleNamespace(bytes=[e.body for e in b.events]), "collection_bytes"),
            trigger_metadata(b.events, partition_id=b.partition),
        )
        for b in batches
    ]


def library_decode(inputs: Sequence[HostInput]) -> Callable[[], None]:
    """One pass of the library's converter over every batch, as the worker calls it."""
    decode = EventHubTriggerConverter.decode

    def run() -> None:
        for data, metadata in inputs:
            decode(data, trigger_metadata=metadata)

    return run


_library_parse: Callable[[str | None], datetime | None] = EventHubTriggerConverter._parse_datetime


def fast_parse_datetime(value: str | None) -> datetime | None:
    """The library's `_parse_datetime` for the host's forms by `fromisoformat`; the library's own for the rest."""
    match = _HOST_TIME.fullmatch(value) if value else None
    if value is None or match is None:
        return _library_parse(value)
    fraction, zone = match.group(1), match.group(2)
    if fraction is not None and len(fraction) == 7:  # Python's datetime holds six; the library cuts the seventh
        value = value[: match.start(1) + 6] + value[match.end(1) :]
    moment = datetime.fromisoformat(value[:-1] if zone == "Z" else value)
    return moment.replace(tzinfo=UTC) if zone else moment


@contextmanager
def fast_enqueued_times() -> Iterator[None]:
    """The library's converter with `fast_parse_datetime`, for as long as the block runs."""
    # The library defines it on its base converter; set here, it shadows that one, and deleting it restores it.
    assert "_parse_datetime" not in EventHubTriggerConverter.__dict__, "the library's converter is already patched"
    EventHubTriggerConverter._parse_datetime = staticmethod(fast_parse_datetime)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        del EventHubTriggerConverter._parse_datetime


def fast_decode(inputs: Sequence[HostInput]) -> Callable[[], None]:
    run_library = library_decode(inputs)

    def run() -> None:
        with fast_enqueued_times():
            run_library()

    return run


def _fields(events: Any) -> list[tuple[Any, ...]]:
    return [
        (e.get_body(), e.enqueued_time, e.partition_key, e.sequence_number, e.offset, e.iothub_metadata) for e in events
    ]


def check_fast_enqueued_times(inputs: Sequence[HostInput]) -> int:
    """Every event decoded both ways; raises on the first difference; returns the events compared."""
    compared = 0
    for data, metadata in inputs:
        library = _fields(EventHubTriggerConverter.decode(data, trigger_metadata=metadata))
        with fast_enqueued_times():
            fast = _fields(EventHubTriggerConverter.decode(data, trigger_metadata=metadata))
        for a, b in zip(library, fast, strict=True):
            if a != b or (a[1] is not None and a[1].tzinfo != b[1].tzinfo):
                raise AssertionError(f"fast enqueued times differ from the library's: {a[1]!r} vs {b[1]!r}")
        compared += len(library)
    return compared
