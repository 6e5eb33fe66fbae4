"""`python -m routing routes status`: each endpoint's health (healthy, degraded, unhealthy, dead) and what
is parked for it, as every instance and the redelivery see it.

The endpoints are those of the route table (`--routes FILE`, else the routes table, found as `routes list`
finds it) and those with a health record (`_health/`) or parked messages (`_parked/`) in the dead-letter
container, found as the `deadletters` commands find it. An endpoint without a record was never anything
but healthy (routing/health.py). Reads only: the routes and the dead-letter container's `_health/` and
`_parked/` folders.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from azure.storage.blob import ContainerClient
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from routing.cli.command import examples
from routing.cli.deadletters import READERS, ContainerOption, open_store, reported
from routing.cli.output import OutputFormat, OutputOption, console, errors, fail, printable, warn, write_json
from routing.cli.routes import LOCAL_SETTINGS, TableOption, _local_settings, open_rows, routes_app
from routing.cli.routes import reported as rows_reported
from routing.deadletters import BlobDeadLetters, parse_time, redact, rfc3339
from routing.errors import RoutingError
from routing.health import SERVER_TIMEOUT_SECONDS, BlobHealth, Health, State
from routing.parking import PARKED_FOLDER, BlobParking, ParkedBlob, record_key
from routing.routes.files import load_routes_file
from routing.routes.table import DEFAULT_TIME_TO_LIVE_MINUTES, Endpoint, RouteTable
from routing.routes.tables import describe
from routing.settings import DEADLETTER_STORAGE, ROUTES_STORAGE, connection_is_set

# Exit code of `--check` when an endpoint is unhealthy or dead or has parked messages; 2 stays for errors.
CHECK_FAILED_EXIT = 1


def now() -> datetime:
    """The time ages are counted to (tests stand in for the clock by replacing this)."""
    return datetime.now(UTC)


@dataclass(slots=True)
class Parked:
    """What is parked for one endpoint: each message once, however many blobs hold it."""

    messages: set[str] = field(default_factory=set)
    keys: set[tuple[str, str, str, str]] = field(default_factory=set)
    oldest: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointStatus:
    name: str
    health: Health
    parked: Parked
    # The endpoint's row in the route table; `table_known` False when there is no table to look in.
    route: Endpoint | None
    table_known: bool

    @property
    def time_to_live_minutes(self) -> int | None:
        """As the redelivery counts it: the table's, the default for an endpoint no longer in it, and
        unknown when there is no table to read it from."""
        if not self.table_known:
            return None
        return self.route.time_to_live_minutes if self.route is not None else DEFAULT_TIME_TO_LIVE_MINUTES

    @property
    def note(self) -> str | None:
        parked = len(self.parked.messages)
        waiting = f": its {parked} parked message{'s' if parked != 1 else ''}" if parked else ""
        if self.table_known and self.route is None:
            then = " wait until their time to live, then become dead letters (expired)" if parked else ""
            return f"no longer in the route table{waiting}{then}"
        if self.route is not None and not self.route.enabled:
            then = " wait until it is enabled, or their time to live" if parked else ""
            return f"disabled{waiting}{then}"
        return None


def parked_by_endpoint(blobs: Iterable[ParkedBlob]) -> dict[str, Parked]:
    """Per endpoint (lower-cased, as the table matches names): its parked messages, keys and oldest."""
    found: dict[str, Parked] = {}
    for blob in blobs:
        for record in blob.records:
            parked = found.setdefault(str(record["endpoint"]).lower(), Parked())
            parked.messages.add(str(record["id"]))
            parked.keys.add(record_key(record))
            moment = _moment(record.get("parkedAt"))
            if moment is not None and (parked.oldest is None or moment < parked.oldest):
                parked.oldest = moment
    return found


def _moment(value: Any) -> datetime | None:
    return parse_time(value) if isinstance(value, str) else None


def statuses(
    table: RouteTable | None, records: dict[str, Health], parked: dict[str, Parked], names: dict[str, str]
) -> list[EndpointStatus]:
    """Every endpoint of the table (in table order), then every other one with a record or parked messages
    (by name). `names` gives the spelling of a parked endpoint's name (lower-cased -> as written)."""
    by_name = {health.endpoint.lower(): health for health in records.values()}
    order = [e.name for e in table.endpoints] if table is not None else []
    known = {name.lower() for name in order}
    others = {n.lower(): n for n in names.values()} | {h.endpoint.lower(): h.endpoint for h in records.values()}
    order += sorted((name for lowered, name in others.items() if lowered not in known), key=str.lower)
    return [
        EndpointStatus(
            name=name,
            health=by_name.get(name.lower()) or Health(endpoint=name),
            parked=parked.get(name.lower()) or Parked(),
            route=table.get(name) if table is not None else None,
            table_known=table is not None,
        )
        for name in order
    ]


