"""End to end: worker-shaped batches through function_app's own functions, delivered by the production
senders (`routing.deliver.pool.SenderPool`) to the local AMQP 1.0 peer and the Event Grid receiver,
which run in a child process (`bench.peers`) and are reached over loopback; and, in the same rounds,
the script baseline (`bench.script`) sending exactly what the router sent, with the same SDKs.

The router is built by `routing.app.build_router` from app settings as deployed (`ROUTES_FILE`,
connections in settings, `ROUTER_OUTPUT_DIR` unset); only its dead-letter store is swapped for one in
memory after it is built, and its parking and breaker (Blob too) switched off (Blob Storage would need
Azurite, and the corpus has no dead letters and no outage anyway).

Each comparison runs its rounds in turn, router then script, then script then router, ...: each side
passes over the whole corpus once per round (the router one function call per trigger batch, the worker's
decoding done beforehand, untimed), and the peers forget what arrived between passes. Every pass is
checked against the router's first: the same messages to the same destinations (`Digest`), or the
comparison is void.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.corpus import Batch
from bench.decode import fast_enqueued_times
from bench.peers import Counts, Digest, PeersProcess
from bench.routes import AMQP_SETTING, GRID_SETTING, route_table, write_routes
from bench.script import Script, Send, precompute
from bench.stages import MemoryDeadLetters, planned
from bench.timing import Ratios, median, paired, percentile, rotated
from routing import app as wiring
from routing.deliver.pool import SenderPool
from routing.pipeline import Router
from routing.routes.table import RouteTable

Function = Callable[[list[Any]], None]
ROUTER, SCRIPT = "router", "script"


@dataclass(frozen=True, slots=True)
class Deployment:
    functions: dict[str, Function]
    router: Router
    peers: PeersProcess
    # The deployed routes file as a table, for the script's plan.
    table: RouteTable


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
    """The function app wired to the peers' process, with `endpoints` endpoints; settings restored afterwards."""
    saved = dict(os.environ)
    with PeersProcess() as peers, tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        assert peers.addresses is not None
        grid_url = peers.addresses.grid_url
        routes = write_routes(Path(tmp) / "routes.json", endpoints, grid_url=grid_url)
        for name in ("ROUTER_OUTPUT_DIR", "ROUTES_STORAGE"):
            os.environ.pop(name, None)
        os.environ.update(
            {
                "ROUTES_FILE": str(routes),
                # Never contacted: the dead-letter store is replaced below, before any batch.
                "DEADLETTER_STORAGE": "UseDevelopmentStorage=true",
                AMQP_SETTING: peers.addresses.amqp_connection,
                GRID_SETTING: peers.addresses.grid_key,
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
            yield Deployment(_app_functions(), router, peers, route_table(endpoints, grid_url=grid_url))
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
class Pass:
    """One side's pass over a corpus: wall and CPU seconds, and what the peers received."""

    seconds: float
    cpu: float
    counts: Counts
    digest: Digest
    latencies: tuple[float, ...] = ()  # the router's, per batch


@dataclass(frozen=True, slots=True)
class Comparison:
    """Router and script on one corpus, in paired rounds (order rotated)."""

    corpus: str
    messages: int
    batches: int
    router: tuple[Pass, ...]
    script: tuple[Pass, ...]
    same_messages: bool

    @property
    def throughput(self) -> Ratios:
        """Router events/s over script events/s, per round."""
        return paired([p.seconds for p in self.router], [p.seconds for p in self.script])

    @property
    def cpu(self) -> Ratios:
        """Router events per CPU second over the script's, per round (above 1: the router uses less CPU)."""
        return paired([p.cpu for p in self.router], [p.cpu for p in self.script])

    def per_second(self, side: str) -> list[float]:
        passes = self.router if side == ROUTER else self.script
        return [self.messages / p.seconds for p in passes]

    def cpu_micros(self, side: str) -> list[float]:
        passes = self.router if side == ROUTER else self.script
        return [p.cpu / self.messages * 1e6 for p in passes]

    @property
    def latencies(self) -> list[float]:
        return [s for p in self.router for s in p.latencies]


class Paired:
    """The router and the script over the same peers: passes over corpora, each checked against the router's
    first pass over it."""

    def __init__(self, deployment: Deployment, script: Script) -> None:
        self.deployment = deployment
        self.script = script
        self._reference: dict[str, Digest] = {}
        self._sends: dict[str, list[list[Send]]] = {}

    def prepare(self, name: str, batches: Sequence[Batch]) -> None:
        """The script's sends for `batches`, from the router's plan for them, and its clients for them."""
        self._sends[name] = precompute(planned(self.deployment.table, [b.ingress() for b in batches]))
        self.script.open(self._sends[name])

    def _router_pass(self, batches: Sequence[Batch]) -> Pass:
        # Untimed, and fresh each pass (the events cache their metadata); with the fast enqueued times, which
        # decode every event alike (bench/decode.py) in a twentieth of the time.
        with fast_enqueued_times():
            decoded = [(self.deployment.functions[FUNCTION_FOR[b.source]], b.worker()) for b in batches]
        self.deployment.peers.forget()
        gc.collect()
        latencies = []
        c0, t0 = time.process_time(), time.perf_counter()
        for function, events in decoded:
            started = time.perf_counter()
            function(events)
            latencies.append(time.perf_counter() - started)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        return Pass(seconds, cpu, self.deployment.peers.counts(), self.deployment.peers.digest(), tuple(latencies))

    def _script_pass(self, name: str) -> Pass:
        sends = self._sends[name]
        self.deployment.peers.forget()
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        self.script.run(sends)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        return Pass(seconds, cpu, self.deployment.peers.counts(), self.deployment.peers.digest())

    def warm(self, name: str, batches: Sequence[Batch]) -> bool:
        """One pass of each side, untimed: the router's is the reference; True if the script's matches it."""
        self._reference[name] = self._router_pass(batches).digest
        return self._script_pass(name).digest == self._reference[name]

    def compare(self, name: str, batches: Sequence[Batch], *, rounds: int) -> Comparison:
        passes: dict[str, list[Pass]] = {ROUTER: [], SCRIPT: []}
        for r in range(rounds):
            for side in rotated([ROUTER, SCRIPT], r):
                passes[side].append(self._router_pass(batches) if side == ROUTER else self._script_pass(name))
        reference = self._reference[name]
        same = all(p.digest == reference for side in passes.values() for p in side)
        return Comparison(
            corpus=name,
            messages=sum(len(b.events) for b in batches),
            batches=len(batches),
            router=tuple(passes[ROUTER]),
            script=tuple(passes[SCRIPT]),
            same_messages=same,
        )


def summary(c: Comparison) -> dict[str, Any]:
    """A comparison's figures for the results (and `-o json`)."""
    router_rate, script_rate = c.per_second(ROUTER), c.per_second(SCRIPT)
    last_router, last_script = c.router[-1].counts, c.script[-1].counts
    return {
        "corpus": c.corpus,
        "messages": c.messages,
        "batches": c.batches,
        "rounds": len(c.router),
        "router_events_per_second": median(router_rate),
        "script_events_per_second": median(script_rate),
        "router_cpu_us_per_event": median(c.cpu_micros(ROUTER)),
        "script_cpu_us_per_event": median(c.cpu_micros(SCRIPT)),
        "router_cpu_us_rounds": c.cpu_micros(ROUTER),
        "throughput_ratio": {"median": c.throughput.median, "low": c.throughput.low, "high": c.throughput.high},
        "throughput_ratios": list(c.throughput.values),
        "cpu_ratio": {"median": c.cpu.median, "low": c.cpu.low, "high": c.cpu.high},
        "cpu_ratios": list(c.cpu.values),
        "p50_ms": percentile(c.latencies, 0.5) * 1e3,
        "p99_ms": percentile(c.latencies, 0.99) * 1e3,
        "router_sends": {"amqp_transfers": last_router.amqp_transfers, "grid_requests": last_router.grid_requests},
        "script_sends": {"amqp_transfers": last_script.amqp_transfers, "grid_requests": last_script.grid_requests},
        "amqp_messages": last_router.amqp_messages,
        "grid_events": last_router.grid_events,
        "same_messages": c.same_messages,
    }


def device_latency(deployment: Deployment, make: Callable[[int], Batch], *, repeats: int) -> tuple[float, float]:
    """Median and best seconds per batch over `repeats` fresh batches from `make(i)`."""
    invoke(deployment, [make(-1)])  # warm
    latencies = invoke(deployment, [make(i) for i in range(repeats)])
    deployment.peers.forget()
    return percentile(latencies, 0.5), min(latencies)
