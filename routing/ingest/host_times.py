"""The enqueued times of a trigger batch, read by the Functions library as fast as the rest of it.

Before the function runs, the worker decodes the batch with the azure-functions library's Event Hubs
converter (`EventHubTriggerConverter.decode`). The host writes each `EnqueuedTimeUtc` without a zone
(`2026-11-26T09:00:00.1500000`), and the library's `_parse_datetime` tries twelve UTC formats with
`datetime.strptime`, each raising, before a local one matches; `strptime` keeps the compiled patterns of
only five formats, so each of the thirteen calls compiles its own again. That was 124-153 µs per event
(bench/decode.py), 7-30x the whole router core (issue #15), and the library's newest release (2.3) does
the same.

`install()`, which function_app.py calls at import (before the worker decodes any batch: it imports the
app first, and the two share one `azure.functions` module), sets on the converter a `_parse_datetime`
that reads the forms the host writes (`YYYY-MM-DDTHH:MM:SS`, 0-7 fraction digits, `Z`, `+00:00`,
`-00:00` or no zone) with `datetime.fromisoformat`, giving exactly the library's values (a seventh
fraction digit cut, a zone as UTC, none as a naive time), and hands anything else to the library's own.
6-8 µs per event. It leans on a private classmethod: `install()` checks first that the library still
has it and that both give the same values for every form, and leaves the library alone otherwise (a
warning says so; decoding is then as slow as before, never wrong). tests/test_host_times.py pins it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime

from azure.functions import meta
from azure.functions.eventhub import EventHubTriggerConverter

log = logging.getLogger(__name__)

# What the host writes: a .NET DateTime by Newtonsoft, 0-7 fraction digits, a UTC zone or none.
_HOST_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d{1,7}))?(Z|[+-]00:00)?")
# The library's own, from its base converter.
_library: Callable[[str | None], datetime | None] | None = getattr(meta._BaseConverter, "_parse_datetime", None)
# Each form the host writes, checked against the library's answer before anything is installed.
SAMPLES = (
    "2026-11-26T09:00:00",
    "2026-11-26T09:00:00.1",
    "2026-11-26T09:00:00.15",
    "2026-11-26T09:00:00.123456",
    "2026-11-26T09:00:00.1234567",
    "2026-11-26T09:00:00.1234567Z",
    "2026-11-26T09:00:00Z",
    "2026-11-26T09:00:00.5+00:00",
    "2026-11-26T09:00:00-00:00",
    "2026-12-31T23:59:59.9999999",
)


def parse(value: str | None) -> datetime | None:
    """The library's `_parse_datetime` for the host's forms by `fromisoformat`; the library's own for the rest."""
    match = _HOST_TIME.fullmatch(value) if value else None
    if value is None or match is None:
        assert _library is not None
        return _library(value)
    fraction, zone = match.group(1), match.group(2)
    if fraction is not None and len(fraction) == 7:
        value = value[: match.start(1) + 6] + value[match.end(1) :]
    moment = datetime.fromisoformat(value[:-1] if zone == "Z" else value)
    return moment.replace(tzinfo=UTC) if zone else moment


def _same(a: datetime | None, b: datetime | None) -> bool:
    return a == b and (a is None or b is None or a.tzinfo == b.tzinfo)


def installed() -> bool:
    return EventHubTriggerConverter.__dict__.get("_parse_datetime") is _installed


def install() -> bool:
    """Set `parse` on the library's Event Hubs converter, if the library is as expected (see the module)."""
    if installed():
        return True
    if _library is None or "_parse_datetime" in EventHubTriggerConverter.__dict__:
        log.warning("azure-functions has changed its Event Hubs converter: it reads the enqueued times itself")
        return False
    for sample in SAMPLES:
        try:
            same = _same(parse(sample), _library(sample))
        except Exception:  # a library that cannot read a form the host writes: its business, not the app's import
            same = False
        if not same:
            log.warning("azure-functions reads enqueued time %r otherwise: it reads the enqueued times itself", sample)
            return False
    EventHubTriggerConverter._parse_datetime = _installed  # type: ignore[assignment]
    return True


def uninstall() -> None:
    """The library's converter as it came (the benchmark measures both)."""
    if installed():
        del EventHubTriggerConverter._parse_datetime


_installed = staticmethod(parse)
