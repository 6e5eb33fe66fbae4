"""Order holds through endpoint outages, whatever happens (issue #17): random device interleavings,
random transient and permanent faults, outages spanning many batches, two router instances sharing the
stores with the ingress partition handed from one to the other (and maybe back) mid-run, with the
checkpoint lag of a handover, and redelivery runs at random points.

Once the faults stop and the redelivery has drained, every (endpoint, key) received exactly its messages
in ingress order (a repeat is an at-least-once redelivery of the same message id: allowed, and counted),
nothing is lost, and the only dead letters are the messages an endpoint refuses for good.

Parked messages and health records live in real Blob Storage (Azurite, a container per example); the
endpoints are the in-project fake wire under the real `ClientSender`."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from azure.storage.blob import ContainerClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from routing.deadletters import client_options
from routing.health import PROBE_MAX_SECONDS, BlobHealth, Breaker
from routing.model import IngressMessage, message_id
from routing.parking import PARKED_FOLDER, BlobParking, Parking
from routing.pipeline import Router, StaticRoutes
from routing.redeliver import RedeliveryReport, redeliver
from routing.routes.table import parse_routes
from tests.azurite import Azurite
from tests.conftest import telemetry
from tests.fakes import FakeSenders, FakeWire, MemoryDeadLetters
from tests.test_parking import Clock

ENDPOINTS = ("hub", "lake")
TABLE = parse_routes(
    [
        {"name": "hub", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "A", "path": "h"},
        {"name": "lake", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "B", "path": "l"},
    ]
)
PARTITION = "0"
FIRST_SEQUENCE = 1000

# What the wire does with a message, per endpoint: the fake endpoint tries each batch three times
# (tests/fakes.py), so a burst of two recovers within the tries and three outlast them. A permanent refusal
# repeats, as a real one does: it must never be delivered, however often it is tried.
SCRIPTS: dict[str, list[str]] = {
    "blip": ["transient"],
    "burst": ["transient"] * 2,
    "stuck": ["transient"] * 3,
    "stuck-long": ["transient"] * 7,
    "refused": ["permanent"] * 50,
}
TRANSIENT = {"blip", "burst", "stuck", "stuck-long"}
# Refused for good, alone: too large for any batch (packing refuses it, its batch goes on without it).
TOO_LARGE = "too-large"
PERMANENT = {"refused", TOO_LARGE}
# Ticks after the run, each past the longest probe backoff: the first one delivers all a healthy endpoint
# can take; more than a few means the redelivery cannot drain.
DRAIN_TICKS = 5

# Totals over every example this module ran (printed at its end with `pytest -s`).
TOTALS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_totals() -> Iterator[None]:
    yield
    if TOTALS:
        print("\nparking property totals:", ", ".join(f"{name} {count}" for name, count in sorted(TOTALS.items())))


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One run: what arrives, what fails, who routes what, and when the redelivery runs."""

    devices: tuple[str, ...]  # the device of each ingress message, in ingress order
    sizes: tuple[int, ...]  # messages per ingress batch
    batch_size: int  # messages per batch on the wire (a fault fails its batch whole)
    # Whether the live pipeline has its circuit breaker. Health is advice (routing/health.py): the parked
    # messages alone must keep order, and without the breaker nothing hides a lapse of theirs.
    circuit: bool = True
    faults: Mapping[tuple[str, int], str]  # (endpoint, message position) -> SCRIPTS kind or TOO_LARGE
    outages: Mapping[str, tuple[int, int]]  # endpoint -> the ingress batches [first, end) it is down for
    owners: tuple[str, ...]  # the instance ("a" or "b") that has the partition for each ingress batch
    # Ingress batch where the partition changed hands -> earlier batches the new owner routes again first
    # (the checkpoint lag of a handover: at least once).
    lag: Mapping[int, int] = field(default_factory=dict)
    # After each ingress batch: a redelivery run (on which instance, after the clock moved how many seconds).
    ticks: tuple[tuple[str, float] | None, ...] = ()


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    devices = [f"dev-{n}" for n in range(draw(st.integers(3, 5)))]
    sizes = tuple(draw(st.lists(st.integers(1, 4), min_size=5, max_size=20)))
    count = len(sizes)
    total = sum(sizes)
    batch_size = draw(st.integers(1, 3))
    # Dense or sparse: where faults are rare, clean batches meet parked keys, and order is at stake there.
    clean = draw(st.sampled_from([60, 20, 6]))
    # A refused message fails the whole batch it is in: only alone on the wire is it the only one refused.
    kinds = ["none"] * clean + sorted(TRANSIENT) + [TOO_LARGE] + (["refused"] if batch_size == 1 else [])
    faults = {
        (endpoint, position): kind
        for endpoint in ENDPOINTS
        for position, kind in enumerate(draw(st.lists(st.sampled_from(kinds), min_size=total, max_size=total)))
        if kind != "none"
    }
    outages: dict[str, tuple[int, int]] = {}
    for endpoint in ENDPOINTS:
        start = draw(st.none() | st.integers(0, count - 1))
        if start is not None:
            outages[endpoint] = (start, start + draw(st.integers(2, 5)))
    # a has the partition first; b takes it over, and (mostly) a takes it back later.
    handover = draw(st.integers(1, count - 2))
    back = draw(st.integers(handover + 1, count - 1)) if draw(st.sampled_from([True, True, False])) else None
    owners = tuple("b" if handover <= i < (back if back is not None else count) else "a" for i in range(count))
    lag = {at: draw(st.sampled_from([0, 0, 1, 2])) for at in (handover, back) if at is not None and at < count}
    # Seconds the clock moves before a run: often less than the backoff, so a probe is not always due.
    tick = st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([0.0, 3.0, 10.0, 30.0, 90.0]))
    after = draw(st.dictionaries(st.integers(0, count - 1), tick, max_size=count))
    ticks = tuple(after.get(i) for i in range(count))
    return Scenario(
        devices=tuple(draw(st.lists(st.sampled_from(devices), min_size=total, max_size=total))),
        sizes=sizes,
        batch_size=batch_size,
        circuit=draw(st.booleans()),
        faults=faults,
        outages=outages,
        owners=owners,
        lag={at: n for at, n in lag.items() if n},
        ticks=ticks,
    )


