"""The SDKs' transports of routing/deliver/transports.py: each AMQP message is encoded once as it joins a batch,
and what arrives is what the SDKs' own double-encoding path sends; a link opens without the SDKs' 50 ms sleep
per handshake frame. Through function_app's functions, the unmodified SDKs and the local AMQP peer; the same
batches routed with the transports and with the SDKs' own, compared message by message."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.eventhub._transport._pyamqp_transport import PyamqpTransport as EventHubsOwn
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport as ServiceBusOwn

from routing.deliver import transports
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


def the_sdks_own(patched: pytest.MonkeyPatch) -> None:
    """The senders made from now on use the SDKs' own transports."""
    patched.setattr("routing.deliver.eventhubs.EventHubsTransport", EventHubsOwn)
    patched.setattr("routing.deliver.servicebus.ServiceBusTransport", ServiceBusOwn)


def test_what_arrives_is_what_the_sdks_own_path_sends_and_each_message_is_encoded_once(
    functions: dict[str, Any], peer: AmqpPeer, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = transports.Stats(transports.stats.hits, transports.stats.misses)
    once = route(functions, peer, azurite, tmp_path / "once", monkeypatch)
    hits, misses = transports.stats.hits - before.hits, transports.stats.misses - before.misses
    assert len(once["hub"]) == 60 and len(once["queue"]) == 60
    # Every message added to a batch reused its size's encoding. If this fails after an SDK upgrade, the SDK
    # no longer measures then appends the same message: check whether it still encodes twice, and drop the
    # adapter if it does not (it stays correct either way, only slower).
    assert misses == 0 and hits >= 120, (hits, misses)

    with monkeypatch.context() as patched:
        the_sdks_own(patched)
        sdk = route(functions, peer, azurite, tmp_path / "sdk", monkeypatch)
    assert transports.stats.hits - before.hits == hits  # the SDK's path did not go through the adapter

    for entity in ("hub", "queue"):
        key = (lambda m: (m.partition_id, str(m.message_id))) if entity == "hub" else (lambda m: str(m.message_id))
        assert sorted(once[entity], key=key) == sorted(sdk[entity], key=key), entity


def sdk_polls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Where the SDKs sleep their 50 ms between polls of `client_ready()`, from now on."""
    polls: list[str] = []
    sleep = time.sleep

    def counted(seconds: float) -> None:
        caller = sys._getframe(1).f_code
        if seconds == 0.05 and "/azure/" in caller.co_filename:
            polls.append(f"{Path(caller.co_filename).name}:{caller.co_name}")
        sleep(seconds)

    monkeypatch.setattr(time, "sleep", counted)
    return polls


def test_a_link_opens_without_sleeping_between_the_handshake_s_frames(
    functions: dict[str, Any], peer: AmqpPeer, azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    polls = sdk_polls(monkeypatch)
    prompt = transports.stats.prompt
    routed = route(functions, peer, azurite, tmp_path / "prompt", monkeypatch)
    assert len(routed["hub"]) == 60 and len(routed["queue"]) == 60
    # The Event Hubs producers (one per partition), their partition-ids request and the Service Bus sender
    # were made here; a frame slower than the socket timeout (0.2 s) may still cost a poll, not one a frame.
    assert transports.stats.prompt - prompt >= 3
    assert len(polls) <= 2, polls

    # With the SDKs' own transports the same routing sleeps once per frame of each handshake: what the
    # count above would be if the clients were not made promptly.
    polls.clear()
    with monkeypatch.context() as patched:
        the_sdks_own(patched)
        route(functions, peer, azurite, tmp_path / "sdk", monkeypatch)
    assert len(polls) >= 9 * 2, polls
