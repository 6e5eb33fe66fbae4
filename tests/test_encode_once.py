"""Each AMQP message is encoded once as it joins a batch (routing/deliver/encode_once.py), and what arrives is
what the SDKs' own double-encoding path sends: function_app's functions, the unmodified SDKs, the local AMQP
peer; the same batches routed with the adapter and without it, compared message by message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from routing.deliver import encode_once
from tests.azurite import Azurite
from tests.conftest import WorkerEvent, sensor_data, worker_batch
from tests.deployment import deployed_app
from tests.peers.amqp import AmqpPeer, ReceivedMessage

ROUTES = [
    {"name": "hub", "type": "EventHub", "eventTypes": ["SensorChange"], "connection": "AMQP", "path": "hub",
     "enrichments": {"site": "plant-7", "reading": "$body.Value"}},
    {"name": "queue", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "AMQP", "path": "queue",
     "enrichments": {"site": "plant-7"}},
]  # fmt: skip


@pytest.fixture
def peer() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities={"hub", "queue"}, partition_count=4) as amqp:
        yield amqp


def sensors(count: int) -> list[WorkerEvent]:
    # Several sensors (keys, so partitions and sessions), bodies of different sizes (one byte of length or four).
    return [
        WorkerEvent(
            body=json.dumps({**sensor_data(f"s-{i % 7}", str(i)), "Note": "x" * (i * 37 % 400)}).encode(),
            properties={"Type": "SensorChange"},
            sequence_number=i,
        )
        for i in range(count)
    ]


def route(
    functions: dict[str, Any], peer: AmqpPeer, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, list[ReceivedMessage]]:
    peer.clear()
    tmp_path.mkdir()
    connections = {"AMQP": peer.connection_string()}
    with deployed_app(ROUTES, connections, azurite=azurite, tmp_path=tmp_path, monkeypatch=monkeypatch):
        functions["route_twins"].get_user_function()(worker_batch(sensors(60)))
    return {entity: peer.received(entity) for entity in ("hub", "queue")}


def test_what_arrives_is_what_the_sdks_own_path_sends_and_each_message_is_encoded_once(
    functions: dict[str, Any], peer: AmqpPeer, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = encode_once.Stats(encode_once.stats.hits, encode_once.stats.misses)
    once = route(functions, peer, azurite, tmp_path / "once", monkeypatch)
    hits, misses = encode_once.stats.hits - before.hits, encode_once.stats.misses - before.misses
    assert len(once["hub"]) == 60 and len(once["queue"]) == 60
    # Every message added to a batch reused its size's encoding. If this fails after an SDK upgrade, the SDK
    # no longer measures then appends the same message: check whether it still encodes twice, and drop the
    # adapter if it does not (it stays correct either way, only slower).
    assert misses == 0 and hits >= 120, (hits, misses)

    with monkeypatch.context() as patched:
        patched.setattr("routing.deliver.eventhubs.encoding_once", lambda batch, _transport: batch)
        patched.setattr("routing.deliver.servicebus.encoding_once", lambda batch, _transport: batch)
        sdk = route(functions, peer, azurite, tmp_path / "sdk", monkeypatch)
    assert encode_once.stats.hits - before.hits == hits  # the SDK's path did not go through the adapter

    for entity in ("hub", "queue"):
        key = (lambda m: (m.partition_id, str(m.message_id))) if entity == "hub" else (lambda m: str(m.message_id))
        assert sorted(once[entity], key=key) == sorted(sdk[entity], key=key), entity
