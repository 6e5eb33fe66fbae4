"""Timing on a noisy machine: stages are run in rounds, round-robin, so a burst of noise hits every stage
alike, and each stage's best round is kept (the least disturbed measurement of the same work).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timing:
    """A stage's work measured over several rounds: `units` units of work per round."""

    name: str
    units: int
    best: float  # seconds, best round
    median: float  # seconds, median round
    rounds: int

    @property
    def per_second(self) -> float:
        return self.units / self.best if self.best > 0 else 0.0

    @property
    def micros(self) -> float:
        return self.best / self.units * 1e6 if self.units else 0.0


def interleaved(
    stages: Mapping[str, tuple[Callable[[], object], int]], *, duration: float, min_rounds: int = 3, warmup: bool = True
) -> dict[str, Timing]:
    """Run every stage once to warm up, then in rounds until `duration` seconds have passed."""
    for run, _units in stages.values() if warmup else ():
        run()
    samples: dict[str, list[float]] = {name: [] for name in stages}
    started = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - started < duration:
        for name, (run, _units) in stages.items():
            gc.collect()
            t0 = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - t0)
        rounds += 1
    out = {}
    for name, (_run, units) in stages.items():
        ordered = sorted(samples[name])
        out[name] = Timing(name, units, ordered[0], ordered[len(ordered) // 2], rounds)
    return out


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) by nearest rank."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[rank]