# --- reading -------------------------------------------------------------------------------------------


def _route_table(routes_file: Path | None, connection_string: str | None, table: str | None) -> RouteTable | None:
    """The route table to compare with: the file, else the routes table; None (with a note) when neither
    is configured."""
    if routes_file is not None:
        if table is not None:
            raise fail("--routes reads a routes file; --table names a routes table: pass one of them")
        try:
            return load_routes_file(routes_file)
        except RoutingError as exc:
            raise fail(str(exc)) from None
    configured = (
        connection_string
        or connection_is_set(ROUTES_STORAGE, os.environ)
        or connection_is_set(ROUTES_STORAGE, _local_settings())
    )
    if not configured:
        _note(
            f"no route table (pass --routes FILE, or set {ROUTES_STORAGE} or add it to the Values of "
            f"{LOCAL_SETTINGS} in this folder)"
        )
        return None
    rows = open_rows(connection_string, table)
    with rows_reported(rows):
        loaded = rows.load()
    if not loaded.table.endpoints and not loaded.invalid:
        # Most likely the wrong table (or --connection-string naming the dead-letter account only): every
        # endpoint "no longer in the route table" would mislead more than it tells.
        _note(f"{describe(rows.client)} holds no routes (or does not exist; pass --table or --routes FILE)")
        return None
    if loaded.invalid:
        warn(
            f"{len(loaded.invalid)} invalid route rows (the router keeps its last good table while they are there); "
            "run `python -m routing routes validate`"
        )
    return loaded.table


def _note(why: str) -> None:
    errors.print(
        f"note: {escape(why)}: only the endpoints with a health record or parked messages are shown, and not "
        "their time to live",
        highlight=False,
        soft_wrap=True,
    )


def _snapshot(parking: BlobParking) -> list[ParkedBlob]:
    """Every parked blob, read a few at once; one that is not a parked blob is named and left out."""
    names = sorted(parking.names(f"{PARKED_FOLDER}/"))

    def read(name: str) -> ParkedBlob | str | None:
        try:
            return parking.read(name)
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
            return f"{name}: not a parked blob ({type(exc).__name__}: {exc}); left out"

    blobs: list[ParkedBlob] = []
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        for result in pool.map(read, names):
            if isinstance(result, str):
                warn(result)
            elif result is not None:
                blobs.append(result)
    return blobs


# --- showing -------------------------------------------------------------------------------------------


def span(seconds: float) -> str:
    """A duration in its two largest units: 45s, 12m, 3h 5m, 2d 4h."""
    total = max(0, int(seconds))
    minutes, hours, days = total // 60, total // 3600, total // 86400
    if total < 60:
        return f"{total}s"
    if minutes < 60:
        return f"{minutes}m"
    if hours < 24:
        return f"{hours}h {minutes % 60}m" if minutes % 60 else f"{hours}h"
    return f"{days}d {hours % 24}h" if hours % 24 else f"{days}d"


def _ago(moment: datetime | None, at: datetime) -> str:
    return "-" if moment is None else span((at - moment).total_seconds())


def _until(moment: datetime | None, at: datetime) -> str:
    if moment is None:
        return "-"
    return "due" if moment <= at else f"in {span((moment - at).total_seconds())}"


def one_line(error: str | None) -> str | None:
    """An error as one line without secrets: an SDK error can quote a request URL with its SAS."""
    if not error or not error.strip():
        return None
    return redact(printable(error.strip().splitlines()[0]))


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else rfc3339(moment)


def to_json(status: EndpointStatus, at: datetime) -> dict[str, Any]:
    health, parked = status.health, status.parked
    return {
        "endpoint": status.name,
        "state": health.state.value,
        "since": _time(health.since),
        "lastSuccess": _time(health.last_success),
        "lastError": one_line(health.last_error),
        "lastErrorAt": _time(health.last_error_at),
        "nextProbe": _time(health.next_probe),
        "parkedKeys": len(parked.keys),
        "parkedMessages": len(parked.messages),
        "oldestParked": _time(parked.oldest),
        "oldestParkedSeconds": None if parked.oldest is None else int((at - parked.oldest).total_seconds()),
        "timeToLiveMinutes": status.time_to_live_minutes,
        "inTable": (status.route is not None) if status.table_known else None,
        "enabled": status.route.enabled if status.route is not None else None,
        "note": status.note,
    }


_STATE_STYLES = {State.HEALTHY: "green", State.DEGRADED: "yellow", State.UNHEALTHY: "red", State.DEAD: "bold red"}


