"""A connection reset under a live client: the unmodified SDKs' senders, through function_app, against the local
AMQP peer behind a loopback proxy that resets every open connection (a real RST).

The batch after the reset is delivered whole, in order, by the try that reconnects, which goes at once: a
lost connection is retried without a backoff the first time (opening a connection is its own wait). And no
Service Bus sender runs the SDK's keep-alive thread, which closing a link after a lost connection joins (up to
a second per fault, azure-sdk-for-python#36212). Timings belong in bench/outage.py (the fault mix).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from routing.deliver.pool import SenderPool
from routing.deliver.senders import RetryOptions
from tests.azurite import Azurite
from tests.blackhole import Mode, Proxy, proxy
from tests.conftest import WorkerEvent, sensor_data, worker_batch
from tests.deployment import deployed_app, stored_letters, stored_parked
from tests.peers.amqp import AmqpPeer

# A backoff long enough that a retry which waited it would say so in its log line.
RETRY = RetryOptions(attempts=3, backoff_initial=0.5, backoff_max=1.0, timeout=5.0, budget=15.0)


@pytest.fixture
def peer() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities={"hub", "queue"}) as amqp:
        yield amqp


@pytest.fixture
def gate(peer: AmqpPeer) -> Iterator[Proxy]:
    with proxy(peer.port) as opened:
        yield opened


def sensors(start: int, count: int) -> list[WorkerEvent]:
    return [
        WorkerEvent(
            body=json.dumps(sensor_data("s-1", str(i))).encode(),
            properties={"Type": "SensorChange"},
            sequence_number=i,
        )
        for i in range(start, start + count)
    ]


@pytest.mark.parametrize(("kind", "path"), [("EventHub", "hub"), ("ServiceBus", "queue")])
def test_a_reset_connection_is_retried_at_once_and_the_batch_arrives_whole_in_order(  # noqa: PLR0917
    functions: dict[str, Any],
    peer: AmqpPeer,
    gate: Proxy,
    azurite: Azurite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    path: str,
) -> None:
    monkeypatch.setattr("routing.app.SenderPool", lambda: SenderPool(retry=RETRY))
    routes = [{"name": "out", "type": kind, "eventTypes": ["SensorChange"], "connection": "OUT", "path": path}]
    through_gate = peer.connection_string().replace(f":{peer.port}", f":{gate.port}")
    run = functions["route_twins"].get_user_function()
    app = deployed_app(routes, {"OUT": through_gate}, azurite=azurite, tmp_path=tmp_path, monkeypatch=monkeypatch)
    with app as letters:
        run(worker_batch(sensors(0, 3)))  # the client connects
        assert len(peer.received(path)) == 3
        if kind == "ServiceBus":
            keep_alive = [t.name for t in threading.enumerate() if t.name.endswith("(_keep_alive)")]
            assert not keep_alive, f"a Service Bus sender runs the SDK's keep-alive thread: {keep_alive}"

        gate.set(Mode.RESET)  # every open connection gets an RST; new ones are forwarded again
        gate.set(Mode.FORWARD)
        with caplog.at_level(logging.WARNING, logger="routing.deliver.senders"):
            run(worker_batch(sensors(3, 4)))

        values = [json.loads(m.body)["data"]["Value"] for m in peer.received(path)]
        assert values == [str(i) for i in range(7)], values
        retries = [r.getMessage() for r in caplog.records if "retrying a batch" in r.getMessage()]
        assert retries, "the reset was not seen: nothing was retried"
        assert all(", at once, after " in line for line in retries), retries
        assert all("\n" not in line for line in retries), retries  # the SDK's error in one line
        assert not stored_letters(letters) and not stored_parked(letters)
