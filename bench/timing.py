"""Timing on a noisy machine: what is compared is run in the same rounds, one after the other, with the
order rotated from round to round (A then B, then B then A, ...), so that a burst of noise, or a cache
one side warms for the next, hits each side alike; a comparison is then the ratio of the two sides in
each round, reported as the median and the range (lowest to highest) over the rounds. Each round also
takes the process's CPU time (`time.process_time()`: every thread of this process, none of another's),
so a side that waits is told apart from a side that works.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Timing:
    """A stage's work measured over several rounds: `units` units of work per round."""

    name: str
    units: int
    best: float  # seconds, best round
    median: float  # seconds, median round
    rounds: int
    samples: tuple[float, ...] = ()  # seconds, per round, in round order
    cpu: tuple[float, ...] = ()  # this process's CPU seconds, per round, in round order

    @property
    def per_second(self) -> float:
        return self.units / self.best if self.best > 0 else 0.0

    @property
    def micros(self) -> float:
        return self.best / self.units * 1e6 if self.units else 0.0


@dataclass(frozen=True, slots=True)
class Ratios:
    """One comparison's ratio in each round, in round order."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return median(self.values)

    @property
    def low(self) -> float:
        return min(self.values) if self.values else 0.0

    @property
    def high(self) -> float:
        return max(self.values) if self.values else 0.0

    def describe(self, spec: str = ".2f", suffix: str = "x") -> str:
        """`median (low-high)`, e.g. `1.18x (1.02-1.31x)`; `spec` formats each number."""
        return f"{self.median:{spec}}{suffix} ({self.low:{spec}}-{self.high:{spec}}{suffix})"


def median(values: Sequence[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def paired(a: Sequence[float], b: Sequence[float], *, a_units: float = 1.0, b_units: float = 1.0) -> Ratios:
    """A's throughput over B's in each round: (a_units / a[r]) / (b_units / b[r]), from the seconds (or
    CPU seconds) each side took in round r. Rounds are paired by index; both sides need every round."""
    return Ratios(
        tuple((a_units / ta) / (b_units / tb) if ta > 0 and tb > 0 else 0.0 for ta, tb in zip(a, b, strict=True))
    )


def rotated(sides: Sequence[T], round_index: int) -> list[T]:
    """The order of round `round_index`: the sides rotated by one each round (A B C, B C A, C A B, ...)."""
    if not sides:
        return []
    shift = round_index % len(sides)
    return [*sides[shift:], *sides[:shift]]


def interleaved(
    stages: Mapping[str, tuple[Callable[[], object], int]], *, duration: float, min_rounds: int = 3, warmup: bool = True
) -> dict[str, Timing]:
    """Run every stage once to warm up, then in rounds, the order rotated each round, until `duration`
    seconds have passed and at least `min_rounds` rounds have run."""
    for run, _units in stages.values() if warmup else ():
        run()
    names = list(stages)
    samples: dict[str, list[float]] = {name: [] for name in stages}
    cpu: dict[str, list[float]] = {name: [] for name in stages}
    started = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - started < duration:
        for name in rotated(names, rounds):
            run = stages[name][0]
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        rounds += 1
    out = {}
    for name, (_run, units) in stages.items():
        ordered = sorted(samples[name])
        out[name] = Timing(
            name, units, ordered[0], median(ordered), rounds, samples=tuple(samples[name]), cpu=tuple(cpu[name])
        )
    return out


def stage_ratio(a: Timing, b: Timing) -> Ratios:
    """A's throughput over B's per round, for two stages timed in the same `interleaved` rounds."""
    return paired(a.samples, b.samples, a_units=a.units, b_units=b.units)


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) by nearest rank."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[rank]
