"""The command line: `python -m routing run ...` (the local runner), and, beside it, the route and
dead-letter tools. Typer parses the arguments and Rich draws the tables and the progress bar.

The tools (routing/cli/routes.py, status.py, deadletters.py) are imported only when one of them runs or
help lists them, and Rich's progress and tables only when drawn: `run` starts without the Blob, Table and
Event Hubs SDKs those tools use.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from routing import observability
from routing.cli import runner
from routing.cli.command import App, examples
from routing.cli.output import OutputFormat, console, errors, fail, warn
from routing.deadletters import FILE_NAME as DEAD_LETTER_FILE
from routing.errors import RoutingError
from routing.pipeline import BatchReport
from routing.routes.files import load_routes_file

app = App(
    help="Route Digital Twins events and device telemetry to Event Hubs, Service Bus and Event Grid.",
    epilog=examples(
        "routing run --events samples/events.jsonl --routes samples/routes.json --out out",
        "routing routes list",
        "routing deadletters list",
    ),
    # `routing --install-completion` (bash, zsh, fish, PowerShell), as `az` offers.
    add_completion=True,
    # routing/cli/status.py adds `routes status` to the routes group.
    lazy={
        "routes": ("routing.cli.routes:routes_app", "routing.cli.status"),
        "deadletters": ("routing.cli.deadletters:deadletters_app",),
    },
)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata  # noqa: PLC0415 - only for --version

        try:
            version = metadata.version("digital-twins-router")
        except metadata.PackageNotFoundError:  # run from a checkout without `make`
            version = "(not installed)"
        console.print(f"routing {version}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Route Digital Twins events and device telemetry to Event Hubs, Service Bus and Event Grid."""


# Inputs smaller than this finish before a progress bar would be any use.
PROGRESS_MIN_BYTES = 1 << 20


def report_json(report: BatchReport, fallback: str | None = None) -> dict[str, Any]:
    return {
        "fallback": fallback,
        "messages": report.messages,
        "events": {str(t): n for t, n in report.events.items()},
        "delivered": [
            {"endpoint": endpoint, "eventType": str(t), "count": n}
            for (endpoint, t), n in sorted(report.delivered.items())
        ],
        "deadLetters": [
            {"code": code, "count": n, "example": report.dead_letter_examples.get(code, "")}
            for code, n in sorted(report.dead_letters.items())
        ],
        "unrouted": {str(t): n for t, n in report.unrouted.items()},
        "parked": [
            {
                "endpoint": name,
                "parked": report.parked[name],
                "redelivered": report.redelivered[name],
                "stillParked": report.still_parked[name],
            }
            for name in sorted(set(report.parked) | set(report.still_parked))
        ],
    }


def print_report(report: BatchReport, out: Path, fallback: str | None = None) -> None:
    from rich.table import Table  # noqa: PLC0415 - not for -o json

    delivered = Table(title=f"Delivered ({out})", title_justify="left")
    # A type name is never cut or folded (two Relationship types would read alike): its column is as wide as
    # the longest, and endpoint names fold instead.
    longest = max((len(str(event_type)) for _endpoint, event_type in report.delivered), default=0)
    delivered.add_column("Endpoint", overflow="fold")
    delivered.add_column("Event type", no_wrap=True, min_width=longest)
    delivered.add_column("Messages", justify="right")
    for (endpoint, event_type), count in sorted(report.delivered.items()):
        # What the fallback got is what no other endpoint took: shown as such, as IoT Hub names its route.
        delivered.add_row(f"{endpoint} (fallback)" if endpoint == fallback else endpoint, str(event_type), str(count))
    if not report.delivered:
        delivered.add_row("(none)", "", "0")
    console.print(delivered)

    if report.dead_letters:
        dead = Table(title="Dead letters (deadletter.jsonl)", title_justify="left")
        dead.add_column("Reason")
        dead.add_column("Count", justify="right")
        dead.add_column("For example")
        for code, count in sorted(report.dead_letters.items()):
            dead.add_row(code, str(count), report.dead_letter_examples.get(code, ""))
        console.print(dead)
    if report.parked or report.still_parked:
        parked = Table(title="Parked while an endpoint was down (redelivered in order)", title_justify="left")
        parked.add_column("Endpoint")
        parked.add_column("Parked", justify="right")
        parked.add_column("Redelivered", justify="right")
        parked.add_column(f"Still parked ({runner.PARKED_FILE})", justify="right")
        for name in sorted(set(report.parked) | set(report.still_parked)):
            counts = (report.parked[name], report.redelivered[name], report.still_parked[name])
            parked.add_row(name, *map(str, counts))
        console.print(parked)
    if report.unrouted:
        unrouted = Table(title="Unrouted (no endpoint wants the type)", title_justify="left")
        unrouted.add_column("Event type")
        unrouted.add_column("Count", justify="right")
        for event_type, count in sorted(report.unrouted.items()):
            unrouted.add_row(str(event_type), str(count))
        console.print(unrouted)
    total_delivered = sum(report.delivered.values())
    total_dead = sum(report.dead_letters.values())
    console.print(
        f"{report.messages} messages in, {sum(report.events.values())} events, "
        f"{total_delivered} messages delivered"
        + (f" (and {redelivered} redelivered after parking)" if (redelivered := report.redelivered.total()) else "")
        + f", {total_dead} dead letters, "
        f"{sum(report.unrouted.values())} unrouted"
    )


