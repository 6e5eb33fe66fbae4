"""Order holds through an endpoint's outage, end to end (issue #17): function_app's functions on
worker-shaped batches, through the unmodified Event Hubs, Service Bus and Event Grid SDKs, to a local
AMQP 1.0 peer and Event Grid receiver, with parked messages and health records in Azurite.

An endpoint is down for a few batches (its port refusing connections behind a loopback proxy, the peer
black-holed, or Event Grid answering 500), while a second endpoint stays healthy; the redelivery timer
function runs between batches, as the host runs it every 10 s. Then the endpoint is back. What a user
checks: the healthy endpoint got everything while the other was down; after the first failing batch the
live pipeline does not try the down endpoint again (the peer, proxy or receiver sees nothing from those
invocations); once the redelivery has drained, every device's messages reached the endpoint in ingress
order (a repeat of a message id, which the service may de-duplicate, counted once), nothing is
dead-lettered and nothing stays parked.

Budgets are small (tries of 1 s, 3 s per send) and the breaker's delays 0 so the tests stay quick; what
the outage costs in time is measured in bench/outage.py, never here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from routing.deliver.pool import SenderPool
from routing.deliver.senders import RetryOptions
from tests.azurite import Azurite
from tests.blackhole import Mode, proxy
from tests.conftest import WorkerEvent, sensor_data, worker_batch
from tests.deployment import deployed_app, stored_letters, stored_parked
from tests.peers.amqp import AmqpPeer
from tests.peers.eventgrid import EventGridReceiver

DEVICES = 4
BATCH = 12
OUTAGE_BATCHES = 3
DOWN_ENTITY = {"EventHub": "down-hub", "ServiceBus": "down-queue"}
# Telemetry goes to event hubs only (raw); a Service Bus endpoint takes twin events, keyed by sensor.
FEED = {"EventHub": ("route_telemetry", "DeviceMessages"), "ServiceBus": ("route_twins", "SensorChange")}
Fault = Literal["refused", "black-holed"]


@pytest.fixture(scope="module")
def healthy() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities={"good-hub"}) as peer:
        yield peer


@pytest.fixture
def down() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities=set(DOWN_ENTITY.values())) as peer:
        yield peer


@pytest.fixture
def grid() -> Iterator[EventGridReceiver]:
    with EventGridReceiver(key="grid-key") as receiver:
        yield receiver


def quick_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    retry = RetryOptions(attempts=2, backoff_initial=0.01, backoff_max=0.05, timeout=1.0, budget=3.0)
    monkeypatch.setattr("routing.app.SenderPool", lambda: SenderPool(retry=retry))
    # The redelivery may probe at every run, and the live pipeline reads the shared health at every batch.
    monkeypatch.setattr("routing.health.PROBE_INITIAL_SECONDS", 0.0)
    monkeypatch.setattr("routing.health.REFRESH_SECONDS", 0.0)


def device(seq: int) -> int:
    """Batch after batch, half of a batch's `DEVICES` devices were in the one before and half are new: a
    device held behind its parked messages, and one the outage has not met yet, in every batch."""
    return seq % DEVICES + seq // BATCH * DEVICES // 2


def telemetry(batch: int) -> list[WorkerEvent]:
    """Batch `batch` of a run: `BATCH` readings of `DEVICES` devices, interleaved, sequence numbers going on."""
    events = []
    for seq in range(batch * BATCH, (batch + 1) * BATCH):
        name = f"dev-{device(seq)}"
        events.append(
            WorkerEvent(
                body=json.dumps({"device": name, "n": seq}).encode(),
                system_properties={"iothub-connection-device-id": name, "iothub-message-source": "Telemetry"},
                sequence_number=seq,
                offset=seq,
            )
        )
    return events


def sensors(batch: int) -> list[WorkerEvent]:
    """The same for SensorChange events of `DEVICES` sensors (their key), the reading the sequence number."""
    return [
        WorkerEvent(
            body=json.dumps(sensor_data(f"sensor-{device(seq)}", str(seq))).encode(),
            properties={"Type": "SensorChange"},
            sequence_number=seq,
        )
        for seq in range(batch * BATCH, (batch + 1) * BATCH)
    ]


def ingress_order(batches: list[list[WorkerEvent]]) -> dict[str, list[int]]:
    """Per device (or sensor), its sequence numbers in the order they arrived on the ingress hub."""
    order: dict[str, list[int]] = {}
    for event in (e for batch in batches for e in batch):
        body = json.loads(event.body)
        order.setdefault(body.get("device") or body["Id"], []).append(event.sequence_number)
    return order


def amqp_order(peer: AmqpPeer, entity: str) -> dict[str, list[int]]:
    """Per device (or sensor), the sequence numbers `entity` received, in arrival order, each message id
    once (its first arrival: a repeat is what duplicate detection drops). Telemetry arrives raw; a twin
    event in its envelope, the reading in its data."""
    seen: set[object] = set()
    order: dict[str, list[int]] = {}
    for message in peer.received(entity):
        if message.message_id in seen:
            continue
        seen.add(message.message_id)
        body = json.loads(message.body)
        if "data" in body:
            order.setdefault(str(body["data"]["Id"]), []).append(int(body["data"]["Value"]))
        else:
            order.setdefault(body["device"], []).append(body["n"])
    return order


def grid_order(receiver: EventGridReceiver) -> dict[str, list[int]]:
    seen: set[object] = set()
    order: dict[str, list[int]] = {}
    for event in receiver.events():
        if event["id"] in seen:
            continue
        seen.add(event["id"])
        data = event["data"]
        assert isinstance(data, dict)
        order.setdefault(str(data["Id"]), []).append(int(data["Value"]))
    return order


def routes(down_kind: str, down_path: str, event_type: str) -> list[dict[str, Any]]:
    return [
        {"name": "down", "type": down_kind, "eventTypes": [event_type], "connection": "DOWN", "path": down_path},
        {"name": "good", "type": "EventHub", "eventTypes": [event_type], "connection": "GOOD", "path": "good-hub"},
    ]


@pytest.mark.parametrize("fault", ["refused", "black-holed"])
@pytest.mark.parametrize("kind", ["EventHub", "ServiceBus"])
def test_an_amqp_endpoint_down_for_batches_gets_every_device_in_order_once_back_and_the_other_never_waits(  # noqa: PLR0917
    functions: dict[str, Any],
    healthy: AmqpPeer,
    down: AmqpPeer,
    azurite: Azurite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    fault: Fault,
) -> None:
    quick_budgets(monkeypatch)
    healthy.clear()
    entity = DOWN_ENTITY[kind]
    function, event_type = FEED[kind]
    run = functions[function].get_user_function()
    redeliver = functions["redeliver_parked"].get_user_function()
    make = telemetry if kind == "EventHub" else sensors
    batches = [make(n) for n in range(OUTAGE_BATCHES + 2)]
    # The down endpoint is reached through a loopback proxy: refusing is the proxy resetting every
    # connection (open ones too); a black hole is the peer itself answering nothing.
    with proxy(down.port) as gate:
        connection = down.connection_string().replace(f":{down.port}", f":{gate.port}")
        contacts: Callable[[], object] = (lambda: gate.accepted) if fault == "refused" else down.stats
        deployment = routes(kind, entity, event_type)
        connections = {"DOWN": connection, "GOOD": healthy.connection_string()}
        with deployed_app(deployment, connections, azurite=azurite, tmp_path=tmp_path, monkeypatch=monkeypatch) as c:
            run(worker_batch(batches[0]))  # both up: the down endpoint's connection is open when it goes down
            assert amqp_order(down, entity) == ingress_order(batches[:1])

            if fault == "refused":
                gate.set(Mode.RESET)
                gate.set(Mode.REFUSE)
            else:
                down.black_hole("connect")
            tried = []
            for n in range(1, OUTAGE_BATCHES + 1):
                before = contacts()
                run(worker_batch(batches[n]))
                tried.append(contacts() != before)
                # The healthy endpoint has everything so far, in order, while the other is down.
                assert amqp_order(healthy, "good-hub") == ingress_order(batches[: n + 1])
                assert not stored_letters(c)
                redeliver(None)  # the timer: its probe of the down endpoint fails, everything stays parked
                assert len(stored_parked(c)) == n * BATCH
            # The first outage batch spent its tries on the endpoint; the later ones parked without one.
            assert tried == [True] + [False] * (OUTAGE_BATCHES - 1)
            assert amqp_order(down, entity) == ingress_order(batches[:1])

            gate.set(Mode.FORWARD)
            down.reset_faults()
            redeliver(None)
            assert not stored_parked(c)
            run(worker_batch(batches[-1]))  # delivered live again
            assert amqp_order(down, entity) == ingress_order(batches)
            assert amqp_order(healthy, "good-hub") == ingress_order(batches)
            assert not stored_letters(c) and not stored_parked(c)


def test_an_event_grid_topic_answering_500_for_batches_gets_every_sensor_in_order_once_it_recovers(  # noqa: PLR0917
    functions: dict[str, Any],
    healthy: AmqpPeer,
    grid: EventGridReceiver,
    azurite: Azurite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quick_budgets(monkeypatch)
    healthy.clear()
    run = functions["route_twins"].get_user_function()
    redeliver = functions["redeliver_parked"].get_user_function()
    batches = [sensors(n) for n in range(OUTAGE_BATCHES + 2)]
    deployment = routes("EventGrid", grid.endpoint, "SensorChange")
    connections = {"DOWN": grid.key, "GOOD": healthy.connection_string()}
    with deployed_app(deployment, connections, azurite=azurite, tmp_path=tmp_path, monkeypatch=monkeypatch) as c:
        run(worker_batch(batches[0]))
        assert grid_order(grid) == ingress_order(batches[:1])

        grid.fail_next(500, times=1_000_000)  # until reset
        tried = []
        for n in range(1, OUTAGE_BATCHES + 1):
            before = len(grid.requests())
            run(worker_batch(batches[n]))
            tried.append(len(grid.requests()) != before)
            assert amqp_order(healthy, "good-hub") == ingress_order(batches[: n + 1])
            assert not stored_letters(c)
            redeliver(None)
            assert len(stored_parked(c)) == n * BATCH
        assert tried == [True] + [False] * (OUTAGE_BATCHES - 1)
        assert {r.status for r in grid.requests()[1:]} == {500}

        grid.reset_faults()
        redeliver(None)
        assert not stored_parked(c)
        run(worker_batch(batches[-1]))
        assert grid_order(grid) == ingress_order(batches)
        assert amqp_order(healthy, "good-hub") == ingress_order(batches)
        assert not stored_letters(c) and not stored_parked(c)
