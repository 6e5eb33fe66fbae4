"""The enqueued times of a trigger batch as routing.ingest.host_times reads them, installed by function_app:
the library's converter decodes the host's batches to the same events with it as without it, and it
refuses to install over a library that reads a form otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from azure.functions import meta
from azure.functions.eventhub import EventHubTriggerConverter

from routing.ingest import host_times
from tests.conftest import WorkerEvent, sensor_data
from tests.host import trigger_metadata


@pytest.fixture
def library() -> Iterator[None]:
    """The library's converter as it came for the test, then as function_app left it."""
    was = host_times.installed()
    host_times.uninstall()
    yield
    if was:
        host_times.install()


def events() -> list[WorkerEvent]:
    # Instants the host writes with 0-7 fraction digits (tests/host.py trims them as .NET does), a leap day,
    # the year's last microsecond. The forms with a zone are in host_times.SAMPLES.
    times = [
        "2026-11-26T09:00:00", "2026-11-26T09:00:00.1", "2026-11-26T09:00:00.15", "2026-11-26T09:00:00.123456",
        "2028-02-29T23:59:59.999999", "2026-12-31T23:59:59.999999Z", "2026-11-26T09:00:00.5+00:00",
    ]  # fmt: skip
    return [
        WorkerEvent(body=str(sensor_data(f"s-{i}")).encode(), sequence_number=i, enqueued_time=time)
        for i, time in enumerate(times)
    ]


def decoded() -> list[tuple[Any, ...]]:
    batch = events()
    data = meta.Datum(SimpleNamespace(bytes=[e.body for e in batch]), "collection_bytes")
    out = EventHubTriggerConverter.decode(data, trigger_metadata=trigger_metadata(batch))
    assert isinstance(out, list)
    return [(e.enqueued_time, getattr(e.enqueued_time, "tzinfo", None), e.sequence_number, e.get_body()) for e in out]


def test_function_app_installs_it() -> None:
    import function_app  # noqa: F401, PLC0415 (importing the app installs it)

    assert host_times.installed()


def test_the_host_s_batches_decode_to_the_same_events_with_it_as_without(library: None) -> None:
    assert not host_times.installed()
    before = decoded()
    assert host_times.install() and host_times.installed()
    after = decoded()
    assert after == before


def test_every_sample_reads_as_the_library_reads_it(library: None) -> None:
    assert host_times._library is not None
    for sample in host_times.SAMPLES:
        ours, theirs = host_times.parse(sample), host_times._library(sample)
        assert ours == theirs and getattr(ours, "tzinfo", None) == getattr(theirs, "tzinfo", None), sample


def test_another_form_goes_to_the_library(library: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str | None] = []
    real = host_times._library
    assert real is not None

    def counted(value: str | None) -> Any:
        calls.append(value)
        return real(value)

    monkeypatch.setattr(host_times, "_library", counted)
    # Eight fraction digits: not a form the host writes, and the library cuts them to six.
    assert host_times.parse("2026-11-26T09:00:00.12345678") == real("2026-11-26T09:00:00.12345678")
    assert calls == ["2026-11-26T09:00:00.12345678"]


def test_a_library_that_reads_a_form_otherwise_is_left_alone(
    library: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = host_times._library
    assert real is not None
    monkeypatch.setattr(host_times, "_library", lambda value: None if value and "." in value else real(value))
    assert not host_times.install()
    assert not host_times.installed()
    assert "it reads the enqueued times itself" in caplog.text


def test_a_library_that_cannot_read_a_form_is_left_alone_and_the_app_still_imports(
    library: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuses(value: str | None) -> Any:
        raise ValueError(f"time data {value!r} does not match format")

    monkeypatch.setattr(host_times, "_library", refuses)
    assert not host_times.install()
    assert not host_times.installed()
