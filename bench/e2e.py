"""End to end: worker-shaped batches through function_app's own functions, delivered by the production
senders (`routing.deliver.pool.SenderPool`) to the local AMQP 1.0 peer and the Event Grid receiver.

The router is built by `routing.app.build_router` from app settings as deployed (`ROUTES_FILE`,
connections in settings, `ROUTER_OUTPUT_DIR` unset); only its dead-letter store is swapped for one in
memory after it is built, and its parking and breaker (Blob too) switched off (Blob Storage would need
Azurite, and the corpus has no dead letters and no outage anyway).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.corpus import Batch
from bench.routes import AMQP_SETTING, GRID_SETTING, write_routes
from bench.stages import MemoryDeadLetters
from bench.timing import percentile
from routing import app as wiring
from routing.deliver.pool import SenderPool
from routing.pipeline import Router
from tests.peers import AmqpPeer, EventGridReceiver

Function = Callable[[list[Any]], None]


@dataclass(frozen=True, slots=True)
class Deployment:
    functions: dict[str, Function]
    router: Router
    peer: AmqpPeer
    grid: EventGridReceiver


_functions: dict[str, Function] | None = None


def _app_functions() -> dict[str, Function]:
    """function_app's functions by name; the library allows `get_functions()` once per process."""
    global _functions
    if _functions is None:
        import function_app  # noqa: PLC0415 - importing it indexes the app

        _functions = {str(f.get_function_name()): f.get_user_function() for f in function_app.app.get_functions()}
    return _functions


@contextmanager
def deployed(endpoints: int) -> Iterator[Deployment]:
    """The function app wired to local peers, with `endpoints` endpoints; settings restored afterwards."""
    saved = dict(os.environ)
    with (
        AmqpPeer(partition_count=4) as peer,
        EventGridReceiver() as grid,
        tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp,
    ):
        routes = write_routes(Path(tmp) / "routes.json", endpoints, grid_url=grid.endpoint)
        for name in ("ROUTER_OUTPUT_DIR", "ROUTES_STORAGE"):
            os.environ.pop(name, None)
        os.environ.update(
            {
                "ROUTES_FILE": str(routes),
                # Never contacted: the dead-letter store is replaced below, before any batch.
                "DEADLETTER_STORAGE": "UseDevelopmentStorage=true",
                AMQP_SETTING: peer.connection_string(),
                GRID_SETTING: grid.key,
            }
        )
        wiring.reset()
        router: Router | None = None
        try:
            router = wiring.get_router()
            router.dead_letters = MemoryDeadLetters()
            # Parking and health live beside the dead letters (Blob): off here, as nothing fails in this
            # stage; bench/outage.py measures them against Azurite.
            router.parking = None
            router.breaker = None
            yield Deployment(_app_functions(), router, peer, grid)
        finally:
            if router is not None and isinstance(router.senders, SenderPool):
                router.senders.close()
            wiring.reset()
            os.environ.clear()
            os.environ.update(saved)


FUNCTION_FOR = {"telemetry": "route_telemetry", "twins": "route_twins"}


def invoke(deployment: Deployment, batches: Sequence[Batch]) -> list[float]:
    """Each batch through its function; seconds per batch. Decoding (the worker's work) is done first."""
    decoded = [(FUNCTION_FOR[b.source], b.worker()) for b in batches]
    latencies = []
    for name, events in decoded:
        function = deployment.functions[name]
        started = time.perf_counter()
        function(events)
        latencies.append(time.perf_counter() - started)
    return latencies


@dataclass(frozen=True, slots=True)
class EndToEnd:
    messages: int
    seconds: float
    p50: float
    p99: float
    batches: int
    connections_after_warmup: int
    connections_at_end: int
    invocations: int
    delivered_amqp: int
    grid_requests: int
    dead_letters: int

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def micros(self) -> float:
        return self.seconds / self.messages * 1e6 if self.messages else 0.0


def run_corpus(deployment: Deployment, batches: Sequence[Batch], *, duration: float) -> EndToEnd:
    """Warm up (first batch of each hub opens the connections), then batches until `duration` has passed."""
    warm = [next(b for b in batches if b.source == source) for source in FUNCTION_FOR]
    invoke(deployment, warm)
    connections = deployment.peer.stats().connections
    latencies: list[float] = []
    messages = 0
    started = time.perf_counter()
    for batch in batches:
        latencies.extend(invoke(deployment, [batch]))
        messages += len(batch.events)
        if time.perf_counter() - started > duration and len(latencies) >= 10:
            break
    stats = deployment.peer.stats()
    letters = deployment.router.dead_letters
    return EndToEnd(
        messages=messages,
        seconds=sum(latencies),
        p50=percentile(latencies, 0.5),
        p99=percentile(latencies, 0.99),
        batches=len(latencies),
        connections_after_warmup=connections,
        connections_at_end=stats.connections,
        invocations=len(latencies) + len(warm),
        delivered_amqp=len(deployment.peer.received()),
        grid_requests=len(deployment.grid.requests()),
        dead_letters=len(letters.letters) if isinstance(letters, MemoryDeadLetters) else -1,
    )


def device_latency(deployment: Deployment, make: Callable[[int], Batch], *, repeats: int) -> tuple[float, float]:
    """Median and best seconds per batch over `repeats` fresh batches from `make(i)`."""
    invoke(deployment, [make(-1)])  # warm
    latencies = invoke(deployment, [make(i) for i in range(repeats)])
    return percentile(latencies, 0.5), min(latencies)
