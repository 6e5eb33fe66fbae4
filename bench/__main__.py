"""`python -m bench`: run the benchmark suite and print the figures, ratios and targets."""

from __future__ import annotations

import dataclasses
import logging
import sys
from enum import StrEnum
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from bench.outage import summary as outage_summary
from bench.suite import Options, Results, run_all

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
console = Console()
progress = Console(stderr=True)


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


def as_json(results: Results) -> dict[str, Any]:
    return {
        "options": dataclasses.asdict(results.options),
        "machine": results.machine,
        "corpus": results.corpus,
        "stages": [
            {
                "stage": t.name,
                "events_per_second": t.per_second,
                "us_per_event": t.micros,
                "median_round_s": t.median,
                "rounds": t.rounds,
                "round_s": list(t.samples),
                "round_cpu_s": list(t.cpu),
            }
            for t in results.stages
        ],
        "endpoints": results.endpoints,
        "filtered": results.filtered,
        "devices": results.devices,
        "end_to_end": results.end_to_end,
        "decode": results.decode,
        "bookkeeping": results.bookkeeping,
        "memory": results.memory,
        "outage": results.outage,
        "targets": [
            {"target": t.name, "measured": t.measured, "ratio": t.ratio, "low": t.low, "high": t.high, "pass": t.passed}
            for t in results.targets
        ],
        "notes": results.notes,
        "seconds": results.seconds,
    }


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _range(r: dict[str, float], suffix: str = "x") -> str:
    return f"{r['median']:.2f}{suffix} ({r['low']:.2f}-{r['high']:.2f}{suffix})"


def print_end_to_end(e: dict[str, Any]) -> None:
    """The headline: router over script end to end, per corpus, as median (range) of paired rounds."""
    console.print("End to end, router / script (paired rounds, order rotated; the peers in their own process)")
    for s in e["comparisons"]:
        r, c = s["router_sends"], s["script_sends"]
        console.print(
            f"  {s['corpus']}: throughput {_range(s['throughput_ratio'])} over {s['rounds']} rounds "
            f"(router {s['router_events_per_second']:,.0f} events/s, script {s['script_events_per_second']:,.0f}); "
            f"CPU {_range(s['cpu_ratio'])} (events per CPU second; router {s['router_cpu_us_per_event']:.0f} "
            f"µs/event, script {s['script_cpu_us_per_event']:.0f}); sends per pass: router {r['amqp_transfers']} "
            f"AMQP + {r['grid_requests']} Event Grid, script {c['amqp_transfers']} + {c['grid_requests']}",
            highlight=False,
        )
    if e["same_messages"]:
        console.print("  every pass of both delivered the same messages to the same destinations", highlight=False)
    else:
        console.print("[bold red]  the script did not deliver exactly the router's messages: the comparison is void[/]")


def print_run(mem: dict[str, Any]) -> None:
    """`routing run` against the stdlib-json router, where its time goes, and its memory."""
    rounds = len(mem["round_s"])
    console.print(
        f"`python -m routing run` over {mem['events']:,} events ({mem['file_mb']:.0f} MB), against the "
        f"stdlib-json router (bench/run_baseline.py), {rounds} paired rounds, order rotated: throughput "
        f"{_range(mem['throughput_ratio'])}",
        highlight=False,
    )
    for i, (router, start, baseline, first) in enumerate(
        zip(mem["round_s"], mem["round_start_s"], mem["baseline_round_s"], mem["first"], strict=True), start=1
    ):
        console.print(
            f"  round {i} ({first} first): router {router:.1f} s (start-up to routing {start:.2f} s: imports, "
            f"routes; routing {router - start:.1f} s), baseline {baseline:.1f} s, "
            f"ratio {mem['throughput_ratios'][i - 1]:.2f}x",
            highlight=False,
        )
    console.print(
        f"  memory (the round with the highest peak): RSS {mem['rss_start_mb']:.1f} MB when routing starts, "
        f"peak {mem['rss_peak_mb']:.1f} MB, growth {mem['growth_mb']:.1f} MB; "
        f"{mem['events_per_second']:,.0f} events/s (median run), exit {mem['exit_code']}",
        highlight=False,
    )


