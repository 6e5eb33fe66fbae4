"""Order holds through an endpoint's outage: what fails transiently is parked behind its key, across
batches, restarts and instances, and the redelivery sends it in order once the endpoint answers.

Parked messages and health records live in real Blob Storage (Azurite); the endpoint is the in-project
fake wire under the real `ClientSender`, so packing, retries and stop-the-line are production code."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from typer.testing import CliRunner

from routing.cli.main import app as cli_app
from routing.deadletters import BlobDeadLetters, client_options
from routing.health import PROBE_INITIAL_SECONDS, REFRESH_SECONDS, BlobHealth, Breaker, State
from routing.model import IngressMessage, message_id
from routing.parking import PARKED_FOLDER, BlobParking, ParkedBlob, Parking, ParkingStoreError, keys_of
from routing.pipeline import Router, StaticRoutes
from routing.redeliver import redeliver
from routing.replay import Letter, replay
from routing.routes.table import RouteTable, parse_routes
from tests.azurite import Azurite
from tests.conftest import telemetry
from tests.deployment import stored_letters
from tests.fakes import FakeSenders, FakeWire, MemoryDeadLetters

TABLE = parse_routes(
    [
        {"name": "hub", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "A", "path": "h"},
        {"name": "other", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "B", "path": "o"},
    ]
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def container(azurite: Azurite) -> Iterator[ContainerClient]:
    client = ContainerClient.from_connection_string(
        azurite.connection_string, f"park{uuid.uuid4().hex[:12]}", **client_options()
    )
    client.create_container()
    yield client
    client.delete_container()


class Instance:
    """One router process: its own parking view and breaker, over the shared container."""

    def __init__(self, container: ContainerClient, wire: FakeWire, clock: Clock, *, breaker: bool = True) -> None:
        self.store = BlobParking(container)
        self.parking = Parking(self.store, clock=clock)
        self.breaker = Breaker(BlobHealth(container), clock=clock)
        self.letters = MemoryDeadLetters()
        self.senders = FakeSenders(wire)
        self.router = Router(
            routes=StaticRoutes(TABLE),
            senders=self.senders,
            dead_letters=self.letters,
            parking=self.parking,
            breaker=self.breaker if breaker else None,
        )
        self.clock = clock

    def redeliver(self, table: RouteTable = TABLE) -> None:
        redeliver(
            store=self.store,
            table=table,
            senders=self.senders,
            dead_letters=self.letters,
            breaker=self.breaker,
            health=self.breaker.store,
            clock=self.clock,
        )


def batch(*pairs: tuple[str, int], partition: str = "0") -> list[IngressMessage]:
    return [telemetry(device, f'{{"n":{seq}}}'.encode(), seq=seq, partition=partition) for device, seq in pairs]


def mid(device: str, seq: int, partition: str = "0") -> str:
    return message_id(telemetry(device, b"", seq=seq, partition=partition), 0)


def fail(wire: FakeWire, endpoint: str, device: str, seq: int, times: int = 3) -> None:
    # Three tries per batch (tests/fakes.py): three transient faults outlast the tries of one invocation.
    wire.faults[f"{endpoint}/{mid(device, seq)}"] = ["transient"] * times


def sequence(wire: FakeWire, endpoint: str, device: str) -> list[int]:
    """The sequence numbers `endpoint` received for `device`, in arrival order."""
    return [m.event.ingress.sequence_number or 0 for m in wire.delivered[endpoint] if m.order_key == device]


def parked_blobs(container: ContainerClient) -> list[str]:
    return [b.name for b in container.list_blobs(name_starts_with=f"{PARKED_FOLDER}/")]


def test_a_key_that_fails_is_parked_and_its_later_messages_wait_behind_it_across_batches(
    container: ContainerClient,
) -> None:
    wire = FakeWire(mixed=True, batch_size=1)  # a message per batch: only message 1 fails
    clock = Clock()
    a = Instance(container, wire, clock, breaker=False)
    fail(wire, "hub", "dev-1", 1)

    first = a.router.route(batch(("dev-1", 0), ("dev-2", 100), ("dev-1", 1), ("dev-1", 2)))
    # dev-1's message 1 outlasted the tries: it and message 2 are parked; nothing is a dead letter.
    assert first.parked == {"hub": 2}
    assert not a.letters.blobs
    second = a.router.route(batch(("dev-1", 101), ("dev-2", 102)))
    assert second.parked == {"hub": 1}
    assert sequence(wire, "hub", "dev-1") == [0]
    assert sequence(wire, "hub", "dev-2") == [100, 102]
    # The other endpoint never waited for it.
    assert sequence(wire, "other", "dev-1") == [0, 1, 2, 101]

    a.redeliver()
    assert sequence(wire, "hub", "dev-1") == [0, 1, 2, 101]
    assert parked_blobs(container) == []
    # Released: the next batch lists the partition, finds nothing, and delivers dev-1 live again.
    third = a.router.route(batch(("dev-1", 103)))
    assert not third.parked
    assert sequence(wire, "hub", "dev-1") == [0, 1, 2, 101, 103]


def test_a_parked_key_holds_on_the_instance_that_takes_the_partition_over(container: ContainerClient) -> None:
    wire = FakeWire(mixed=True)
    clock = Clock()
    a = Instance(container, wire, clock, breaker=False)
    b = Instance(container, wire, clock, breaker=False)
    # a routes 0-1 cleanly (it knows nothing is parked), then b has the partition and parks dev-1 at 10.
    a.router.route(batch(("dev-1", 0), ("dev-1", 1)))
    fail(wire, "hub", "dev-1", 10)
    assert b.router.route(batch(("dev-1", 10), ("dev-1", 11))).parked == {"hub": 2}
    # The partition comes back to a: its batch does not follow the last one it routed (2), so it lists
    # the partition again instead of trusting what it knew, and parks dev-1 behind b's.
    assert a.router.route(batch(("dev-1", 20))).parked == {"hub": 1}
    assert sequence(wire, "hub", "dev-1") == [0, 1]

    # A new process (a restart) knows nothing yet: it lists on first sight.
    c = Instance(container, wire, clock, breaker=False)
    assert c.router.route(batch(("dev-1", 21))).parked == {"hub": 1}
    c.redeliver()
    assert sequence(wire, "hub", "dev-1") == [0, 1, 10, 11, 20, 21]


def test_with_nothing_parked_a_batch_that_follows_the_last_costs_no_storage_call(container: ContainerClient) -> None:
    wire = FakeWire(mixed=True)
    a = Instance(container, wire, Clock(), breaker=False)
    for start in range(0, 50, 5):
        a.router.route(batch(*[(f"dev-{n % 3}", start + n) for n in range(5)]))
    assert a.parking.listings == 1  # the first sight of the partition only

    fail(wire, "hub", "dev-0", 50)
    a.router.route(batch(("dev-0", 50)))
    listed = a.parking.listings
    for start in range(51, 61, 5):
        a.router.route(batch(*[(f"dev-{n % 3}", start + n) for n in range(5)]))
    # While something is parked there, one listing per batch (never per event).
    assert a.parking.listings == listed + 2


def test_a_permanent_failure_is_dead_lettered_alone_and_never_stops_its_device(container: ContainerClient) -> None:
    wire = FakeWire(mixed=True, batch_size=1)  # a batch the service refuses fails all it holds: one here
    a = Instance(container, wire, Clock())
    wire.faults[f"hub/{mid('dev-1', 1)}"] = ["permanent"]
    report = a.router.route(batch(("dev-1", 0), ("dev-1", 1), ("dev-1", 2)))
    assert not report.parked
    assert [r["code"] for r in a.letters.blobs.values()] == ["delivery-failed"]
    assert sequence(wire, "hub", "dev-1") == [0, 2]
    assert a.breaker.states()["hub"].state is State.DEGRADED


def test_an_unhealthy_endpoint_is_not_tried_by_the_live_pipeline_and_the_redelivery_probes_it_with_backoff(
    container: ContainerClient,
) -> None:
    wire = FakeWire(mixed=True)
    clock = Clock()
    live = Instance(container, wire, clock)
    timer = Instance(container, wire, clock)  # the redelivery, on another instance
    fail(wire, "hub", "dev-1", 0)
    live.router.route(batch(("dev-1", 0), ("dev-2", 1)))
    assert live.breaker.states()["hub"].state is State.UNHEALTHY
    assert BlobHealth(container).read("hub").state is State.UNHEALTHY  # type: ignore[union-attr]

    tries = len(wire.batches)
    report = live.router.route(batch(("dev-3", 2), ("dev-4", 3)))
    # Circuit open: parked at once, no try spent, and the other endpoint still delivered.
    assert report.parked == {"hub": 2}
    assert all(m.endpoint == "other" for b in wire.batches[tries:] for m in b)

    timer.redeliver()  # the first probe is not due yet
    assert sequence(wire, "hub", "dev-1") == []
    clock.advance(PROBE_INITIAL_SECONDS)
    fail(wire, "hub", "dev-1", 0)  # still down at the first probe
    timer.redeliver()
    assert sequence(wire, "hub", "dev-1") == []
    assert BlobHealth(container).read("hub").failures == 2  # type: ignore[union-attr]
    clock.advance(PROBE_INITIAL_SECONDS)  # the backoff doubled: not due yet
    timer.redeliver()
    assert sequence(wire, "hub", "dev-1") == []
    clock.advance(PROBE_INITIAL_SECONDS)
    timer.redeliver()
    assert [sequence(wire, "hub", d) for d in ("dev-1", "dev-2", "dev-3", "dev-4")] == [[0], [1], [2], [3]]
    assert BlobHealth(container).read("hub").state is State.DEGRADED  # type: ignore[union-attr]

    # The live instance reads the shared record at most every REFRESH_SECONDS while its circuit is open.
    clock.advance(REFRESH_SECONDS)
    assert not live.router.route(batch(("dev-3", 4))).parked
    assert sequence(wire, "hub", "dev-3") == [2, 4]


def test_a_parked_message_past_its_time_to_live_is_dead_lettered_with_every_attempt_and_an_alert(
    container: ContainerClient, caplog: pytest.LogCaptureFixture
) -> None:
    table = parse_routes([{**TABLE.endpoints[0].to_dict(), "timeToLiveMinutes": 60}])
    wire = FakeWire(mixed=True)
    clock = Clock()
    a = Instance(container, wire, clock, breaker=False)
    a.router.routes = StaticRoutes(table)
    fail(wire, "hub", "dev-1", 0, times=100)
    a.router.route(batch(("dev-1", 0), ("dev-1", 1)))
    clock.advance(30 * 60)
    a.redeliver(table)  # still failing, within its time to live: kept, with the new attempt
    clock.advance(31 * 60)
    wire.faults.clear()
    with caplog.at_level(logging.ERROR, logger="routing.redeliver"):
        a.redeliver(table)
    expired = sorted(
        (r for r in a.letters.blobs.values() if r["code"] == "expired"), key=lambda r: r["original"]["sequenceNumber"]
    )
    # Message 1 waited behind message 0 as long, so it expired too.
    assert [(r["orderKey"], r["original"]["sequenceNumber"]) for r in expired] == [("dev-1", 0), ("dev-1", 1)]
    # Three tries in the invocation and one by the first redelivery, each of the batch both were in.
    assert [len(r["attempts"]) for r in expired] == [4, 4]
    assert all("time to live (60 min)" in r["reason"] for r in expired)
    assert any(getattr(r, "alert", None) == "parked-expired" for r in caplog.records)
    # Nothing is parked any more, and dev-1 goes on.
    assert parked_blobs(container) == []
    a.router.route(batch(("dev-1", 2)))
    assert sequence(wire, "hub", "dev-1") == [2]


def test_a_parking_store_that_is_down_fails_the_batch_so_the_checkpoint_holds() -> None:
    down = ContainerClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;",
        "parked",
        **client_options(),
    )
    wire = FakeWire(mixed=True)
    router = Router(
        routes=StaticRoutes(TABLE), senders=FakeSenders(wire), dead_letters=MemoryDeadLetters(),
        parking=Parking(BlobParking(down)),
    )  # fmt: skip
    with pytest.raises(ParkingStoreError, match=r"parking store .* the batch fails and the host retries it"):
        router.route(batch(("dev-1", 0)))


def test_replay_parks_a_dead_letter_of_a_parked_key_so_the_key_is_redelivered_in_its_original_order(
    container: ContainerClient,
) -> None:
    wire = FakeWire(mixed=True, batch_size=1)
    a = Instance(container, wire, Clock(), breaker=False)
    wire.faults[f"hub/{mid('dev-1', 0)}"] = ["permanent"]
    fail(wire, "hub", "dev-1", 1)
    a.router.route(batch(("dev-1", 0), ("dev-1", 1), ("dev-1", 2)))
    assert [r["code"] for r in a.letters.blobs.values()] == ["delivery-failed"]
    wire.faults.clear()

    outcome = replay(
        [Letter(name=name, record=record) for name, record in a.letters.blobs.items()],
        table=TABLE,
        senders=a.senders,
        delete=a.letters.delete,
        parked=keys_of(a.store.snapshot()),
        park=a.parking.park_replayed,
    )
    # Not sent ahead of the parked messages 1 and 2 (nor behind them): parked at its own position.
    assert len(outcome.parked) == 1 and not outcome.delivered and not a.letters.blobs
    assert sequence(wire, "hub", "dev-1") == []
    a.redeliver()
    assert sequence(wire, "hub", "dev-1") == [0, 1, 2]


def test_a_redelivery_run_reads_no_parked_blob_of_an_endpoint_whose_probe_is_not_due(
    container: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = FakeWire(mixed=True)
    clock = Clock()
    a = Instance(container, wire, clock)
    fail(wire, "hub", "dev-1", 0)
    a.router.route(batch(("dev-1", 0), ("dev-2", 1)))
    reads: list[str] = []
    real_read = BlobParking.read

    def counted(self: BlobParking, name: str) -> ParkedBlob | None:
        reads.append(name)
        return real_read(self, name)

    monkeypatch.setattr(BlobParking, "read", counted)
    a.redeliver()  # the probe is not due: one listing, no read
    assert reads == []
    clock.advance(PROBE_INITIAL_SECONDS)
    a.redeliver()
    assert len(reads) == 1 and parked_blobs(container) == []
    assert sequence(wire, "hub", "dev-1") == [0]


def test_the_replay_command_parks_a_letter_of_a_parked_key_instead_of_sending_it(
    container: ContainerClient, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = FakeWire(mixed=True, batch_size=1)
    a = Instance(container, wire, Clock(), breaker=False)
    a.router.dead_letters = BlobDeadLetters(container)
    wire.faults[f"hub/{mid('dev-1', 0)}"] = ["permanent"]
    fail(wire, "hub", "dev-1", 1)
    a.router.route(batch(("dev-1", 0), ("dev-1", 1)))
    wire.faults.clear()
    (tmp_path / "routes.json").write_text(json.dumps([e.to_dict() for e in TABLE.endpoints]))
    monkeypatch.chdir(tmp_path)
    # Never used: the letter is parked, not sent (a send would fail on this address, and the command with it).
    monkeypatch.setenv("A", "Endpoint=sb://127.0.0.1:9/;SharedAccessKeyName=k;SharedAccessKey=a2V5;EntityPath=h")
    result = CliRunner().invoke(
        cli_app,
        ["deadletters", "replay", "--routes", "routes.json", "--connection-string", azurite.connection_string,
         "--container", container.container_name, "-o", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert (outcome["delivered"], outcome["failed"], outcome["parked"]) == (0, 0, 1)
    assert not stored_letters(container)
    a.redeliver()
    assert sequence(wire, "hub", "dev-1") == [0, 1]


def test_a_key_released_while_the_live_pipeline_parks_more_of_it_loses_and_reorders_nothing(
    container: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = FakeWire(mixed=True)
    clock = Clock()
    live = Instance(container, wire, clock, breaker=False)
    timer = Instance(container, wire, clock, breaker=False)
    fail(wire, "hub", "dev-1", 0)
    live.router.route(batch(("dev-1", 0)))  # dev-1 parked for hub
    wire.faults.clear()

    # The race: the live pipeline has listed the partition (dev-1 parked) and decided to park dev-1 #1;
    # before it writes, the redelivery delivers #0 and deletes the only blob that parked dev-1.
    real_park = Parking.park
    raced: list[bool] = []

    def park_after_a_redelivery(self: Parking, *args: Any, **kwargs: Any) -> str:
        if not raced:
            raced.append(True)
            timer.redeliver()
            assert parked_blobs(container) == [] and sequence(wire, "hub", "dev-1") == [0]
        return real_park(self, *args, **kwargs)

    monkeypatch.setattr(Parking, "park", park_after_a_redelivery)
    assert live.router.route(batch(("dev-1", 1))).parked == {"hub": 1}
    # #1 is parked in a blob the redelivery did not read: dev-1 is still parked, so #2 waits behind it.
    assert live.router.route(batch(("dev-1", 2))).parked == {"hub": 1}
    assert sequence(wire, "hub", "dev-1") == [0]
    timer.redeliver()
    assert sequence(wire, "hub", "dev-1") == [0, 1, 2]
    assert not live.router.route(batch(("dev-1", 3))).parked
    assert sequence(wire, "hub", "dev-1") == [0, 1, 2, 3]


def test_an_unhealthy_endpoint_whose_parked_messages_expire_is_dead(container: ContainerClient) -> None:
    table = parse_routes([{**TABLE.endpoints[0].to_dict(), "timeToLiveMinutes": 60}])
    wire = FakeWire(mixed=True)
    clock = Clock()
    a = Instance(container, wire, clock)
    a.router.routes = StaticRoutes(table)
    wire.down.add("hub")
    a.router.route(batch(("dev-1", 0)))
    clock.advance(50 * 60)
    a.router.route(batch(("dev-1", 1)))  # parked without a try: the circuit is open
    clock.advance(11 * 60)
    a.redeliver(table)  # #0 has waited its hour, #1 has not, and the endpoint still fails
    assert [r["original"]["sequenceNumber"] for r in a.letters.blobs.values()] == [0]
    assert a.breaker.states()["hub"].state is State.DEAD
    assert BlobHealth(container).read("hub").state is State.DEAD  # type: ignore[union-attr]
