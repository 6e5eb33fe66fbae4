"""Dead-letter blob names come from the message, not the clock: a batch retried after the hour turned
overwrites its letters in Azurite rather than writing each a second time; the hour folder reads every
form of enqueued time the router sees (the host's, without a zone; ours, with `Z`; any offset), a
missing or unreadable one goes to a fixed folder; and every time in a record carries an offset."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import orjson
import pytest
from azure.storage.blob import ContainerClient

from routing.deadletters import UNDATED_FOLDER, BlobDeadLetters, blob_record, hour_folder
from routing.model import Attempt, DeadLetter, IngressMessage
from routing.pipeline import Router, StaticRoutes
from routing.routes.table import parse_routes
from tests.azurite import Azurite
from tests.conftest import sensor_data, telemetry, twin_event
from tests.fakes import FakeSenders, FakeWire

ROUTES = [
    {"name": "raw", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "RAW", "path": "raw-hub"},
    {"name": "bus", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "BUS", "path": "alerts"},
]


def enqueued(message: IngressMessage, when: str | None) -> IngressMessage:
    return msgspec.structs.replace(message, enqueued_time=when)


# What the batch holds: the host's form (no zone, two fraction digits), the router's (Z), an offset
# that moves the hour, and an unclassifiable message; all dead-lettered (both endpoints refuse).
BATCH = [
    enqueued(telemetry("dev-0", b'{"n":0}', seq=0), "2026-11-26T09:59:59.15"),
    enqueued(telemetry("dev-1", b'{"n":1}', seq=1), "2026-11-26T09:59:59.9999999Z"),
    enqueued(twin_event(sensor_data("s-0"), seq=2, properties={"Type": "SensorChange"}), "2026-11-26T11:30:00+02:00"),
    enqueued(twin_event(None, seq=3, raw=b"not json"), "2026-11-26T09:00:00Z"),
]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def container(azurite: Azurite) -> Iterator[ContainerClient]:
    client = ContainerClient.from_connection_string(azurite.connection_string, f"dl{uuid.uuid4().hex[:16]}")
    yield client
    client.close()


def route_failing(messages: list[IngressMessage], store: BlobDeadLetters) -> None:
    wire = FakeWire(refused_settings={"RAW", "BUS"})
    Router(routes=StaticRoutes(parse_routes(ROUTES)), senders=FakeSenders(wire), dead_letters=store).route(messages)


def test_a_batch_retried_after_the_hour_turned_overwrites_its_dead_letters(container: ContainerClient) -> None:
    clock = Clock(datetime(2026, 11, 26, 9, 59, 59, tzinfo=UTC))
    store = BlobDeadLetters(container, clock=clock)
    route_failing(BATCH, store)
    first = sorted(b.name for b in container.list_blobs())
    assert len(first) == 4

    clock.now += timedelta(hours=1, seconds=2)  # the retry runs in the next hour (and the next day's too)
    route_failing(BATCH, store)
    clock.now += timedelta(days=1)
    route_failing(BATCH, store)

    names = sorted(b.name for b in container.list_blobs())
    assert names == first, "a retry wrote a second blob for a letter it had already kept"
    assert [n.rsplit("/", 1)[0] for n in names] == [
        "_unclassified/2026/11/26/09",
        "bus/2026/11/26/09",  # 11:30 at +02:00 is 09:30 UTC
        "raw/2026/11/26/09",
        "raw/2026/11/26/09",
    ]
    # The retry's record replaced the first one: the letter says when it was last dead-lettered.
    record = orjson.loads(container.download_blob(names[0]).readall())
    assert record["deadLetteredAt"] == "2026-11-27T11:00:01Z"


def test_the_hour_folder_reads_every_enqueued_time_form_and_a_missing_one_goes_to_a_fixed_folder() -> None:
    message = telemetry("dev-0", b"{}", seq=0)
    folders = {
        when: hour_folder(enqueued(message, when))
        for when in [
            "2026-11-26T09:00:00.15",  # the host's EnqueuedTimeUtc: UTC, no zone
            "2026-11-26T09:59:59.9999999Z",  # .NET's seven fraction digits
            "2026-11-26T23:30:00-01:00",  # the next day in UTC
            "2026-11-26T09:00:00+00:00",
            None,
            "",
            "yesterday",
            "2026-13-40T99:00:00",
        ]
    }
    assert folders == {
        "2026-11-26T09:00:00.15": "2026/11/26/09",
        "2026-11-26T09:59:59.9999999Z": "2026/11/26/09",
        "2026-11-26T23:30:00-01:00": "2026/11/27/00",
        "2026-11-26T09:00:00+00:00": "2026/11/26/09",
        None: UNDATED_FOLDER,
        "": UNDATED_FOLDER,
        "yesterday": UNDATED_FOLDER,
        "2026-13-40T99:00:00": UNDATED_FOLDER,
    }
    assert hour_folder(None) == UNDATED_FOLDER


def test_letters_without_an_enqueued_time_keep_one_name_and_list_after_the_dated_ones(
    container: ContainerClient,
) -> None:
    clock = Clock(datetime(2026, 11, 26, 9, 59, tzinfo=UTC))
    store = BlobDeadLetters(container, clock=clock)
    batch = [enqueued(BATCH[0], None), enqueued(BATCH[1], "not a time"), BATCH[1]]
    route_failing(batch, store)
    clock.now += timedelta(hours=3)
    route_failing(batch, store)
    names = list(store.names())
    assert len(names) == 3
    assert [n.split("/")[1] for n in names] == ["2026", UNDATED_FOLDER, UNDATED_FOLDER]


def test_every_time_in_a_record_carries_an_offset_and_naive_times_are_utc() -> None:
    letter = DeadLetter(
        code="delivery-failed",
        reason="refused",
        ingress=BATCH[0],
        endpoint="raw",
        attempts=(
            Attempt(time="2026-11-26T09:00:01.5", error="naive"),
            Attempt(time="2026-11-26T10:00:02+01:00", error="offset"),
            Attempt(time="2026-11-26T09:00:03Z", error="zulu"),
        ),
    )
    record = blob_record(letter, datetime(2026, 11, 26, 9, 0, 4))  # a clock that gives naive UTC
    assert record["deadLetteredAt"] == "2026-11-26T09:00:04Z"
    assert [a["time"] for a in record["attempts"]] == [
        "2026-11-26T09:00:01.500000Z",
        "2026-11-26T09:00:02Z",
        "2026-11-26T09:00:03Z",
    ]
    for text in [record["deadLetteredAt"], *(a["time"] for a in record["attempts"])]:
        assert datetime.fromisoformat(text).utcoffset() == timedelta(0)
