"""What arrives becomes an `IngressMessage` whose times are instants: the host's and an events file's."""

from __future__ import annotations

from datetime import datetime

import pytest

from routing.errors import IngressFormatError
from routing.ingest.ingress import from_eventhub_events, parse_line
from tests.host import WorkerEvent, worker_batch


def test_the_hosts_zoneless_enqueued_time_is_taken_as_utc() -> None:
    [msg] = from_eventhub_events(
        worker_batch([WorkerEvent(body=b"1", enqueued_time="2026-11-26T09:00:00.15")]), source="t"
    )
    assert msg.enqueued_time == "2026-11-26T09:00:00.150000Z"


@pytest.mark.parametrize(
    ("written", "kept"),
    [
        ("2026-11-26T09:00:00", "2026-11-26T09:00:00Z"),
        ("2026-11-26T09:00:00Z", "2026-11-26T09:00:00Z"),
        ("2026-11-26T10:00:00+01:00", "2026-11-26T10:00:00+01:00"),
    ],
)
def test_an_events_file_time_without_an_offset_is_utc(written: str, kept: str) -> None:
    msg = parse_line(f'{{"body": 1, "enqueuedTime": "{written}"}}', source="t", line_number=1)
    assert msg.enqueued_time == kept
    assert datetime.fromisoformat(kept).tzinfo is not None


@pytest.mark.parametrize("bad", ['"yesterday"', "12"])
def test_an_events_file_time_that_is_no_time_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(IngressFormatError, match=r"line 3: enqueuedTime .* is not an ISO 8601 time"):
        parse_line(f'{{"body": 1, "enqueuedTime": {bad}}}', source="t", line_number=3)


@pytest.mark.parametrize(
    ("line", "count"),
    [('{"properties": {"a": 1}}', 0), ('{"body": 1, "bodyText": "1"}', 2), ('{"bodyText": "", "bodyBase64": ""}', 2)],
)
def test_a_line_without_one_body_is_refused_saying_how_many_it_has(line: str, count: int) -> None:
    with pytest.raises(
        IngressFormatError, match=rf"^line 7 must have exactly one of body, bodyText, bodyBase64 \(has {count}\)$"
    ):
        parse_line(line, source="t", line_number=7)
