"""Nothing lost, order kept: random interleavings of devices and random endpoint faults, checked
for exact accounting, in-order prefixes per key, and a replay that completes every key."""

from __future__ import annotations

import contextlib
import json
import threading
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tenacity import Retrying

from routing.deliver import senders as senders_module
from routing.deliver.senders import DEFAULT_LANES
from routing.ingest.classify import classify
from routing.model import Event, EventType, IngressMessage
from routing.pipeline import Router, StaticRoutes
from routing.replay import Letter, replay
from routing.routes.table import RouteTable, parse_routes
from tests.conftest import sensor_data
from tests.fakes import FakeSenders, FakeWire, MemoryDeadLetters, StoreDown

TABLE = parse_routes(
    [
        {
            "name": "hub",
            "type": "EventHub",
            "eventTypes": ["DeviceMessages", "SensorChange"],
            "connection": "A",
            "path": "h",
        },
        {"name": "bus", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "B", "path": "q"},
    ]
)

KINDS = st.sampled_from(["telemetry", "sensor", "space", "garbage"])
KEYS = st.sampled_from(["k0", "k1", "k2", "k3"])
# A permanent refusal repeats, as the real one does (a message too large stays too large): if it did not,
# the retry of a batch could deliver it after the key's later messages that went on past it.
FAULTS = st.sampled_from([[], [], [], ["transient"], ["transient"] * 3, ["permanent"] * 5, ["too large"]])


def message(kind: str, key: str, seq: int) -> IngressMessage:
    system: dict[str, Any] = {}
    props: dict[str, Any] = {}
    if kind == "telemetry":
        body = f'{{"seq":{seq}}}'.encode()
        system = {"iothub-connection-device-id": key}
    elif kind == "sensor":
        body, props = json.dumps(sensor_data(key, str(seq))).encode(), {"Type": "SensorChange"}
    elif kind == "space":
        body, props = json.dumps({"Id": key, "Type": "Space"}).encode(), {"Type": "SpaceChange"}
    else:
        body = b"not json %d" % seq
    return IngressMessage(
        body=body, properties=props, system_properties=system, source="in", partition="0", sequence_number=seq
    )


def expected(messages: list[IngressMessage], table: RouteTable) -> dict[tuple[str, str], list[str]]:
    """Per (endpoint, key): the message ids the endpoint must end up with, in input order."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for msg in messages:
        for result in classify(msg):
            if isinstance(result, Event):
                for endpoint in table.for_type(result.event_type):
                    out[(endpoint.name, result.order_key)].append(result.message_id)
    return out


def delivered(wire: FakeWire, since: dict[str, int] | None = None) -> dict[tuple[str, str], list[str]]:
    """Per (endpoint, key): ids as delivered (after the first `since[endpoint]` messages), redeliveries of
    the same id folded (ids are deterministic)."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for endpoint, messages in wire.delivered.items():
        for m in messages[(since or {}).get(endpoint, 0) :]:
            ids = out[(endpoint, m.order_key)]
            if m.message_id not in ids:
                ids.append(m.message_id)
    return out