class Instance:
    """One router process: its own parking view, breaker and senders, over the shared stores and wire."""

    def __init__(
        self, container: ContainerClient, wire: FakeWire, clock: Clock, letters: MemoryDeadLetters, *, circuit: bool
    ) -> None:
        self.store = BlobParking(container)
        self.breaker = Breaker(BlobHealth(container), clock=clock)
        self.senders = FakeSenders(wire)
        self.letters = letters
        self.clock = clock
        self.router = Router(
            routes=StaticRoutes(TABLE),
            senders=self.senders,
            dead_letters=letters,
            parking=Parking(self.store, clock=clock),
            breaker=self.breaker if circuit else None,
        )

    def redeliver(self) -> RedeliveryReport:
        return redeliver(
            store=self.store,
            table=TABLE,
            senders=self.senders,
            dead_letters=self.letters,
            breaker=self.breaker,
            health=self.breaker.store,
            clock=self.clock,
        )

    def close(self) -> None:
        for sender in self.senders.senders.values():
            sender.close()
        if self.router._pool is not None:
            self.router._pool.shutdown()


@contextmanager
def fresh_container(azurite: Azurite) -> Iterator[ContainerClient]:
    client = ContainerClient.from_connection_string(
        azurite.connection_string, f"prop{uuid.uuid4().hex[:12]}", **client_options()
    )
    client.create_container()
    try:
        yield client
    finally:
        client.delete_container()


def parked_blobs(container: ContainerClient) -> list[str]:
    return [b.name for b in container.list_blobs(name_starts_with=f"{PARKED_FOLDER}/")]


@dataclass
class Run:
    messages: list[IngressMessage]
    wire: FakeWire
    letters: MemoryDeadLetters
    stats: Counter[str] = field(default_factory=Counter)


