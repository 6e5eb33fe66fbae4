"""The benchmark's method (bench/timing.py): comparisons are ratios per round, the order of the sides
rotated from round to round, reported as the median and range of the rounds, and a target passes only
when the median meets it; and what a stage's pass does. The arithmetic and the work only: timings
themselves belong in the benchmark."""

from __future__ import annotations

import pytest

from bench import corpus as corpora
from bench import stages
from bench.routes import route_table
from bench.suite import (
    CORE,
    CORE_SDK,
    FLOOR_B_ONCE,
    Options,
    Results,
    Target,
    bookkeeping_per_round,
    bookkeeping_share,
    bookkeeping_targets,
)
from bench.timing import Ratios, Timing, interleaved, median, paired, rotated


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


def test_the_senders_bookkeeping_is_core_plus_sdk_less_core_less_the_sdk_floor_per_message_per_round() -> None:
    # Two rounds of CPU seconds: core + SDK over 1,000 messages, the core over 1,000, the floor over 500.
    core_sdk = Timing("core + SDK", 1000, 0.1, 0.1, 2, samples=(0.1, 0.1), cpu=(0.100, 0.120))
    core = Timing("core", 1000, 0.01, 0.01, 2, samples=(0.01, 0.01), cpu=(0.010, 0.010))
    floor = Timing("floor", 500, 0.04, 0.04, 2, samples=(0.04, 0.04), cpu=(0.040, 0.045))

    per_round = bookkeeping_per_round(core_sdk, core, floor)

    # Round 1: 100 - 10 - 80 = 10 µs per message; round 2: 120 - 10 - 90 = 20 µs.
    assert per_round == pytest.approx((10.0, 20.0))
    # Over 200 µs of end-to-end CPU per event: 5% and 10%, judged on the median (7.5%).
    share = bookkeeping_share(per_round, 200.0)
    assert share.values == pytest.approx((0.05, 0.10))
    assert share.median == pytest.approx(0.075)


def test_the_bookkeeping_target_passes_at_or_below_its_limit_on_the_median() -> None:
    results = Results(Options(5000, 1000, 5, 100, 1.0, 0))
    results.end_to_end = {"comparisons": [{"corpus": c, "router_cpu_us_per_event": 200.0, "router_cpu_us_rounds": [
        190.0, 200.0, 210.0]} for c in ("mixed", "telemetry")]}  # fmt: skip
    t: dict[str, Timing] = {}
    for corpus in ("mixed", "telemetry"):
        t[f"{corpus}: {CORE_SDK}"] = Timing("", 100, 0, 0, 3, samples=(1, 1, 1), cpu=(0.0100, 0.0108, 0.0120))
        t[f"{corpus}: {CORE}"] = Timing("", 100, 0, 0, 3, samples=(1, 1, 1), cpu=(0.0010, 0.0010, 0.0010))
        t[f"{corpus}: {FLOOR_B_ONCE}"] = Timing("", 100, 0, 0, 3, samples=(1, 1, 1), cpu=(0.0080, 0.0080, 0.0080))

    bookkeeping_targets(results, t)

    # 10, 18 and 30 µs of bookkeeping per event over the end-to-end median of 200 µs: 5%, 9%, 15%.
    [target] = results.targets
    assert target.ratio == pytest.approx(0.09) and not target.passed
    assert target.low == pytest.approx(0.05) and target.high == pytest.approx(0.15)
    assert results.bookkeeping[1]["share_rounds"] == pytest.approx([0.05, 0.09, 0.15])


def test_the_core_stage_hands_no_send_to_a_thread_and_core_plus_sdk_does() -> None:
    """The router core is classification, matching, envelopes, grouping and accounting: its collecting
    sender's send never waits, so the pipeline makes every endpoint's send on the routing thread. The
    hand-offs of a batch's other endpoints are the senders' bookkeeping: core + SDK makes them (the
    pipeline's pool is made on its first hand-off), so the bookkeeping's difference counts them once."""
    batches = corpora.generate(events=200, devices=20, batch_size=100).ingress_batches()
    table = route_table(5)
    core, with_sdk = stages.core_router(table), stages.sdk_router(table)
    endpoints = []
    for batch in batches:
        endpoints.append(len({endpoint for endpoint, _type in core.route(batch).delivered}))
        with_sdk.route(batch)
    assert max(endpoints) > 1  # a twins batch goes to several endpoints
    assert core._pool is None
    assert with_sdk._pool is not None


def test_routing_runs_are_compared_after_an_untimed_baseline_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run to write a file's outputs after the file is made runs slower, whichever side it is;
    rotated from the router first, it was always the router's: a baseline run goes first, untimed."""
    from bench import memory  # noqa: PLC0415 - this test's alone

    calls: list[str] = []

    def router(events_file: object, routes_file: object, out: object, *, events: int, batch_size: int) -> object:
        calls.append("router")
        return memory.MemoryRun(events, 1, 2.0, 0, 0, 0, 0, 0, {})

    def baseline(events_file: object, routes_file: object, out: object, *, batch_size: int) -> tuple[float, int]:
        calls.append("baseline")
        return 4.0, 0

    monkeypatch.setattr(memory, "run_router", router)
    monkeypatch.setattr(memory, "run_baseline", baseline)
    compared = memory.compare_runs(events=20, devices=2, routes=5, batch_size=10, rounds=2)
    assert calls == ["baseline", "router", "baseline", "baseline", "router"]
    assert compared.first == ("router", "baseline")
    assert compared.baseline_seconds == (4.0, 4.0)  # the warm-up's run is not one of them
