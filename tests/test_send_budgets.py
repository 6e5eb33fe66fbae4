"""Every send is bounded in time, and one bad message fails alone: function_app's functions on worker-shaped
input, against the local AMQP peer and Event Grid receiver switched to black holes (accept, never answer).

Each test keeps its budget small (a try of 1 s, a send budget of 3 s) so the suite stays fast; the bounds
asserted are generous (the point is that the invocation ends at all, and the other endpoint is delivered),
timings belong in bench/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from routing.deliver.pool import SenderPool
from routing.deliver.senders import SEND_BUDGET, TRY_TIMEOUT, RetryOptions
from tests.azurite import Azurite
from tests.conftest import WorkerEvent, worker_batch
from tests.deployment import deployed_app, stored_letters, stored_parked
from tests.peers.amqp import AmqpPeer, BlackHole
from tests.peers.eventgrid import EventGridReceiver

ROOT = Path(__file__).resolve().parent.parent

TRY = 1.0
BUDGET = 3.0
# Generous: the budget, plus the healthy endpoint, the dead letters in Azurite and a loaded machine.
BOUND = 3 * BUDGET + 5
TOPOLOGY = {"Type": "TopologyOperation"}


@pytest.fixture(scope="module")
def healthy() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities={"good-hub"}) as peer:
        yield peer


@pytest.fixture
def hole() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities={"bad-hub", "bad-queue"}) as peer:
        yield peer


@pytest.fixture
def grid_hole() -> Iterator[EventGridReceiver]:
    with EventGridReceiver(key="grid-key") as receiver:
        yield receiver


def letters_of(container: ContainerClient) -> list[dict[str, Any]]:
    return list(stored_letters(container).values())


def topology(count: int, start: int = 0) -> list[WorkerEvent]:
    return [
        WorkerEvent(
            body=json.dumps({"Id": f"space-{i}", "Type": "Spaces"}).encode(), properties=TOPOLOGY, sequence_number=i
        )
        for i in range(start, start + count)
    ]


def small_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    retry = RetryOptions(attempts=2, backoff_initial=0.01, backoff_max=0.05, timeout=TRY, budget=BUDGET)
    monkeypatch.setattr("routing.app.SenderPool", lambda: SenderPool(retry=retry))
    # The redelivery may probe at once, and the live pipeline reads its result at once.
    monkeypatch.setattr("routing.health.PROBE_INITIAL_SECONDS", 0.0)
    monkeypatch.setattr("routing.health.REFRESH_SECONDS", 0.0)


def routes_for(kind: str, bad_path: str) -> list[dict[str, Any]]:
    return [
        {"name": "bad", "type": kind, "eventTypes": ["TopologyOperation"], "connection": "BAD", "path": bad_path},
        {"name": "good", "type": "EventHub", "eventTypes": ["TopologyOperation"], "connection": "GOOD",
         "path": "good-hub"},
    ]  # fmt: skip


@pytest.mark.parametrize("after", ["connect", "open", "transfer"])
@pytest.mark.parametrize("kind", ["EventHub", "ServiceBus"])
def test_a_black_holed_amqp_endpoint_gives_up_within_its_budget_and_the_other_endpoint_is_delivered(  # noqa: PLR0917
    functions: dict[str, Any],
    healthy: AmqpPeer,
    hole: AmqpPeer,
    azurite: Azurite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    after: BlackHole,
) -> None:
    small_budgets(monkeypatch)
    healthy.clear()
    routes = routes_for(kind, "bad-hub" if kind == "EventHub" else "bad-queue")
    connections = {"BAD": hole.connection_string(), "GOOD": healthy.connection_string()}
    run = functions["route_twins"].get_user_function()
    with deployed_app(routes, connections, azurite=azurite, tmp_path=tmp_path, monkeypatch=monkeypatch) as letters:
        hole.black_hole(after)
        events = topology(4)
        started = time.monotonic()
        run(worker_batch(events))
        took = time.monotonic() - started
        assert took < BOUND, f"the invocation took {took:.1f} s against a black hole"
        assert len(healthy.received("good-hub")) == len(events)
        # Timed out: parked, in order, to be redelivered; not dead-lettered.
        parked = stored_parked(letters)
        assert sorted(x["original"]["sequenceNumber"] for x in parked) == [0, 1, 2, 3]
        assert {x["endpoint"] for x in parked} == {"bad"}
        assert all("timed out" in x["reason"] for x in parked if x["attempts"]), parked
        assert any(x["attempts"] for x in parked)
        assert not letters_of(letters) and not hole.received()

        # Once the endpoint answers again, the redelivery (the timer function) delivers what was parked, on
        # a new client (the hung one was not kept), and the live pipeline delivers again after it.
        hole.reset_faults()
        functions["redeliver_parked"].get_user_function()(None)
        assert len(hole.received()) == len(events)
        later = topology(2, start=10)
        run(worker_batch(later))
        assert len(hole.received()) == len(events) + len(later)
        assert not letters_of(letters) and not stored_parked(letters)


def test_a_black_holed_event_grid_topic_gives_up_within_its_budget_and_the_other_endpoint_is_delivered(  # noqa: PLR0917
    functions: dict[str, Any],
    healthy: AmqpPeer,
    grid_hole: EventGridReceiver,
    azurite: Azurite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small_budgets(monkeypatch)
    healthy.clear()
    routes = routes_for("EventGrid", grid_hole.endpoint)
    connections = {"BAD": grid_hole.key, "GOOD": healthy.connection_string()}
    run = functions["route_twins"].get_user_function()
    with deployed_app(routes, connections, azurite=azurite, tmp_path=tmp_path, monkeypatch=monkeypatch) as letters:
        grid_hole.black_hole()
        events = topology(3)
        started = time.monotonic()
        run(worker_batch(events))
        took = time.monotonic() - started
        assert took < BOUND, f"the invocation took {took:.1f} s against a black hole"
        assert len(healthy.received("good-hub")) == len(events)
        parked = stored_parked(letters)
        assert sorted(x["original"]["sequenceNumber"] for x in parked) == [0, 1, 2]
        assert all("timed out" in x["reason"].lower() for x in parked), parked
        assert {r.status for r in grid_hole.requests()} == {0}  # each try was held, none answered

        grid_hole.reset_faults()
        functions["redeliver_parked"].get_user_function()(None)
        assert len(grid_hole.events()) == 3
        run(worker_batch(topology(2, start=10)))
        assert len(grid_hole.events()) == 5
        assert not letters_of(letters) and not stored_parked(letters)


@pytest.mark.parametrize("kind", ["EventHub", "ServiceBus"])
def test_a_property_amqp_cannot_encode_fails_its_message_alone_with_a_reason_naming_it(  # noqa: PLR0917
    functions: dict[str, Any],
    healthy: AmqpPeer,
    azurite: Azurite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    healthy.clear()
    healthy.set_entities({"good-hub", "good-queue"})
    path = "good-hub" if kind == "EventHub" else "good-queue"
    routes = [
        {"name": "enriched", "type": kind, "eventTypes": ["SensorChange"], "connection": "GOOD", "path": path,
         "enrichments": {"reading": "$body.Value"}},
    ]  # fmt: skip
    values = [1, 2**63, 3]  # the second beyond AMQP's 64-bit long
    events = [
        WorkerEvent(
            body=json.dumps(
                {"Type": "Sensor", "Id": f"sensor-{i}", "Value": value, "MessageType": "SensorChange"}
            ).encode(),
            properties={"Type": "SensorChange"},
            sequence_number=i,
        )
        for i, value in enumerate(values)
    ]
    run = functions["route_twins"].get_user_function()
    try:
        with deployed_app(routes, {"GOOD": healthy.connection_string()}, azurite=azurite, tmp_path=tmp_path,
                          monkeypatch=monkeypatch) as letters:  # fmt: skip
            run(worker_batch(events))
            [letter] = letters_of(letters)
    finally:
        healthy.set_entities({"good-hub"})
    assert sorted(int(str(m.application_properties.get("reading"))) for m in healthy.received(path)) == [1, 3]
    assert letter["original"]["sequenceNumber"] == 1
    assert "application property 'reading'" in letter["reason"]
    assert str(2**63) in letter["reason"] and "64-bit" in letter["reason"]
    assert len(letter["attempts"]) == 1, "a message that cannot be encoded is not retried"


def test_the_function_timeout_is_set_and_leaves_room_for_every_send_budget() -> None:
    # docs/FAILURE_HANDLING.md "Send budgets": Flex Consumption's default is 30 min and it has no maximum;
    # host.json sets 10 min so a hang the budgets miss ends (and is retried) in minutes, while an invocation
    # whose every endpoint is black-holed (all at once, a budget each) ends long before it.
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    hours, minutes, seconds = (int(part) for part in host["functionTimeout"].split(":"))
    timeout = hours * 3600 + minutes * 60 + seconds
    assert 5 * SEND_BUDGET <= timeout <= 30 * 60
    assert 4 * TRY_TIMEOUT < SEND_BUDGET  # four tries fit one endpoint's budget


def test_event_hubs_sends_each_try_once_so_every_retry_is_ours_and_counted(
    functions: dict[str, Any], healthy: AmqpPeer, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One try, no retries: a server-busy answer must fail the batch (send_batch would send it again at once).
    retry = RetryOptions(attempts=1, timeout=TRY, budget=BUDGET)
    monkeypatch.setattr("routing.app.SenderPool", lambda: SenderPool(retry=retry))
    healthy.clear()
    routes = [{"name": "good", "type": "EventHub", "eventTypes": ["TopologyOperation"], "connection": "GOOD",
               "path": "good-hub"}]  # fmt: skip
    run = functions["route_twins"].get_user_function()
    with deployed_app(routes, {"GOOD": healthy.connection_string()}, azurite=azurite, tmp_path=tmp_path,
                      monkeypatch=monkeypatch) as letters:  # fmt: skip
        run(worker_batch(topology(1)))  # connected
        healthy.server_busy(1)
        run(worker_batch(topology(1, start=5)))
        # Still failing after the one try: parked (a transient fault), with that one attempt.
        [letter] = stored_parked(letters)
        assert not letters_of(letters)
    assert len(healthy.received("good-hub")) == 1
    assert len(healthy.stats().deliveries_rejected) == 1
    assert len(letter["attempts"]) == 1 and "busy" in letter["reason"].lower()
