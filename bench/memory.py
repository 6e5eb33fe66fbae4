"""Peak memory of the local runner: `python -m routing run` over a large generated events file, in a
child process whose resident set size is sampled from /proc while it runs.

Growth is measured from the moment routing starts (the runner's staging folder appears: imports done,
routes loaded) to the highest sample, so what is measured is what the run accumulates per event.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench import corpus
from bench.routes import write_routes

SAMPLE_SECONDS = 0.05
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

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_start


def measure_run(*, events: int, devices: int, routes: int, batch_size: int) -> MemoryRun:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        folder = Path(tmp)
        events_file = folder / "events.jsonl"
        size = write_events(events_file, events=events, devices=devices)
        routes_file = write_routes(folder / "routes.json", routes)
        out = folder / "out"
        command = [sys.executable, "-m", "routing", "run", "--events", str(events_file), "--routes", str(routes_file)]
        command += ["--out", str(out), "--batch-size", str(batch_size), "-o", "json"]
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        rss_start = 0
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
            if rss_start:
                peak = max(peak, last)
            time.sleep(SAMPLE_SECONDS)
        stdout, stderr = child.communicate()
        seconds = time.perf_counter() - started
        try:
            summary = orjson.loads(stdout)
        except orjson.JSONDecodeError:
            summary = {"error": stderr.decode("utf-8", "replace")[-2000:]}
        return MemoryRun(
            events=events,
            file_bytes=size,
            seconds=seconds,
            rss_start=rss_start,
            rss_peak=max(peak, rss_start),
            rss_end=last,
            samples=samples,
            exit_code=child.returncode,
            summary={"messages": summary.get("messages"), "error": summary.get("error")},
        )