@app.command(
    epilog=examples(
        "routing run --events samples/events.jsonl --routes samples/routes.json --out out",
        "routing run --events samples/events.jsonl --routes samples/routes.json --out out "
        "--fail sensor-alerts:2-4 --batch-size 5   # an outage: parking and redelivery",
        "routing run --events samples/events.jsonl --routes samples/routes.json --out out -o json",
    )
)
def run(
    *,
    events: Annotated[Path, typer.Option(help="Ingress messages, one JSON object per line.")],
    routes: Annotated[Path, typer.Option(help="Routes file: a JSON list of endpoints.")],
    out: Annotated[Path, typer.Option(help="Output folder: <endpoint>.jsonl and deadletter.jsonl.")],
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Messages per batch, as the trigger would hand them over.")
    ] = runner.DEFAULT_BATCH_SIZE,
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="Summary as a table or as JSON.")
    ] = OutputFormat.table,
    fail_endpoint: Annotated[
        list[str] | None,
        typer.Option(
            "--fail",
            metavar="NAME[:FROM[-TO]]",
            help="Take an endpoint down for batches FROM to TO (counted from 1; without them, the whole run): "
            "watch its keys parked in order, its circuit open and the redelivery catch up. Repeatable.",
        ),
    ] = None,
) -> None:
    """Route a file of ingress messages through the same pipeline the functions use, into files."""
    try:
        outages = [runner.Outage.parse(text) for text in fail_endpoint or []]
    except RoutingError as exc:
        raise fail(str(exc)) from None
    if not events.is_file():
        raise fail(f"--events {events}: no such file")
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out}: exists and is not a folder")
    try:
        table = load_routes_file(routes)
        runner.check_outages(outages, table)
    except RoutingError as exc:
        raise fail(str(exc)) from None

    metrics_to_console = bool(os.environ.get("ROUTER_METRICS_CONSOLE"))
    if metrics_to_console:
        observability.configure()  # the console exporter: the metrics print when the run ends
    size = events.stat().st_size
    show_progress = size >= PROGRESS_MIN_BYTES and errors.is_terminal
    # Rich's progress bar only when one is drawn: a disabled one that counts costs as much to import.
    with _progress(show_progress, size) as advance, summarised_warnings() as warnings, _fewer_collections():
        report = runner.run(
            events=events, table=table, out=out, batch_size=batch_size, progress=advance, outages=outages
        )
    if metrics_to_console:
        observability.shutdown()
    if output is OutputFormat.json:
        fallback = table.fallback.name if table.fallback is not None else None
        sys.stdout.write(orjson.dumps(report_json(report, fallback), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_report(report, out, table.fallback.name if table.fallback is not None else None)
    for text, count in warnings.others():
        warn(text + (f" ({count} times)" if count > 1 else ""))
    written = {f"{e.name}.jsonl" for e in table.endpoints} | {DEAD_LETTER_FILE, runner.PARKED_FILE}
    stale = sorted(p.name for p in out.glob("*.jsonl") if p.name not in written)
    if stale:
        warn(
            f"{out} also holds {', '.join(stale)}, which this run did not write (an earlier run with other "
            "routes?): delete them, or use another --out"
        )


# The cyclic collector's first threshold during a run (Python's default is 700 allocations): a batch
# allocates tens of thousands of objects, nearly none in cycles, and each collection walked the young ones.
RUN_GC_THRESHOLD = 10_000


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """The run with what was loaded before it (modules, the route table) out of the collector's way
    (`gc.freeze`) and collections less often: 4-8% of a run's CPU. Restored after (the tests run in-process)."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(RUN_GC_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


@contextmanager
def _progress(shown: bool, total: int) -> Iterator[Callable[[int], None]]:
    """What the runner tells of the bytes it read: a progress bar's, or, with none shown, nothing."""
    if not shown:
        yield lambda _bytes: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: PLC0415

    with Progress(
        TextColumn("routing"), BarColumn(), DownloadColumn(), TimeRemainingColumn(), console=errors, transient=True
    ) as progress:
        task = progress.add_task("routing", total=total)
        yield lambda n: progress.advance(task, n)


class WarningSummary(logging.Handler):
    """Holds the router's warnings during a run instead of printing each: the dead letters among them
    are what the summary table counts; the rest are printed once each, with a count, after it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "routing.pipeline" and str(record.msg).startswith("dead-lettered"):
            return  # counted, with an example, in the dead letters table
        self.counts[str(record.msg) % record.args if record.args else str(record.msg)] += 1

    def others(self) -> list[tuple[str, int]]:
        return self.counts.most_common()


@contextmanager
def summarised_warnings() -> Iterator[WarningSummary]:
    logger = logging.getLogger("routing")
    handler = WarningSummary()
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def main() -> None:
    app(prog_name="routing")
