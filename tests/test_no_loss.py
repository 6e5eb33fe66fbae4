"""Nothing lost, order kept: random interleavings of devices and random endpoint faults, checked
for exact accounting, in-order prefixes per key, and a replay that completes every key."""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.classify import classify
from routing.model import Event, EventType, IngressMessage
from routing.pipeline import Router, StaticRoutes
from routing.replay import Letter, replay
from routing.routes import RouteTable, parse_routes
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
FAULTS = st.sampled_from([[], [], [], ["transient"], ["transient"] * 3, ["permanent"]])


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


def delivered(wire: FakeWire) -> dict[tuple[str, str], list[str]]:
    """Per (endpoint, key): ids as delivered, redeliveries of the same id folded (ids are deterministic)."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for endpoint, messages in wire.delivered.items():
        for m in messages:
            ids = out[(endpoint, m.order_key)]
            if m.message_id not in ids:
                ids.append(m.message_id)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(st.tuples(KINDS, KEYS, FAULTS, FAULTS), min_size=1, max_size=40),
    batch_size=st.integers(min_value=1, max_value=4),
    store_down_first=st.booleans(),
)
def test_every_event_is_accounted_for_and_each_key_stays_in_order(
    plan: list[tuple[str, str, list[str], list[str]]], batch_size: int, store_down_first: bool
) -> None:
    messages = [message(kind, key, seq) for seq, (kind, key, _f1, _f2) in enumerate(plan)]
    wire = FakeWire(batch_size=batch_size)
    for msg, (_kind, _key, hub_faults, bus_faults) in zip(messages, plan, strict=True):
        for result in classify(msg):
            if isinstance(result, Event):
                wire.faults[f"hub/{result.message_id}"] = list(hub_faults)
                wire.faults[f"bus/{result.message_id}"] = list(bus_faults)
    store = MemoryDeadLetters(down=store_down_first)
    router = Router(routes=StaticRoutes(TABLE), senders=FakeSenders(wire), dead_letters=store)

    if store_down_first:
        # A dead-letter store that is down fails the invocation (when there is anything to keep); the
        # retry policy then sends the whole batch again, and what was delivered is delivered again.
        with contextlib.suppress(StoreDown):
            router.route(messages)
        assert not store.blobs
        store.down = False
    report = router.route(messages)

    want = expected(messages, TABLE)
    got = delivered(wire)
    letters = dict(store.blobs)
    dead: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record in letters.values():
        if record["endpoint"]:
            dead[(record["endpoint"], record["orderKey"])].append(record["id"])

    for pair, ids in want.items():
        sent = got.get(pair, [])
        # Delivered: an in-order prefix with no gaps; dead-lettered: exactly the rest.
        assert sent == ids[: len(sent)], f"{pair}: delivered out of order or with a gap"
        assert sorted(dead.get(pair, [])) == sorted(ids[len(sent) :]), f"{pair}: the tail is not dead-lettered"
    assert set(got) <= set(want), "delivered something nobody wanted"
    garbage = sum(1 for kind, *_ in plan if kind == "garbage")
    assert sum(1 for r in letters.values() if r["endpoint"] is None) == garbage
    assert report.unrouted[EventType.SPACE_CHANGE] == sum(1 for kind, *_ in plan if kind == "space")

    # Replay once the endpoints are healthy: every key completes, in order; only garbage stays.
    wire.faults.clear()
    outcome = replay(
        [Letter(name=name, record=record) for name, record in letters.items()],
        table=TABLE,
        senders=FakeSenders(wire),
        delete=store.delete,
    )
    assert not outcome.failed
    assert delivered(wire) == dict(want)
    assert len(store.blobs) == garbage == len(outcome.kept)


@pytest.mark.parametrize(
    ("batch_size", "delivered_a", "codes"),
    [
        (1, 1, ["delivery-failed", "held-behind"]),
        # A batch fails whole: all of key a's messages were in the refused batch.
        (3, 0, ["delivery-failed"] * 3),
    ],
)
def test_a_permanent_failure_holds_the_rest_of_its_key_but_not_other_keys(
    batch_size: int, delivered_a: int, codes: list[str]
) -> None:
    messages = [message("telemetry", key, seq) for seq, key in enumerate(["a", "b", "a", "b", "a"])]
    wire = FakeWire(batch_size=batch_size)
    second_a = next(r for r in classify(messages[2]) if isinstance(r, Event))
    wire.faults[f"hub/{second_a.message_id}"] = ["permanent"]
    store = MemoryDeadLetters()
    Router(routes=StaticRoutes(TABLE), senders=FakeSenders(wire), dead_letters=store).route(messages)
    got = delivered(wire)
    assert len(got[("hub", "a")]) == delivered_a and len(got[("hub", "b")]) == 2
    assert sorted(r["code"] for r in store.blobs.values()) == codes
    failed = next(r for r in store.blobs.values() if r["original"]["sequenceNumber"] == 2)
    assert failed["code"] == "delivery-failed"
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