def print_results(results: Results) -> None:
    m, c = results.machine, results.corpus
    console.print(
        f"machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}; corpus: {c['messages']:,} messages "
        f"({c['telemetry_messages']:,} telemetry, {c['twin_messages']:,} twin), "
        f"mean body {c['mean_body_bytes']:.0f} B, "
        f"{c['endpoints']} endpoints, batches of {results.options.batch_size}"
    )
    if results.end_to_end:
        print_end_to_end(results.end_to_end)
    console.print(
        _table(
            "Stages (best round; events = ingress messages)",
            ["stage", "events/s", "µs/event"],
            [[t.name, f"{t.per_second:,.0f}", f"{t.micros:.1f}"] for t in results.stages],
        )
    )
    if results.decode:
        console.print(
            _table(
                "The worker's decoding before the function runs (azure-functions EventHubTriggerConverter.decode), "
                "per event",
                ["corpus", "worker decode µs", "router core µs", "decode / core (per round)", "fromisoformat times µs"],
                [
                    [
                        d["corpus"],
                        f"{d['decode_us_per_event']:.1f}",
                        f"{d['core_us_per_event']:.1f}",
                        _range(d["decode_over_core"], "x"),
                        f"{d['decode_fast_us_per_event']:.1f}",
                    ]
                    for d in results.decode
                ],
            )
        )
    console.print(
        _table(
            "Route table size (fan-out grows with it)",
            ["endpoints", "fan-out", "core µs/event", "core µs/sent", "core+SDK µs/event", "core+SDK µs/sent"],
            [
                [
                    str(r["endpoints"]),
                    f"{r['fanout']:.1f}",
                    f"{r['core_us_per_event']:.1f}",
                    f"{r['core_us_per_outgoing']:.2f}",
                    f"{r['sdk_us_per_event']:.1f}",
                    f"{r['sdk_us_per_outgoing']:.2f}",
                ]
                for r in results.endpoints
            ],
        )
    )
    console.print(
        _table(
            "Route table size with filters (5 unfiltered endpoints + filtered ones; bench/filtered.py)",
            ["filters", "endpoints", "sent/event", "core µs/event", "core µs/sent"],
            [
                [
                    r["scenario"],
                    str(r["endpoints"]),
                    f"{r['fanout']:.2f}",
                    f"{r['core_us_per_event']:.1f}",
                    f"{r['core_us_per_outgoing']:.1f}",
                ]
                for r in results.filtered
            ],
        )
    )
    console.print(
        _table(
            f"Distinct devices per telemetry batch of {results.options.batch_size}",
            ["devices", "core ms/batch", "core+SDK ms/batch", "end to end ms/batch (median)"],
            [
                [
                    str(r["devices"]),
                    f"{r['core_ms_per_batch']:.2f}",
                    f"{r['sdk_ms_per_batch']:.2f}",
                    f"{r['e2e_ms_per_batch']:.1f}" if "e2e_ms_per_batch" in r else "-",
                ]
                for r in results.devices
            ],
        )
    )
    if results.end_to_end:
        e = results.end_to_end
        console.print(
            f"end to end (router, mixed, median round): {e['messages']:,} messages in {e['batches']} batches, "
            f"{e['events_per_second']:,.0f} events/s ({e['us_per_event']:.0f} µs/event), "
            f"batch p50 {e['p50_ms']:.1f} ms, p99 {e['p99_ms']:.1f} ms; "
            f"AMQP connections {e['connections_after_warmup']} after warm-up, {e['connections_at_end']} after "
            f"{e['invocations']} invocations, {e['connections_after_sweep']} after the device sweep; "
            f"{e['amqp_messages_received']:,} AMQP messages and {e['event_grid_requests']:,} Event Grid requests "
            "received per pass"
        )
    if results.memory:
        print_run(results.memory)
    for line in outage_summary(results.outage) if results.outage else ():
        console.print(line, highlight=False)
    console.print(
        _table(
            "Targets",
            ["target", "measured: median (range) of per-round ratios where paired", "result"],
            [[t.name, t.measured, "PASS" if t.passed else "[bold red]MISS[/]"] for t in results.targets],
        )
    )
    for note in results.notes:
        console.print(f"note: {note}")
    console.print(f"({results.seconds:.0f} s)")


@app.command()
def main(  # noqa: PLR0917 - Typer reads each option from a parameter
    events: Annotated[int, typer.Option(min=100, help="Ingress messages in the corpus.")] = 5_000,
    devices: Annotated[int, typer.Option(min=1, help="Distinct devices sending telemetry.")] = 1_000,
    routes: Annotated[int, typer.Option(min=5, help="Endpoints in the route table.")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Messages per trigger batch.")] = 100,
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds each timed section runs for, at least.")] = 4.0,
    run_events: Annotated[
        int,
        typer.Option(
            "--run-events",
            "--memory-events",
            min=0,
            help="Events for `routing run` against the stdlib-json router, and its memory (0 skips it).",
        ),
    ] = 100_000,
    run_rounds: Annotated[
        int, typer.Option(min=1, help="Paired rounds of `routing run` and the stdlib-json router.")
    ] = 2,
    end_to_end: Annotated[bool, typer.Option(help="Run the end-to-end stage against the local peers.")] = True,
    outage: Annotated[
        bool, typer.Option(help="Run the endpoint-outage stage (needs the end-to-end stage; Azurite).")
    ] = True,
    rounds: Annotated[
        int,
        typer.Option(min=2, help="Paired rounds per comparison (end to end: router and script; the stages at least)."),
    ] = 8,
    output: Annotated[OutputFormat, typer.Option("--output", "-o", help="Figures as tables or as JSON.")] = (
        OutputFormat.table
    ),
) -> None:
    """Benchmark the router against floors measured in the same run (issue #7)."""
    # Records are still made (their cost is the router's), but not printed over the figures.
    logging.getLogger().addHandler(logging.NullHandler())
    options = Options(
        events, devices, routes, batch_size, duration, run_events, end_to_end, outage, rounds, run_rounds=run_rounds
    )
    results = run_all(options, lambda line: progress.print(f"[dim]{line}[/]", highlight=False))
    if output is OutputFormat.json:
        sys.stdout.write(orjson.dumps(as_json(results), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_results(results)


if __name__ == "__main__":
    app(prog_name="python -m bench")