def script(wire: FakeWire, endpoint: str, message_id: str, faults: list[str]) -> None:
    if faults == ["too large"]:
        wire.too_large.add(f"{endpoint}/{message_id}")
    else:
        wire.faults[f"{endpoint}/{message_id}"] = list(faults)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(st.tuples(KINDS, KEYS, FAULTS, FAULTS), min_size=1, max_size=40),
    batch_size=st.integers(min_value=1, max_value=6),
    mixed=st.booleans(),
    store_down_first=st.booleans(),
)
def test_every_event_is_accounted_for_and_each_key_stays_in_order(
    plan: list[tuple[str, str, list[str], list[str]]], batch_size: int, mixed: bool, store_down_first: bool
) -> None:
    messages = [message(kind, key, seq) for seq, (kind, key, _f1, _f2) in enumerate(plan)]
    # Mixed: batches carry many keys, as Event Hubs partitions, Service Bus queues and Event Grid topics do.
    wire = FakeWire(batch_size=batch_size, mixed=mixed)
    for msg, (_kind, _key, hub_faults, bus_faults) in zip(messages, plan, strict=True):
        for result in classify(msg):
            if isinstance(result, Event):
                script(wire, "hub", result.message_id, hub_faults)
                script(wire, "bus", result.message_id, bus_faults)
    store = MemoryDeadLetters(down=store_down_first)
    router = Router(routes=StaticRoutes(TABLE), senders=FakeSenders(wire), dead_letters=store)

    if store_down_first:
        # A dead-letter store that is down fails the invocation (when there is anything to keep); the
        # retry policy then sends the whole batch again, and what was delivered is delivered again.
        with contextlib.suppress(StoreDown):
            router.route(messages)
        assert not store.blobs
        store.down = False
    before = {endpoint: len(sent) for endpoint, sent in wire.delivered.items()}
    report = router.route(messages)

    want = expected(messages, TABLE)
    # What the invocation that kept its letters delivered. (A message the failed invocation delivered can
    # be dead-lettered by the retry, when a message packed with it fails then: at least once.)
    got = delivered(wire, since=before)
    everything = delivered(wire)
    for pair, ids in everything.items():
        assert is_subsequence(ids, want[pair]), f"{pair}: delivered out of order, over both tries"
    letters = dict(store.blobs)
    dead: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for record in letters.values():
        if record["endpoint"]:
            dead[(record["endpoint"], record["orderKey"])][record["id"]] = record

    for pair, ids in want.items():
        sent = got.get(pair, [])
        assert is_subsequence(sent, ids), f"{pair}: delivered out of order"
        # Every message is delivered or a dead letter, never both, never neither.
        assert sorted(dead.get(pair, {})) == sorted(set(ids) - set(sent)), f"{pair}: not accounted for exactly"
        # Stop-the-line for transient faults: nothing after one is delivered. A permanent refusal fails
        # alone, and the key goes on after it.
        transient = [i for i, id_ in enumerate(ids) if id_ in dead[pair] and not _refused_for_good(dead[pair][id_])]
        if transient:
            assert not set(ids[transient[0] :]) & set(sent), f"{pair}: delivered past a transient failure"
    assert set(everything) <= set(want), "delivered something nobody wanted"
    garbage = sum(1 for kind, *_ in plan if kind == "garbage")
    assert sum(1 for r in letters.values() if r["endpoint"] is None) == garbage
    assert report.unrouted[EventType.SPACE_CHANGE] == sum(1 for kind, *_ in plan if kind == "space")

    # Replay once the endpoints are healthy: every message arrives; a key with no permanent failure keeps
    # its order whole (a replayed refusal arrives after the messages that went on past it); only garbage stays.
    # A refusal counts in either invocation: the failed one may have let the key go on past a refusal whose
    # message the retry then dead-letters for a transient fault of a message packed with it.
    refused = {tuple(name.split("/", 1)) for name in wire.refused}
    wire.faults.clear()
    wire.too_large.clear()
    outcome = replay(
        [Letter(name=name, record=record) for name, record in letters.items()],
        table=TABLE,
        senders=FakeSenders(wire),
        delete=store.delete,
    )
    assert not outcome.failed
    final = delivered(wire)
    for pair, ids in want.items():
        assert sorted(final.get(pair, [])) == sorted(ids), f"{pair}: not every message arrived after the replay"
        endpoint, _key = pair
        if not any(_refused_for_good(r) for r in dead.get(pair, {}).values()) and not any(
            (endpoint, id_) in refused for id_ in ids
        ):
            assert final[pair] == ids, f"{pair}: out of order after the replay"
    assert len(store.blobs) == garbage == len(outcome.kept)


def is_subsequence(items: list[str], of: list[str]) -> bool:
    remaining = iter(of)
    return all(item in remaining for item in items)


def _refused_for_good(record: dict[str, Any]) -> bool:
    """A letter the endpoint refused for good (the fake's permanent fault, or too large): not held behind."""
    return any(word in record["reason"] for word in ("message rejected", "too large"))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_permanent_refusal_fails_that_message_alone_and_the_key_goes_on(batch_size: int) -> None:
    # Refused alone; or in a batch the service refuses whole, which is then sent again one message at a
    # time: either way only the message the service refuses by itself fails.
    messages = [message("telemetry", key, seq) for seq, key in enumerate(["a", "b", "a", "b", "a"])]
    wire = FakeWire(batch_size=batch_size)
    second_a = next(r for r in classify(messages[2]) if isinstance(r, Event))
    wire.faults[f"hub/{second_a.message_id}"] = ["permanent"] * 3  # a real refusal repeats
    store = MemoryDeadLetters()
    Router(routes=StaticRoutes(TABLE), senders=FakeSenders(wire), dead_letters=store).route(messages)
    got = delivered(wire)
    assert len(got[("hub", "a")]) == 2 and len(got[("hub", "b")]) == 2
    [failed] = store.blobs.values()
    assert failed["code"] == "delivery-failed" and failed["original"]["sequenceNumber"] == 2
    assert [a["error"] for a in failed["attempts"]] == ["message rejected"]


