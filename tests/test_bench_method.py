"""The benchmark's method (bench/timing.py): comparisons are ratios per round, the order of the sides
rotated from round to round, reported as the median and range of the rounds, and a target passes only
when the median meets it. The arithmetic only: timings themselves belong in the benchmark."""

from __future__ import annotations

import pytest

from bench.suite import Target
from bench.timing import Ratios, interleaved, median, paired, rotated


def test_paired_ratio_is_each_rounds_throughput_ratio_reported_as_median_and_range() -> None:
    # Round by round: the router took 1, 2, 1 and 4 s, the script 2, 2, 3 and 2 s for the same work.
    ratios = paired([1.0, 2.0, 1.0, 4.0], [2.0, 2.0, 3.0, 2.0])

    assert ratios.values == (2.0, 1.0, 3.0, 0.5)
    assert ratios.median == 1.5  # even count: the mean of the middle two (1.0 and 2.0)
    assert (ratios.low, ratios.high) == (0.5, 3.0)
    assert ratios.describe() == "1.50x (0.50-3.00x)"


def test_paired_ratio_weighs_each_side_by_its_units() -> None:
    # 5,000 events in 2 s against 2,500 events in 2 s: twice the throughput.
    assert paired([2.0], [2.0], a_units=5000, b_units=2500).values == (2.0,)


def test_paired_rounds_must_pair_up() -> None:
    with pytest.raises(ValueError):
        paired([1.0, 2.0], [1.0])


def test_median_is_the_middle_round_not_the_best() -> None:
    assert median([5.0, 1.0, 3.0]) == 3.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_each_round_rotates_which_side_goes_first() -> None:
    assert [rotated(["router", "script"], r) for r in range(4)] == [
        ["router", "script"],
        ["script", "router"],
        ["router", "script"],
        ["script", "router"],
    ]
    assert [rotated("abc", r) for r in range(3)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]


def test_interleaved_stages_run_in_rotated_order_with_a_sample_per_round() -> None:
    ran: list[str] = []
    stages = {name: ((lambda name=name: ran.append(name)), 1) for name in ("a", "b")}

    timings = interleaved(stages, duration=0.0, min_rounds=4, warmup=False)

    assert ran == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert all(len(t.samples) == len(t.cpu) == t.rounds == 4 for t in timings.values())


def test_a_target_passes_only_when_the_median_round_meets_it() -> None:
    # The best round reaches 1.3x, but the median round does not reach 1.2x.
    missed = Target.paired("router / script >= 1.2x", Ratios((0.9, 1.1, 1.3)), 1.2)
    met = Target.paired("router / script >= 1.2x", Ratios((1.0, 1.25, 1.3)), 1.2)

    assert not missed.passed
    assert met.passed
    assert missed.measured == "1.10x (0.90-1.30x) over 3 rounds"