def status_table(items: Sequence[EndpointStatus], at: datetime) -> Table:
    """The overview, to fit 80 columns (no borders, headers on two lines): errors and notes go below it,
    one line each, read whole."""
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
        caption="Since, last success, oldest parked: how long ago. TTL: time to live.",
        caption_justify="left",
    )
    table.add_column("Endpoint", overflow="fold", min_width=13)
    table.add_column("State", no_wrap=True)
    table.add_column("Since", no_wrap=True)
    table.add_column("Last\nsuccess", no_wrap=True)
    table.add_column("Next\nprobe", no_wrap=True)
    table.add_column("Parked\nkeys", justify="right", no_wrap=True)
    table.add_column("Parked\nmessages", justify="right", no_wrap=True)
    table.add_column("Oldest\nparked", no_wrap=True)
    # "TTL", as Service Bus names it: "Time to live" would take the width long endpoint names need.
    table.add_column("TTL", no_wrap=True)
    for item in items:
        health, parked = item.health, item.parked
        ttl = item.time_to_live_minutes
        table.add_row(
            escape(item.name),
            Text(health.state.value, style=_STATE_STYLES[health.state]),
            _ago(health.since, at),
            _ago(health.last_success, at),
            _until(health.next_probe, at),
            str(len(parked.keys)),
            str(len(parked.messages)),
            _ago(parked.oldest, at),
            "?" if ttl is None else span(ttl * 60),
        )
    if not items:
        table.add_row("(none)", "", "", "", "", "", "", "", "")
    return table


def _print_details(items: Sequence[EndpointStatus], at: datetime) -> None:
    for item in items:
        error = one_line(item.health.last_error)
        if error is not None:
            when = f" ({_ago(item.health.last_error_at, at)} ago)" if item.health.last_error_at else ""
            console.print(Text(f"  {item.name}: last error{when}: {error}"), soft_wrap=True, highlight=False)
    for item in items:
        if item.note is not None:
            console.print(Text(f"  {item.name}: {item.note}"), soft_wrap=True, highlight=False)


def _check_failures(items: Sequence[EndpointStatus]) -> list[str]:
    """What `--check` fails on: an open circuit, or anything parked (degraded is not a failure)."""
    found = []
    for item in items:
        reasons = []
        if item.health.state.is_open:
            reasons.append(f"is {item.health.state.value}")
        if item.parked.messages:
            count = len(item.parked.messages)
            reasons.append(f"has {count} parked message{'s' if count != 1 else ''}")
        if reasons:
            found.append(f"'{item.name}' {' and '.join(reasons)}")
    return found


@routes_app.command(
    "status",
    epilog=examples(
        "routing routes status",
        "routing routes status --routes samples/routes.json --check   # exit 1 if anything waits, for CI",
        "routing routes status -o json",
    ),
)
def status(
    *,
    routes_file: Annotated[
        Path | None,
        typer.Option("--routes", help="A routes file to list the endpoints of, instead of the routes table."),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help=f"Exit {CHECK_FAILED_EXIT} when an endpoint is unhealthy or dead or has parked messages "
            "(for CI and scripts); without it the exit code is 0 whatever the state.",
        ),
    ] = False,
    connection_string: Annotated[
        str | None,
        typer.Option(
            "--connection-string",
            help="Storage connection string of the account holding the dead-letter container and the routes "
            f"table (one account, as deployed); else ${DEADLETTER_STORAGE} and ${ROUTES_STORAGE}, else "
            f"{LOCAL_SETTINGS} Values in this folder.",
            show_default=False,
        ),
    ] = None,
    container: ContainerOption = None,
    table: TableOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Each endpoint's health (healthy, degraded, unhealthy, dead) and what is parked for it.

    The endpoints of the route table and every endpoint with a health record or parked messages. Ages
    are counted back from now (`-o json` gives the UTC times). Exits 0, or with `--check` 1 when any
    endpoint is unhealthy or dead or has parked messages; 2 on errors."""
    route_table = _route_table(routes_file, connection_string, table)
    store = open_store(connection_string, container)
    assert isinstance(store.letters, BlobDeadLetters)
    client: ContainerClient = store.letters.container
    at = now()
    with reported(store):
        # A container that is not there is a wrong --container (the router makes it on its first write),
        # not "everything healthy".
        client.get_container_properties(timeout=SERVER_TIMEOUT_SECONDS)
        records = BlobHealth(client).read_all()
        blobs = _snapshot(BlobParking(client))
    names = {str(r["endpoint"]).lower(): str(r["endpoint"]) for b in blobs for r in b.records}
    items = statuses(route_table, records, parked_by_endpoint(blobs), names)
    if output is OutputFormat.json:
        write_json([to_json(item, at) for item in items])
    else:
        # Above the table rather than its title: a title folds at the table's width, an address is read whole.
        console.print(Text(f"Endpoint health in {store.where}"), highlight=False, soft_wrap=True)
        console.print(status_table(items, at))
        _print_details(items, at)
    if check and (failures := _check_failures(items)):
        errors.print(f"check failed: {escape('; '.join(failures))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=CHECK_FAILED_EXIT)