def run(scenario: Scenario, container: ContainerClient) -> Run:
    """Route the scenario's batches, then stop the faults and tick the redelivery until nothing is parked."""
    messages = [
        telemetry(device, f'{{"n":{n}}}'.encode(), seq=FIRST_SEQUENCE + n, partition=PARTITION)
        for n, device in enumerate(scenario.devices)
    ]
    ends = [sum(scenario.sizes[: i + 1]) for i in range(len(scenario.sizes))]
    batches = [messages[end - size : end] for size, end in zip(scenario.sizes, ends, strict=True)]
    wire = FakeWire(mixed=True, batch_size=scenario.batch_size)
    for (endpoint, position), kind in scenario.faults.items():
        name = f"{endpoint}/{message_id(messages[position], 0)}"
        if kind == TOO_LARGE:
            wire.too_large.add(name)
        else:
            wire.faults[name] = list(SCRIPTS[kind])
    clock = Clock()
    letters = MemoryDeadLetters()
    instances = {name: Instance(container, wire, clock, letters, circuit=scenario.circuit) for name in ("a", "b")}
    outcome = Run(messages=messages, wire=wire, letters=letters)
    stats = outcome.stats
    try:
        for i, current in enumerate(batches):
            wire.down = {e for e, (first, end) in scenario.outages.items() if first <= i < end}
            stats["outage batches"] += len(wire.down)
            owner = instances[scenario.owners[i]]
            if i and scenario.owners[i] != scenario.owners[i - 1]:
                stats["handovers"] += 1
            for again in batches[max(0, i - scenario.lag.get(i, 0)) : i]:
                owner.router.route(again)
                stats["batches routed again"] += 1
            report = owner.router.route(current)
            stats["parked live"] += sum(report.parked.values())
            tick = scenario.ticks[i] if i < len(scenario.ticks) else None
            if tick is not None:
                who, seconds = tick
                clock.advance(seconds)
                stats["redelivered"] += sum(instances[who].redeliver().delivered.values())
                stats["ticks"] += 1
        # The faults stop (a permanent refusal stays what it is) and the redelivery drains what is parked.
        wire.down = set()
        for name, script in list(wire.faults.items()):
            if "transient" in script:
                del wire.faults[name]
        drained = 0
        while parked_blobs(container):
            assert drained < DRAIN_TICKS, f"still parked after {drained} redelivery runs: {parked_blobs(container)}"
            clock.advance(PROBE_MAX_SECONDS + 1)
            stats["redelivered"] += sum(instances["ab"[drained % 2]].redeliver().delivered.values())
            drained += 1
        stats["drain ticks"] += drained
    finally:
        for instance in instances.values():
            instance.close()
    return outcome


def check(outcome: Run, refused: Mapping[str, set[str]]) -> Counter[str]:
    """The issue's demands on a drained run; `refused` are the ids each endpoint refuses for good. Returns
    how many repeats (at-least-once redeliveries) each endpoint received."""
    expected: dict[tuple[str, str], list[str]] = defaultdict(list)
    for msg in outcome.messages:
        device = str(msg.system_properties["iothub-connection-device-id"])
        for endpoint in ENDPOINTS:
            expected[(endpoint, device)].append(message_id(msg, 0))
    arrived: dict[tuple[str, str], list[str]] = defaultdict(list)
    for endpoint, sent in outcome.wire.delivered.items():
        for message in sent:
            arrived[(endpoint, message.order_key)].append(message.message_id)
    dead: dict[tuple[str, str], set[str]] = defaultdict(set)
    for record in outcome.letters.blobs.values():
        # Dead letters only for what the endpoint refuses for good: never for a transient fault or an outage.
        assert record["code"] == "delivery-failed", f"unexpected dead letter {record['code']}: {record['reason']}"
        assert record["id"] in refused[record["endpoint"]], f"dead-lettered without a permanent fault: {record}"
        dead[(record["endpoint"], record["orderKey"])].add(record["id"])
    assert set(arrived) <= set(expected), "delivered something nobody sent"

    repeats: Counter[str] = Counter()
    for pair, ids in expected.items():
        got = arrived.get(pair, [])
        first = list(dict.fromkeys(got))  # each id where it first arrived
        repeats[pair[0]] += len(got) - len(first)
        assert not dead[pair] & set(first), f"{pair}: dead-lettered and delivered"
        assert set(first) | dead[pair] == set(ids), f"{pair}: lost {sorted(set(ids) - set(first) - dead[pair])}"
        want = [id_ for id_ in ids if id_ not in dead[pair]]
        assert first == want, f"{pair}: delivered out of ingress order"
    return repeats


