"""Endpoint outages end to end (issue #17): `python -m bench.outage`, and a stage of `python -m bench`.

function_app's own functions on worker-shaped batches, the production senders (`SenderPool`) and
parking (routing/parking.py, routing/health.py) in Blob Storage: a real Azurite started for the stage,
the AMQP 1.0 peer and the Event Grid receiver of tests/peers in this process (they share its GIL; the
end-to-end stage, bench/e2e.py, runs them in a child process), each AMQP endpoint reached through a
loopback proxy (tests/blackhole.py) that can refuse, black-hole or reset its connections. The breaker's
first probe is due at once (`PROBE_INITIAL_SECONDS` 0; in production the first redelivery probe comes
10 s after the outage opens the circuit, and the timer runs every 10 s), so drain times are those of
the redelivery run itself.

Three measurements, each in one run:

- **outage**: telemetry to two event hubs, `steady` and `flaky`. Batches with both up; then `flaky`
  refused (every connection reset at once), then black-holed (connections accepted, nothing answered).
  Per batch: the invocation's time and the time `steady`'s send took, medians, as ratios to both-up;
  the first batch of each outage separately (it spends the tries and the send budget); then `flaky` back,
  the redelivery's drain time, and whether every device's messages reached `flaky` in ingress order.
- **finding**: the first finding of the issue, 2,000 events in 20 batches to an event hub and a Service
  Bus queue whose ports refuse connections, with the production retry budgets. Before parking: 2 min 47 s
  and 1,504 dead letters. Here: the time, dead letters and parked messages, then the drain once they are
  back.
- **fault mix**: six endpoints (bench/routes.py), the corpus in batches of 100; every 10th batch's AMQP
  connections reset mid-batch (once the peer has taken the batch's first send), every 7th Event Grid
  request answered 500. Throughput against the same batches with no faults, in paired rounds (clean and
  faults, the order rotated each round): the median and range of the per-round ratios.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from azure.storage.blob import ContainerClient

from bench import corpus as corpora
from bench.e2e import FUNCTION_FOR, _app_functions
from bench.routes import AMQP_SETTING, GRID_SETTING, route_dicts
from bench.timing import Ratios, percentile
from routing import app as wiring
from routing import health
from routing.deliver.pool import SenderPool
from routing.deliver.senders import KeyGroup, RetryOptions, Sender, SendReport
from routing.parking import PARKED_FOLDER, unpack
from routing.pipeline import Router
from routing.routes.table import Endpoint
from tests.azurite import Azurite, running_azurite
from tests.blackhole import Mode, Proxy, proxy
from tests.conftest import WorkerEvent, sensor_data
from tests.peers import AmqpPeer, EventGridReceiver

Log = Callable[[str], None]

OUTAGE_BATCHES = 10  # per phase of the outage measurement
OUTAGE_BATCH_SIZE = 100
OUTAGE_DEVICES = 200
# Short tries in the outage measurement, so that a black-holed first batch ends in seconds (production:
# 10 s per try, 60 s per send); the number of tries and their backoff are the production ones.
OUTAGE_RETRY = RetryOptions(timeout=2.0, budget=6.0)
FINDING_EVENTS = 2_000
FINDING_BATCHES = 20
FINDING_SENSORS = 100
RESET_EVERY = 10  # batches
# The fault mix runs over the corpus's first messages: each reset can stall a batch for a try's timeout.
FAULT_MIX_MESSAGES = 2_000
GRID_500_EVERY = 7  # Event Grid requests
DRAIN_RUNS = 5  # redelivery runs at most, to drain what is parked


class TimedSenders:
    """The router's senders, each endpoint's sends timed (what a healthy endpoint's batches take)."""

    def __init__(self, pool: SenderPool) -> None:
        self.pool = pool
        self.seconds: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def __call__(self, endpoint: Endpoint) -> Sender:
        return _Timed(self, self.pool(endpoint))

    def record(self, endpoint: str, seconds: float) -> None:
        with self._lock:
            self.seconds.setdefault(endpoint, []).append(seconds)

    def take(self, endpoint: str) -> list[float]:
        with self._lock:
            return self.seconds.pop(endpoint, [])

    def close(self) -> None:
        self.pool.close()


@dataclass(frozen=True, slots=True)
class _Timed:
    owner: TimedSenders
    sender: Sender

    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        started = time.perf_counter()
        try:
            return self.sender.send(endpoint, groups)
        finally:
            self.owner.record(endpoint.name, time.perf_counter() - started)

    def close(self) -> None:
        self.sender.close()


@dataclass
class Deployment:
    """function_app deployed against the peers, Azurite holding its dead letters, parked messages and health."""

    functions: dict[str, Callable[..., None]]
    router: Router
    senders: TimedSenders
    container: ContainerClient

    def invoke(self, batch: corpora.Batch) -> float:
        """One batch through its function; seconds (the worker's decoding done first, untimed)."""
        events = batch.worker()
        function = self.functions[FUNCTION_FOR[batch.source]]
        started = time.perf_counter()
        function(events)
        return time.perf_counter() - started

    def parked(self) -> int:
        """Parked messages (records in `_parked/`)."""
        return sum(
            len(unpack(self.container.download_blob(b.name).readall())[1])
            for b in self.container.list_blobs(name_starts_with=f"{PARKED_FOLDER}/")
        )

    def dead_letters(self) -> int:
        return sum(1 for b in self.container.list_blobs() if not b.name.startswith(("_parked/", "_health/")))

    def drain(self) -> tuple[float, int]:
        """The redelivery timer function run until nothing is parked: seconds in its runs, and the runs."""
        seconds = 0.0
        for run in range(1, DRAIN_RUNS + 1):
            started = time.perf_counter()
            self.functions["redeliver_parked"](None)
            seconds += time.perf_counter() - started
            if not self.parked():
                return seconds, run
        return seconds, DRAIN_RUNS


@contextmanager
def _settings(values: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    for name in ("ROUTER_OUTPUT_DIR", "ROUTES_STORAGE"):
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _probes_at_once() -> Iterator[None]:
    """The redelivery may probe as soon as it runs (see the module)."""
    saved = health.PROBE_INITIAL_SECONDS
    health.PROBE_INITIAL_SECONDS = 0.0
    try:
        yield
    finally:
        health.PROBE_INITIAL_SECONDS = saved


@contextmanager
def deployed(
    azurite: Azurite, routes: list[dict[str, Any]], connections: Mapping[str, str], *, retry: RetryOptions
) -> Iterator[Deployment]:
    """The app settings for `routes`, a fresh dead-letter container, the router built from them (its
    sender pool with `retry`, timed); everything closed and restored afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-outage-") as tmp:
        path = Path(tmp) / "routes.json"
        path.write_bytes(orjson.dumps(routes))
        name = f"outage{uuid.uuid4().hex[:12]}"
        container = ContainerClient.from_connection_string(azurite.connection_string, name)
        container.create_container()
        settings = {
            "ROUTES_FILE": str(path),
            "DEADLETTER_STORAGE": azurite.connection_string,
            "DEADLETTER_CONTAINER": name,
            **connections,
        }
        with _settings(settings), _probes_at_once():
            wiring.reset()
            router = wiring.get_router()
            if isinstance(router.senders, SenderPool):
                router.senders.close()
            senders = TimedSenders(SenderPool(retry=retry))
            router.senders = senders
            try:
                yield Deployment(_app_functions(), router, senders, container)
            finally:
                senders.close()
                wiring.reset()
                with contextlib.suppress(Exception):
                    container.delete_container()


def via(gate: Proxy, peer: AmqpPeer) -> str:
    """The peer's connection string through the proxy."""
    return peer.connection_string().replace(f":{peer.port}", f":{gate.port}")


@dataclass
class Feed:
    """Consecutive batches of one ingress partition, and each key's sequence numbers in ingress order."""

    make: Callable[[random.Random, int], tuple[str, WorkerEvent]]
    source: str
    size: int
    seq: int = 0
    order: dict[str, list[int]] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(17))

    def next(self) -> corpora.Batch:
        events = []
        for _ in range(self.size):
            key, event = self.make(self.rng, self.seq)
            self.order.setdefault(key, []).append(self.seq)
            events.append(event)
            self.seq += 1
        return corpora.Batch(self.source, "0", tuple(events))


def _telemetry(rng: random.Random, seq: int) -> tuple[str, WorkerEvent]:
    device = corpora.device_name(rng.randrange(OUTAGE_DEVICES))
    return device, corpora.telemetry_event(rng, device, seq)


def _sensor(rng: random.Random, seq: int) -> tuple[str, WorkerEvent]:
    sensor = f"sensor-{rng.randrange(FINDING_SENSORS):03d}"
    body = json.dumps(sensor_data(sensor, str(seq))).encode()
    return sensor, WorkerEvent(body=body, properties={"Type": "SensorChange"}, sequence_number=seq, offset=seq)


def received_order(peer: AmqpPeer, entity: str) -> dict[str, list[int]]:
    """Per key, the sequence numbers `entity` received in arrival order, each message id once (its first
    arrival: what duplicate detection keeps). Telemetry is raw; a twin event's reading is its sequence."""
    seen: set[object] = set()
    order: dict[str, list[int]] = {}
    for message in peer.received(entity):
        if message.message_id in seen:
            continue
        seen.add(message.message_id)
        body = orjson.loads(message.body)
        if "data" in body:
            order.setdefault(str(body["data"]["Id"]), []).append(int(body["data"]["Value"]))
        else:
            order.setdefault(str(body["deviceId"]), []).append(int(body["messageId"]))
    return order


def _median_ms(values: Sequence[float]) -> float:
    return percentile(list(values), 0.5) * 1e3


def measure_outage(azurite: Azurite, log: Log) -> dict[str, Any]:
    routes = [
        {"name": "steady", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "STEADY",
         "path": "steady-hub"},
        {"name": "flaky", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "FLAKY",
         "path": "flaky-hub"},
    ]  # fmt: skip
    with (
        AmqpPeer(entities={"steady-hub"}, partition_count=4) as steady,
        AmqpPeer(entities={"flaky-hub"}, partition_count=4) as flaky,
        proxy(flaky.port) as gate,
    ):
        connections = {"STEADY": steady.connection_string(), "FLAKY": via(gate, flaky)}
        with deployed(azurite, routes, connections, retry=OUTAGE_RETRY) as app:
            feed = Feed(_telemetry, "telemetry", OUTAGE_BATCH_SIZE)
            for _ in range(2):  # warm-up: connections opened
                app.invoke(feed.next())
            app.senders.take("steady")
            log(f"outage: {OUTAGE_BATCHES} batches of {OUTAGE_BATCH_SIZE} with both endpoints up")
            clean = [app.invoke(feed.next()) for _ in range(OUTAGE_BATCHES)]
            out: dict[str, Any] = {
                "batches": OUTAGE_BATCHES,
                "batch_size": OUTAGE_BATCH_SIZE,
                "clean_invocation_ms": _median_ms(clean),
                "clean_steady_ms": _median_ms(app.senders.take("steady")),
                "phases": [],
            }
            for mode in (Mode.REFUSE, Mode.BLACK_HOLE):
                log(f"outage: flaky {mode.value}, {OUTAGE_BATCHES + 1} batches, then back and drained")
                if mode is Mode.REFUSE:
                    gate.set(Mode.RESET)  # the open connections too
                gate.set(mode)
                before = gate.accepted
                first = app.invoke(feed.next())
                app.senders.take("steady")
                tried_first = gate.accepted - before
                before = gate.accepted
                later = [app.invoke(feed.next()) for _ in range(OUTAGE_BATCHES)]
                steady_later = app.senders.take("steady")
                tried_later = gate.accepted - before
                parked = app.parked()
                gate.set(Mode.FORWARD)
                drain, runs = app.drain()
                in_order = received_order(flaky, "flaky-hub") == feed.order
                out["phases"].append(
                    {
                        "mode": mode.value,
                        "first_batch_s": first,
                        "connections_first_batch": tried_first,
                        "connections_later_batches": tried_later,
                        "invocation_ms": _median_ms(later),
                        "steady_ms": _median_ms(steady_later),
                        "invocation_ratio": _median_ms(later) / out["clean_invocation_ms"],
                        "steady_ratio": _median_ms(steady_later) / out["clean_steady_ms"],
                        "parked": parked,
                        "drain_s": drain,
                        "drain_runs": runs,
                        "in_order": in_order,
                        "steady_in_order": received_order(steady, "steady-hub") == feed.order,
                        "dead_letters": app.dead_letters(),
                        "parked_after": app.parked(),
                    }
                )
            return out


def measure_finding(azurite: Azurite, log: Log) -> dict[str, Any]:
    log(f"finding: {FINDING_EVENTS:,} events in {FINDING_BATCHES} batches to an event hub and a queue refusing")
    routes = [
        {"name": "hub", "type": "EventHub", "eventTypes": ["SensorChange"], "connection": "HUB", "path": "f-hub"},
        {"name": "bus", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "BUS", "path": "f-queue"},
    ]
    with (
        AmqpPeer(entities={"f-hub", "f-queue"}, partition_count=4) as peer,
        proxy(peer.port) as hub_gate,
        proxy(peer.port) as bus_gate,
    ):
        hub_gate.set(Mode.REFUSE)
        bus_gate.set(Mode.REFUSE)
        connections = {"HUB": via(hub_gate, peer), "BUS": via(bus_gate, peer)}
        # The production budgets: four tries with their backoff, as in the finding.
        with deployed(azurite, routes, connections, retry=RetryOptions()) as app:
            feed = Feed(_sensor, "twins", FINDING_EVENTS // FINDING_BATCHES)
            batches = [feed.next() for _ in range(FINDING_BATCHES)]
            times = [app.invoke(batch) for batch in batches]
            dead, parked = app.dead_letters(), app.parked()
            tries = hub_gate.accepted + bus_gate.accepted
            hub_gate.set(Mode.FORWARD)
            bus_gate.set(Mode.FORWARD)
            drain, runs = app.drain()
            in_order = received_order(peer, "f-hub") == feed.order == received_order(peer, "f-queue")
            return {
                "events": FINDING_EVENTS,
                "batches": FINDING_BATCHES,
                "seconds": sum(times),
                "first_batch_s": times[0],
                "later_batches_ms": _median_ms(times[1:]),
                "connections_refused": tries,
                "dead_letters": dead,
                "parked": parked,
                "drain_s": drain,
                "drain_runs": runs,
                "in_order": in_order,
                "dead_letters_after": app.dead_letters(),
                "parked_after": app.parked(),
            }


class _MidBatchReset:
    """Resets every AMQP connection through `gate` once the peer has taken a send of the running batch."""

    def __init__(self, peer: AmqpPeer, gate: Proxy) -> None:
        self.peer, self.gate = peer, gate
        self.done = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        before = self.peer.stats().deliveries_accepted
        self._stop.clear()

        def watch() -> None:
            while not self._stop.wait(0.0005):
                if self.peer.stats().deliveries_accepted > before:
                    self.gate.set(Mode.RESET)
                    self.gate.set(Mode.FORWARD)
                    self.done += 1
                    return

        self._thread = threading.Thread(target=watch, name="mid-batch-reset", daemon=True)
        self._thread.start()

    def disarm(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _mix_run(
    azurite: Azurite, batches: Sequence[corpora.Batch], peer: AmqpPeer, grid: EventGridReceiver, gate: Proxy,
    *, faults: bool,
) -> dict[str, Any]:  # fmt: skip
    routes = route_dicts(6, grid_url=grid.endpoint)
    peer.clear()
    grid.clear()
    connections = {AMQP_SETTING: via(gate, peer), GRID_SETTING: grid.key}
    with deployed(azurite, routes, connections, retry=RetryOptions()) as app:
        for source in FUNCTION_FOR:  # warm-up: connections opened
            app.invoke(next(b for b in batches if b.source == source))
        reset = _MidBatchReset(peer, gate)
        if faults:
            grid.fail_every(GRID_500_EVERY, 500)
        seconds = 0.0
        messages = 0
        for i, batch in enumerate(batches):
            armed = faults and i % RESET_EVERY == RESET_EVERY - 1
            if armed:
                reset.arm()
            seconds += app.invoke(batch)
            messages += len(batch.events)
            if armed:
                reset.disarm()
        grid.reset_faults()
        parked = app.parked()
        drain, runs = app.drain() if parked else (0.0, 0)
        return {
            "messages": messages,
            "batches": len(batches),
            "seconds": seconds,
            "events_per_second": messages / seconds if seconds else 0.0,
            "resets": reset.done,
            "grid_500s": sum(1 for r in grid.requests() if r.status == 500),
            "grid_requests": len(grid.requests()),
            "retries": sum(getattr(s, "retries", 0) for s in app.senders.pool._senders.values()),
            "dead_letters": app.dead_letters(),
            "parked": parked,
            "drain_s": drain,
            "drain_runs": runs,
        }


# Paired rounds of the fault mix: clean and faulted runs of the same batches, the order rotated each round
# (clean first, then faults first, ...), each round's ratio kept, the median judged (bench/timing.py).
MIX_ROUNDS = 4


def measure_fault_mix(azurite: Azurite, batches: Sequence[corpora.Batch], log: Log) -> dict[str, Any]:
    with (
        AmqpPeer(partition_count=4) as peer,
        EventGridReceiver() as grid,
        proxy(peer.port) as gate,
    ):
        rounds: list[dict[str, dict[str, Any]]] = []
        for i in range(MIX_ROUNDS):
            order = (False, True) if i % 2 == 0 else (True, False)
            log(f"fault mix: {len(batches)} batches, six endpoints, round {i + 1} of {MIX_ROUNDS}")
            rounds.append(
                {
                    "faults" if faults else "clean": _mix_run(azurite, batches, peer, grid, gate, faults=faults)
                    for faults in order
                }
            )
        ratios = Ratios(tuple(r["faults"]["events_per_second"] / r["clean"]["events_per_second"] for r in rounds))
        return {
            "clean": rounds[0]["clean"],
            "faults": rounds[0]["faults"],
            "rounds": rounds,
            "ratios": list(ratios.values),
            "ratio": ratios.median,
            "low": ratios.low,
            "high": ratios.high,
        }


def run(batches: Sequence[corpora.Batch], log: Log) -> dict[str, Any]:
    """Every measurement of the module, against one Azurite started for them; the fault mix over the
    first `FAULT_MIX_MESSAGES` messages of `batches`."""
    taken: list[corpora.Batch] = []
    for batch in batches:
        if sum(len(b.events) for b in taken) >= FAULT_MIX_MESSAGES:
            break
        taken.append(batch)
    with tempfile.TemporaryDirectory(prefix="bench-azurite-") as folder, running_azurite(Path(folder)) as azurite:
        return {
            "outage": measure_outage(azurite, log),
            "finding": measure_finding(azurite, log),
            "fault_mix": measure_fault_mix(azurite, taken, log),
        }


def summary(figures: Mapping[str, Any]) -> list[str]:
    """The figures as lines (`python -m bench` prints them too)."""
    lines = []
    o = figures["outage"]
    lines.append(
        f"outage: {o['batches']} telemetry batches of {o['batch_size']} per phase; both up: invocation "
        f"{o['clean_invocation_ms']:.1f} ms, steady endpoint's send {o['clean_steady_ms']:.1f} ms (medians)"
    )
    for p in o["phases"]:
        lines.append(
            f"  flaky {p['mode']}: first batch {p['first_batch_s']:.1f} s ({p['connections_first_batch']} connection "
            f"tries), then {p['connections_later_batches']} tries in {o['batches']} batches; invocation "
            f"{p['invocation_ms']:.1f} ms ({p['invocation_ratio']:.2f}x), steady's send {p['steady_ms']:.1f} ms "
            f"({p['steady_ratio']:.2f}x); {p['parked']:,} parked, drained in {p['drain_s']:.2f} s "
            f"({p['drain_runs']} run(s)), order {'held' if p['in_order'] else 'BROKEN'}, "
            f"{p['dead_letters']} dead letters, {p['parked_after']} left parked"
        )
    f = figures["finding"]
    lines.append(
        f"finding: {f['events']:,} events in {f['batches']} batches to an event hub and a queue refusing "
        f"connections: {f['seconds']:.1f} s (first batch {f['first_batch_s']:.1f} s, then {f['later_batches_ms']:.0f} "
        f"ms per batch), {f['dead_letters']} dead letters, {f['parked']:,} parked (before: 2 min 47 s, 1,504 dead "
        f"letters); back: drained in {f['drain_s']:.1f} s ({f['drain_runs']} run(s)), order "
        f"{'held' if f['in_order'] else 'BROKEN'}, {f['dead_letters_after']} dead letters, {f['parked_after']} left"
    )
    m = figures["fault_mix"]
    for label in ("clean", "faults"):
        r = m[label]
        lines.append(
            f"fault mix, {label}, round 1: {r['messages']:,} messages in {r['batches']} batches, "
            f"{r['events_per_second']:,.0f} events/s; {r['resets']} mid-batch resets, {r['grid_500s']} of "
            f"{r['grid_requests']} Event Grid requests 500, {r['retries']} retries, {r['dead_letters']} dead "
            f"letters, {r['parked']} parked"
        )
    ratios = ", ".join(f"{r:.0%}" for r in m["ratios"])
    lines.append(
        f"fault mix: throughput {m['ratio']:.0%} of clean, the median of {len(m['ratios'])} paired rounds "
        f"(order rotated): {ratios}"
    )
    return lines


def main() -> None:
    import logging  # noqa: PLC0415

    logging.getLogger().addHandler(logging.NullHandler())
    c = corpora.generate(events=5_000, devices=1_000, batch_size=100)
    started = time.perf_counter()
    figures = run(c.batches, lambda line: print(f"... {line}", flush=True))
    for line in summary(figures):
        print(line)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
