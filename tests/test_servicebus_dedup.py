"""Service Bus duplicate detection loses nothing, end to end: function_app's functions on worker-shaped
input, through the unmodified Service Bus SDK, to the local AMQP peer behaving as entities with
duplicate detection (and partitioning) do. Each shape of an event an entity gets has its own message id,
the same on every redelivery and replay; a partitioned entity with duplicate detection gets one message
per send, nothing dead-lettered."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from routing.deliver.pool import SenderPool
from routing.deliver.senders import RetryOptions
from routing.model import EnvelopeFormat, shape_seed, shaped_message_id
from routing.replay import Letter, replay
from routing.routes.table import parse_routes
from tests.azurite import Azurite
from tests.conftest import WorkerEvent, sensor_data, worker_batch
from tests.deployment import deployed_app, stored_letters
from tests.peers.amqp import NOT_ALLOWED, AmqpPeer

ORDERS, LEDGER = "orders", "ledger"
QUICK = RetryOptions(attempts=2, backoff_initial=0.01, backoff_max=0.05)


def bus(name: str, path: str, **shape: Any) -> dict[str, Any]:
    return {"name": name, "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "BUS", "path": path,
            **shape}  # fmt: skip


# Four shapes of each event on one entity: every copy must arrive.
SHAPES = [
    bus("plain", ORDERS),
    bus("cloud", ORDERS, format="CloudEventSchemaV1_0"),
    bus("keyed", ORDERS, orderKey="{$body.Type}/{$body.Id}"),
    bus("enriched", ORDERS, enrichments={"site": "north"}),
]


@pytest.fixture(scope="module")
def amqp() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities={ORDERS, LEDGER}) as peer:
        yield peer


@pytest.fixture
def peer(amqp: AmqpPeer) -> Iterator[AmqpPeer]:
    amqp.clear()
    amqp.detect_duplicates({ORDERS, LEDGER})
    yield amqp
    amqp.clear()


def deploy(
    routes: list[dict[str, Any]], peer: AmqpPeer, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    monkeypatch.setattr("routing.app.SenderPool", lambda: SenderPool(retry=QUICK))
    return deployed_app(
        routes, {"BUS": peer.connection_string()}, azurite=azurite, tmp_path=tmp_path, monkeypatch=monkeypatch
    )


def sensor_events(count: int, sensors: int, *, start: int = 0) -> list[WorkerEvent]:
    return [
        WorkerEvent(
            body=json.dumps(sensor_data(f"s-{i % sensors}", str(i))).encode(),
            properties={"Type": "SensorChange"},
            sequence_number=i,
        )
        for i in range(start, start + count)
    ]


def dead_letters(letters: ContainerClient) -> dict[str, dict[str, Any]]:
    return stored_letters(letters)


def shape_of(message: Any) -> str:
    body = json.loads(message.body)
    if "specversion" in body:
        return "cloud"
    if message.application_properties.get("site") == "north":
        return "enriched"
    return "keyed" if "/" in str(message.session_id) else "plain"


def test_the_default_shape_keeps_the_event_id_and_other_shapes_get_stable_uuid5s() -> None:
    namespace = uuid.UUID(bytes=(shape_seed(EnvelopeFormat.CLOUD_EVENTS, None, ()) or b"")[:16])
    event_id = str(uuid.uuid4())
    assert shape_seed(EnvelopeFormat.EVENT_GRID, None, ()) is None
    assert shaped_message_id(event_id, None) == event_id
    cloud = shaped_message_id(event_id, shape_seed(EnvelopeFormat.CLOUD_EVENTS, None, ()))
    assert cloud == str(uuid.uuid5(namespace, '["CloudEventSchemaV1_0",null,[]]\n' + event_id))
    table = parse_routes([
        *SHAPES,
        bus("enriched-twice", "elsewhere", enrichments={"b": 2, "a": "x"}),
        bus("enriched-twice-reordered", "elsewhere-too", enrichments={"a": "x", "b": 2}),
    ])  # fmt: skip
    ids = [shaped_message_id(event_id, e.id_seed) for e in table.endpoints]
    assert ids[0] == event_id
    assert len(set(ids[:5])) == 5, "every shape its own id"
    assert ids[4] == ids[5], "the same shape (enrichments in any order) keeps the same id"


def test_every_shape_of_an_event_on_one_deduplicating_entity_arrives_and_a_redelivery_is_dropped(
    functions: dict[str, Any], peer: AmqpPeer, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = sensor_events(6, 3)
    with deploy(SHAPES, peer, azurite, tmp_path, monkeypatch) as letters:
        run = functions["route_twins"].get_user_function()
        run(worker_batch(events))
        first = peer.received(ORDERS)
        # The same batch again, as after a failed checkpoint: the same ids, so duplicate detection drops it.
        run(worker_batch(events))
        assert not dead_letters(letters)

    by_shape: dict[str, list[str]] = {}
    for message in first:
        by_shape.setdefault(shape_of(message), []).append(str(message.message_id))
    assert {shape: len(ids) for shape, ids in by_shape.items()} == {"plain": 6, "cloud": 6, "keyed": 6, "enriched": 6}
    assert len({m.message_id for m in first}) == 24
    assert peer.received(ORDERS) == first, "the redelivery added nothing"
    assert sorted(str(mid) for _entity, mid in peer.stats().duplicates_dropped) == sorted(
        str(m.message_id) for m in first
    )


def test_a_replay_sends_each_shape_with_the_id_it_had(
    functions: dict[str, Any], peer: AmqpPeer, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = sensor_events(4, 2)
    run = functions["route_twins"].get_user_function()
    with deploy(SHAPES, peer, azurite, tmp_path, monkeypatch) as letters:
        peer.set_entities({LEDGER})  # the queue is gone: every message is dead-lettered
        try:
            run(worker_batch(events))
        finally:
            peer.set_entities({ORDERS, LEDGER})
        stored = dead_letters(letters)
        assert len(stored) == 16 and not peer.received(ORDERS)
        senders = SenderPool(retry=QUICK)
        try:
            report = replay(
                [Letter(name=name, record=record) for name, record in stored.items()],
                table=parse_routes(SHAPES),
                senders=senders,
                delete=letters.delete_blob,
            )
        finally:
            senders.close()
        assert len(report.delivered) == 16 and not report.failed and not report.kept
        replayed = peer.received(ORDERS)
        # Live delivery of the same events now: ids equal to the replayed ones, so all are dropped.
        run(worker_batch(events))

    assert sorted(str(m.message_id) for m in replayed) == sorted(str(r["id"]) for r in stored.values())
    assert len({m.message_id for m in replayed}) == 16
    assert peer.received(ORDERS) == replayed
    assert len(peer.stats().duplicates_dropped) == 16


def test_a_partitioned_deduplicating_entity_gets_one_message_per_send_in_key_order_and_no_dead_letter(
    functions: dict[str, Any], peer: AmqpPeer, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer.partition_entities({LEDGER})
    with deploy([bus("ledger", LEDGER)], peer, azurite, tmp_path, monkeypatch) as letters:
        run = functions["route_twins"].get_user_function()
        run(worker_batch(sensor_events(9, 3)))
        run(worker_batch(sensor_events(4, 2, start=20)))
        assert not dead_letters(letters)

    assert peer.stats().deliveries_rejected == (NOT_ALLOWED,), "refused once, then one message per send"
    assert [count for _partition, count in peer.transfers(LEDGER)] == [1] * 13
    sessions: dict[str, list[str]] = {}
    for message in peer.received(LEDGER):
        sessions.setdefault(str(message.session_id), []).append(json.loads(message.body)["data"]["Value"])
    assert sessions == {"s-0": ["0", "3", "6", "20", "22"], "s-1": ["1", "4", "7", "21", "23"], "s-2": ["2", "5", "8"]}