def test_transient_faults_are_retried_and_every_attempt_is_kept_when_they_outlast_the_retries() -> None:
    messages = [message("telemetry", "a", 0), message("telemetry", "a", 1)]
    wire = FakeWire(batch_size=1)
    first, second = (next(r for r in classify(m) if isinstance(r, Event)) for m in messages)
    wire.faults[f"hub/{first.message_id}"] = ["transient", "transient"]  # recovers on the third try
    wire.faults[f"hub/{second.message_id}"] = ["transient"] * 3  # outlasts the three tries
    store = MemoryDeadLetters()
    senders = FakeSenders(wire)
    Router(routes=StaticRoutes(TABLE), senders=senders, dead_letters=store).route(messages)
    assert [m.message_id for m in wire.delivered["hub"]] == [first.message_id]
    [record] = store.blobs.values()
    assert record["id"] == second.message_id
    assert len(record["attempts"]) == 3 and all(a["error"] == "server busy" for a in record["attempts"])
    assert senders.senders["hub"].retries == 4


def test_a_refused_primary_fails_over_to_the_secondary() -> None:
    table = parse_routes(
        [
            {
                "name": "hub",
                "type": "EventHub",
                "eventTypes": ["DeviceMessages"],
                "connection": "PRIMARY",
                "secondaryConnection": "SECONDARY",
                "path": "h",
            }
        ]
    )
    wire = FakeWire(refused_settings={"PRIMARY"})
    senders = FakeSenders(wire)
    store = MemoryDeadLetters()
    Router(routes=StaticRoutes(table), senders=senders, dead_letters=store).route([message("telemetry", "a", 0)])
    assert len(wire.delivered["hub"]) == 1 and not store.blobs
    assert senders.senders["hub"].failovers == 1

    wire.refused_settings.add("SECONDARY")
    Router(routes=StaticRoutes(table), senders=FakeSenders(wire), dead_letters=store).route(
        [message("telemetry", "a", 1)]
    )
    [record] = store.blobs.values()
    assert "unauthorized with PRIMARY and SECONDARY" in record["reason"]


def test_replay_honours_the_filters_of_the_current_route_table() -> None:
    messages = [message("telemetry", "a", 0), message("telemetry", "b", 1)]
    wire = FakeWire()
    for msg in messages:
        event = next(r for r in classify(msg) if isinstance(r, Event))
        wire.faults[f"hub/{event.message_id}"] = ["permanent"]
    store = MemoryDeadLetters()
    Router(routes=StaticRoutes(TABLE), senders=FakeSenders(wire), dead_letters=store).route(messages)
    assert len(store.blobs) == 2
    # Since the failure, the endpoint was narrowed to device a only.
    narrowed = parse_routes(
        [{"name": "hub", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "A", "path": "h",
          "filter": "$system['iothub-connection-device-id'] = 'a'"}]
    )  # fmt: skip
    wire.faults.clear()
    outcome = replay(
        [Letter(name=name, record=record) for name, record in store.blobs.items()],
        table=narrowed,
        senders=FakeSenders(wire),
        delete=store.delete,
    )
    assert [m.order_key for m in wire.delivered["hub"]] == ["a"]
    [kept] = outcome.kept.values()
    assert "filter of 'hub' no longer matches" in kept
    assert [r["orderKey"] for r in store.blobs.values()] == ["b"]


# -- packing many keys into one batch -------------------------------------------------------------------


def route_telemetry(
    plan: list[str], wire: FakeWire, faults: dict[int, list[str]] | None = None
) -> tuple[list[Event], MemoryDeadLetters, FakeSenders]:
    """Telemetry from `plan[i]` (its device) to the hub; `faults[i]` scripts message i's tries there."""
    messages = [message("telemetry", key, seq) for seq, key in enumerate(plan)]
    events = [next(r for r in classify(m) if isinstance(r, Event)) for m in messages]
    for index, script_ in (faults or {}).items():
        script(wire, "hub", events[index].message_id, script_)
    store = MemoryDeadLetters()
    senders = FakeSenders(wire)
    Router(routes=StaticRoutes(TABLE), senders=senders, dead_letters=store).route(messages)
    return events, store, senders