def refused_ids(scenario: Scenario, messages: list[IngressMessage]) -> dict[str, set[str]]:
    refused: dict[str, set[str]] = {endpoint: set() for endpoint in ENDPOINTS}
    for (endpoint, position), kind in scenario.faults.items():
        if kind in PERMANENT:
            refused[endpoint].add(message_id(messages[position], 0))
    return refused


def run_and_check(scenario: Scenario, azurite: Azurite) -> Counter[str]:
    with fresh_container(azurite) as container:
        outcome = run(scenario, container)
        assert parked_blobs(container) == []
    repeats = check(outcome, refused_ids(scenario, outcome.messages))
    stats = outcome.stats
    stats["examples"] += 1
    stats["ingress batches"] += len(scenario.sizes)
    stats["messages"] += len(scenario.devices)
    stats["transient faults"] += sum(1 for kind in scenario.faults.values() if kind in TRANSIENT)
    stats["permanent faults"] += sum(1 for kind in scenario.faults.values() if kind in PERMANENT)
    stats["repeats"] += sum(repeats.values())
    return stats


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
def test_every_key_gets_its_messages_in_ingress_order_through_outages_handovers_and_redelivery(
    scenario: Scenario, azurite: Azurite
) -> None:
    stats = run_and_check(scenario, azurite)
    TOTALS.update(stats)
    event(f"repeats: {'none' if not stats['repeats'] else '1-5' if stats['repeats'] <= 5 else 'more than 5'}")
    event(f"handed back: {'yes' if 'a' in scenario.owners[scenario.owners.index('b') :] else 'no'}")
    event(f"routed again at a handover: {'yes' if stats['batches routed again'] else 'no'}")
    event(f"parked live: {'yes' if stats['parked live'] else 'no'}")


# The outage the cross-batch parking exists for: 'hub' is down for the first two batches on instance a,
# then the partition is b's, and 'hub' answers again before any redelivery has run.
OUTAGE_ACROSS_A_HANDOVER = Scenario(
    devices=("dev-1", "dev-2", "dev-1", "dev-2", "dev-1", "dev-2"),
    sizes=(2, 2, 2),
    batch_size=3,
    faults={},
    outages={"hub": (0, 2)},
    owners=("a", "a", "b"),
    ticks=(None, None, None),
)


def test_an_outage_across_batches_and_a_handover_keeps_each_key_in_order(azurite: Azurite) -> None:
    stats = run_and_check(OUTAGE_ACROSS_A_HANDOVER, azurite)
    # Both of a's batches for 'hub', and b's behind them: b knows what a parked.
    assert stats["parked live"] == 6
    assert stats["redelivered"] == 6


def test_a_partition_handed_back_is_listed_again_so_its_new_owner_holds_what_the_other_parked(
    azurite: Azurite,
) -> None:
    # b parks dev-0's message 1 and hands the partition back to a, which last saw nothing parked: its
    # next batch does not follow the last one it routed, so it lists the partition and holds dev-0.
    scenario = Scenario(
        devices=("dev-0",) * 5,
        sizes=(1,) * 5,
        batch_size=1,
        faults={("hub", 1): "stuck"},
        outages={},
        owners=("a", "b", "a", "a", "a"),
        ticks=(None,) * 5,
    )
    stats = run_and_check(scenario, azurite)
    assert stats["parked live"] == 4


def test_the_check_catches_the_order_broken_when_cross_batch_parking_is_off(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each batch no longer knows what earlier batches parked: b delivers its batch ahead of a's.
    monkeypatch.setattr(Parking, "parked", lambda self, hub, partition, first_sequence: frozenset())
    with pytest.raises(AssertionError, match="delivered out of ingress order"):
        run_and_check(OUTAGE_ACROSS_A_HANDOVER, azurite)
