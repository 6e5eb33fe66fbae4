"""`python -m routing run` over a large generated events file, in child processes: its peak memory, and
its throughput against the stdlib-json router of bench/run_baseline.py (issue #15, target 5).

Memory: the router's resident set size is sampled from /proc while it runs. Growth is measured from the
moment routing starts (the runner's staging folder appears: imports done, routes loaded) to the highest
sample, so what is measured is what the run accumulates per event. That moment also tells how much of a
run is starting up.

Throughput: the router and the baseline route the same file in paired rounds, the order rotated each
round (bench/timing.py), each round's ratio the router's events per second over the baseline's. Each
run writes its own output folder, removed (untimed) after it, and each starts with nothing left for the
kernel to write back (`settle`); an untimed baseline run goes first (`warm_up`).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench import corpus
from bench.routes import write_routes
from bench.timing import Ratios, paired, rotated

SAMPLE_SECONDS = 0.05
# Until routing starts, the staging folder is looked for this often (the start-up time's resolution).
START_SAMPLE_SECONDS = 0.005
ROOT = Path(__file__).resolve().parent.parent
# Distinct messages generated; the file repeats them with fresh sequence numbers.
POOL = 4000


def write_events(path: Path, *, events: int, devices: int) -> int:
    """`events` lines of the mixed corpus; returns the file's size in bytes."""
    rng = random.Random(3)
    forms = [(t, f) for t in corpus.TWIN_TYPES for f in corpus.WIRE_FORMS]
    pool = []
    for i in range(POOL):
        if rng.random() < corpus.TELEMETRY_SHARE:
            event = corpus.telemetry_event(rng, corpus.device_name(rng.randrange(devices)), i)
        else:
            event_type, form = forms[i % len(forms)]
            event = corpus.twin_event(rng, event_type, form, i)
        pool.append(orjson.loads(corpus.event_line(event, partition="0")))
    with path.open("wb") as handle:
        for n in range(events):
            line = pool[n % POOL]
            line["sequenceNumber"] = n
            line["partition"] = str(n % corpus.PARTITIONS)
            handle.write(orjson.dumps(line) + b"\n")
    return path.stat().st_size


def _rss(pid: int) -> int | None:
    """Resident set size in bytes, from /proc (Linux), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass(frozen=True, slots=True)
class MemoryRun:
    events: int
    file_bytes: int
    seconds: float
    rss_start: int  # bytes, when routing began
    rss_peak: int
    rss_end: int
    samples: int
    exit_code: int
    summary: dict[str, object]
    started: float = 0.0  # seconds from the process's start to routing's (its staging folder appearing)

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_start


@dataclass(frozen=True, slots=True)
class RunComparison:
    """`routing run` against the baseline on one file, in paired rounds (round order in each tuple)."""

    events: int
    file_bytes: int
    router: tuple[MemoryRun, ...]
    baseline_seconds: tuple[float, ...]
    baseline_exit_codes: tuple[int, ...]
    first: tuple[str, ...]  # which side ran first in each round

    @property
    def ratios(self) -> Ratios:
        """Per round, the router's throughput over the baseline's (the same events on both sides)."""
        return paired([r.seconds for r in self.router], self.baseline_seconds)

    @property
    def ok(self) -> bool:
        return all(r.exit_code == 0 for r in self.router) and not any(self.baseline_exit_codes)


def run_router(events_file: Path, routes_file: Path, out: Path, *, events: int, batch_size: int) -> MemoryRun:
    """One `python -m routing run` in a child process, its RSS sampled until it ends."""
    command = [sys.executable, "-m", "routing", "run", "--events", str(events_file), "--routes", str(routes_file)]
    command += ["--out", str(out), "--batch-size", str(batch_size), "-o", "json"]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rss_start = 0
    began = 0.0
    peak = 0
    last = 0
    samples = 0
    while child.poll() is None:
        rss = _rss(child.pid)
        if rss is None:
            break
        last = rss
        samples += 1
        if not rss_start and out.exists() and any(out.glob(".routing-partial-*")):
            rss_start = last
            began = time.perf_counter() - started
        if rss_start:
            peak = max(peak, last)
        time.sleep(SAMPLE_SECONDS if rss_start else START_SAMPLE_SECONDS)
    stdout, stderr = child.communicate()
    seconds = time.perf_counter() - started
    try:
        summary = orjson.loads(stdout)
    except orjson.JSONDecodeError:
        summary = {"error": stderr.decode("utf-8", "replace")[-2000:]}
    return MemoryRun(
        events=events,
        file_bytes=events_file.stat().st_size,
        seconds=seconds,
        rss_start=rss_start,
        rss_peak=max(peak, rss_start),
        rss_end=last,
        samples=samples,
        exit_code=child.returncode,
        summary={"messages": summary.get("messages"), "error": summary.get("error")},
        started=began,
    )


def run_baseline(events_file: Path, routes_file: Path, out: Path, *, batch_size: int) -> tuple[float, int]:
    """One `python -m bench.run_baseline` in a child process: its seconds and exit code."""
    command = [sys.executable, "-m", "bench.run_baseline", "--events", str(events_file), "--routes", str(routes_file)]
    command += ["--out", str(out), "--batch-size", str(batch_size)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, check=False)
    return time.perf_counter() - started, done.returncode


def settle() -> None:
    """Before each run: what the last one wrote (or the events file, before the first) on the disk, not
    waiting in the page cache to be. A run writes ~2.7 KB per event; without this, the kernel writes the
    last run's output (and the new events file) back during the next run, which pays for it (one tree's
    router, first in round one right after the file was made, took 50 s, and 35 s in round two). It
    does not remove the machine's other load, which still moves single runs by ±15%."""
    os.sync()


def warm_up(events_file: Path, routes_file: Path, out: Path, *, batch_size: int) -> None:
    """One baseline run before the rounds, untimed: the first run that writes a file's outputs after the
    file is made runs 2-3 s slower at 1,000,000 events, whichever side it is (the router 21.3-22.5 s,
    then 18.7-19.7; after a baseline run first, 20.6 and 20.1; the baseline 37.8, then 35.8), and with the
    order rotated from the router first, that run was always the router's. The baseline, so that what
    warms up is the machine, not the router's own files."""
    run_baseline(events_file, routes_file, out, batch_size=batch_size)
    shutil.rmtree(out, ignore_errors=True)
    settle()


def compare_runs(*, events: int, devices: int, routes: int, batch_size: int, rounds: int) -> RunComparison:
    """The router and the baseline over one generated file of `events` events, `rounds` paired rounds."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        folder = Path(tmp)
        events_file = folder / "events.jsonl"
        size = write_events(events_file, events=events, devices=devices)
        routes_file = write_routes(folder / "routes.json", routes)
        settle()
        warm_up(events_file, routes_file, folder / "warm-up", batch_size=batch_size)
        router: list[MemoryRun] = []
        baseline: list[tuple[float, int]] = []
        first = []
        for round_index in range(rounds):
            sides = rotated(["router", "baseline"], round_index)
            first.append(sides[0])
            for side in sides:
                out = folder / side
                if side == "router":
                    router.append(run_router(events_file, routes_file, out, events=events, batch_size=batch_size))
                else:
                    baseline.append(run_baseline(events_file, routes_file, out, batch_size=batch_size))
                shutil.rmtree(out, ignore_errors=True)
                settle()
        return RunComparison(
            events=events,
            file_bytes=size,
            router=tuple(router),
            baseline_seconds=tuple(seconds for seconds, _code in baseline),
            baseline_exit_codes=tuple(code for _seconds, code in baseline),
            first=tuple(first),
        )