def sequences(batches: list[list[Any]]) -> list[list[int]]:
    return [[json.loads(m.body)["seq"] for m in batch] for batch in batches]


def test_many_keys_go_out_in_few_batches_each_key_in_order() -> None:
    plan = [f"k{i % 30}" for i in range(60)]
    wire = FakeWire(batch_size=25, mixed=True)
    _events, store, _senders = route_telemetry(plan, wire)
    assert len(wire.batches) == 3 and not store.blobs
    assert delivered(wire) == {
        ("hub", f"k{k}"): [e.message_id for e in _events if e.order_key == f"k{k}"] for k in range(30)
    }


def test_a_refused_packed_batch_goes_again_one_by_one_and_only_the_refused_message_fails() -> None:
    # Keys in first-seen order, two messages to a batch: [a0 a2] [a5 b1] [b4 c3]; the second batch is refused.
    plan = ["a", "b", "a", "c", "b", "a"]  # a: 0, 2, 5; b: 1, 4; c: 3
    wire = FakeWire(batch_size=2, mixed=True)
    _events, store, _senders = route_telemetry(plan, wire, {1: ["permanent"] * 3})
    # The refused batch's messages went again one by one: a5 was taken, b1 refused alone; the third batch
    # waited behind them in its sequence and went in the next round: b goes on after its refused message.
    assert sequences(wire.batches) == [[0, 2], [5], [4, 3]]
    codes = {r["original"]["sequenceNumber"]: r["code"] for r in store.blobs.values()}
    assert codes == {1: "delivery-failed"}
    failed = [r for r in store.blobs.values() if r["code"] == "delivery-failed"]
    assert all([a["error"] for a in r["attempts"]] == ["message rejected"] for r in failed)


def test_a_transient_fault_retries_the_packed_batch_whole() -> None:
    plan = ["a", "b", "c", "a"]
    wire = FakeWire(batch_size=10, mixed=True)
    _events, store, senders = route_telemetry(plan, wire, {1: ["transient"]})
    assert sequences(wire.batches) == [[0, 3, 1, 2]]  # the same messages, once; a's in order
    assert len(wire.threads) == 2 and senders.senders["hub"].retries == 1
    assert not store.blobs


def test_a_message_too_large_for_any_batch_fails_alone_and_its_key_goes_on() -> None:
    plan = ["a", "b", "a", "b", "a"]  # a: 0, 2, 4; b: 1, 3
    wire = FakeWire(batch_size=10, mixed=True)
    _events, store, _senders = route_telemetry(plan, wire, {2: ["too large"]})
    # a's packing stops before it; the rest of a goes in the next round.
    assert sequences(wire.batches) == [[0, 1, 3], [4]]
    codes = {r["original"]["sequenceNumber"]: r["code"] for r in store.blobs.values()}
    assert codes == {2: "delivery-failed"}
    [too_large] = [r for r in store.blobs.values() if r["code"] == "delivery-failed"]
    assert len(too_large["attempts"]) == 1 and "too large" in too_large["reason"]


def test_the_first_try_is_a_plain_call_and_tenacity_only_comes_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []

    class CountedRetrying(Retrying):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(senders_module, "Retrying", CountedRetrying)
    route_telemetry(["a", "b", "a"], FakeWire(batch_size=10, mixed=True))
    assert built == []
    wire = FakeWire(batch_size=10, mixed=True)
    _events, store, _senders = route_telemetry(["a", "b"], wire, {0: ["transient"]})
    assert len(built) == 1 and not store.blobs and len(wire.batches) == 1


def test_one_batch_goes_out_on_the_calling_thread_and_many_routes_over_at_most_the_lanes() -> None:
    wire = FakeWire(batch_size=100, mixed=True)
    route_telemetry([f"k{i}" for i in range(40)], wire)
    assert wire.threads == [threading.current_thread().name]

    wire = FakeWire(batch_size=100, mixed=False)  # a batch per key: 40 routes
    route_telemetry([f"k{i}" for i in range(40)], wire)
    assert len(wire.batches) == 40
    assert threading.current_thread().name in wire.threads
    assert 1 < len(set(wire.threads)) <= DEFAULT_LANES
