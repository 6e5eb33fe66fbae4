"""The Functions worker's own work before the function runs: the azure-functions library's Event Hubs
trigger converter (`EventHubTriggerConverter.decode`, what the worker calls for a `cardinality: many`,
`dataType: binary` trigger) over trigger data shaped as the host sends it (`tests.host`).

Most of it is the enqueued times. The host writes each `EnqueuedTimeUtc` without a zone
(`2026-11-26T09:00:00.15`), and the library's `_parse_datetime` tries twelve UTC formats with
`datetime.strptime` before a local one matches: thirteen `strptime` calls per event, twelve of them
raising. `strptime` keeps the regular expressions of only five formats (`_strptime._CACHE_MAX_SIZE`),
so with fourteen formats in turn every call compiles its format again.

function_app.py installs routing.ingest.host_times (its `_parse_datetime` reading the host's forms with
`datetime.fromisoformat`, the library's own for anything else). This stage measures both: the library as
it came (`library_times()` takes the app's one away for the pass) and with it (`fast_enqueued_times()`);
`check_fast_enqueued_times` compares every event of the corpus both ways.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import SimpleNamespace
from typing import Any

from azure.functions import meta
from azure.functions.eventhub import EventHubTriggerConverter

from bench.corpus import Batch
from routing.ingest import host_times
from tests.host import trigger_metadata

HostInput = tuple[meta.Datum, dict[str, meta.Datum]]


def host_inputs(batches: Sequence[Batch]) -> list[HostInput]:
    """Each batch's data and trigger metadata as the worker receives them from the host."""
    return [
        (
            meta.Datum(SimpleNamespace(bytes=[e.body for e in b.events]), "collection_bytes"),
            trigger_metadata(b.events, partition_id=b.partition),
        )
        for b in batches
    ]


@contextmanager
def library_times() -> Iterator[None]:
    """The library's converter as it came, for as long as the block runs (function_app installs the fast one)."""
    was = host_times.installed()
    host_times.uninstall()
    try:
        yield
    finally:
        if was:
            host_times.install()


@contextmanager
def fast_enqueued_times() -> Iterator[None]:
    """The library's converter with routing.ingest.host_times installed, for as long as the block runs."""
    was = host_times.installed()
    assert host_times.install(), "the library's converter is not as host_times expects"
    try:
        yield
    finally:
        if not was:
            host_times.uninstall()


def _decode(inputs: Sequence[HostInput], times: Callable[[], AbstractContextManager[None]]) -> Callable[[], None]:
    """One pass of the library's converter over every batch, as the worker calls it, inside `times()`."""
    decode = EventHubTriggerConverter.decode

    def run() -> None:
        with times():
            for data, metadata in inputs:
                decode(data, trigger_metadata=metadata)

    return run


def library_decode(inputs: Sequence[HostInput]) -> Callable[[], None]:
    """The library's own converter, as it came."""
    return _decode(inputs, library_times)


def fast_decode(inputs: Sequence[HostInput]) -> Callable[[], None]:
    """With routing.ingest.host_times installed, as function_app runs it."""
    return _decode(inputs, fast_enqueued_times)


def _fields(events: Any) -> list[tuple[Any, ...]]:
    return [
        (e.get_body(), e.enqueued_time, e.partition_key, e.sequence_number, e.offset, e.iothub_metadata) for e in events
    ]


def check_fast_enqueued_times(inputs: Sequence[HostInput]) -> int:
    """Every event decoded both ways; raises on the first difference; returns the events compared."""
    compared = 0
    for data, metadata in inputs:
        with library_times():
            library = _fields(EventHubTriggerConverter.decode(data, trigger_metadata=metadata))
        with fast_enqueued_times():
            fast = _fields(EventHubTriggerConverter.decode(data, trigger_metadata=metadata))
        for a, b in zip(library, fast, strict=True):
            if a != b or (a[1] is not None and a[1].tzinfo != b[1].tzinfo):
                raise AssertionError(f"fast enqueued times differ from the library's: {a[1]!r} vs {b[1]!r}")
        compared += len(library)
    return compared
