"""`python -m routing deadletters ...`: list, show and replay the dead letters kept in Blob Storage.

`replay` sends letters again through the same senders the functions use, honouring the current route
table (`--routes FILE`, else the routes table of `ROUTES_STORAGE`), in their original order per key,
and deletes a letter only once its message is delivered (`routing.replay` does the work). The storage
comes from `--connection-string`, else the environment (`DEADLETTER_STORAGE`, `DEADLETTER_CONTAINER`),
else `local.settings.json` `Values` in the current folder, as for the `routes` commands. Touches the
dead-letter container, the routes (read only) and, for `replay`, the endpoints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from azure.core.exceptions import AzureError, ClientAuthenticationError, ResourceNotFoundError, ServiceRequestError
from azure.storage.blob import BlobServiceClient, LinearRetry
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from routing.cli import routes as route_commands
from routing.cli.routes import LOCAL_SETTINGS, OutputFormat, OutputOption, _local_settings, write_json
from routing.cli.routes import open_rows as open_route_rows
from routing.cli.routes import reported as route_rows_reported
from routing.connections import Connection, resolve
from routing.deadletters import (
    UNCLASSIFIED_FOLDER,
    BlobDeadLetters,
    check_container_name,
    check_letter_name,
    redact,
)
from routing.deliver.pool import SenderPool
from routing.deliver.senders import KeyGroup, SendReport
from routing.errors import RoutingError
from routing.model import Outgoing
from routing.replay import Letter, ReplayReport, replay
from routing.routes.files import load_routes_file
from routing.routes.table import Endpoint, RouteTable
from routing.routes.tables import short_reason
from routing.settings import (
    DEADLETTER_STORAGE,
    DEFAULT_DEADLETTER_CONTAINER,
    ROUTES_STORAGE,
    connection_is_set,
)

console = Console()
errors = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    # Every message passes here: an SDK error can quote a request URL, and with it a SAS signature.
    return route_commands.fail(redact(message))


def warn(message: str) -> None:
    route_commands.warn(redact(message))


deadletters_app = typer.Typer(
    help="List, show and replay the dead letters kept in Blob Storage (or Azurite).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Exit code of `replay` when a letter could not be delivered (it stays in the store); 2 stays for errors.
REPLAY_FAILED_EXIT = 1
# Blobs read at once by `list` and `replay`: one request each, so a little parallelism pays.
READERS = 16

ConnectionStringOption = Annotated[
    str | None,
    typer.Option(
        "--connection-string",
        help=f"Storage connection string; else ${DEADLETTER_STORAGE}, else {LOCAL_SETTINGS} Values in this folder.",
        show_default=False,
    ),
]
ContainerOption = Annotated[
    str | None,
    typer.Option(
        "--container",
        help=f"Dead-letter container; else $DEADLETTER_CONTAINER, else {LOCAL_SETTINGS}, "
        f"else '{DEFAULT_DEADLETTER_CONTAINER}'.",
    ),
]
EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint", help=f"Only this endpoint's letters (case-insensitive; '{UNCLASSIFIED_FOLDER}' for unclassified)."
    ),
]


@dataclass(frozen=True, slots=True)
class Store:
    letters: BlobDeadLetters
    where: str  # for messages: "container 'x' at http://..." (never a query string: a SAS token is one)


def open_store(connection_string: str | None, container: str | None) -> Store:
    """The dead-letter container the user means: the option, then the environment, then local.settings.json."""
    local = _local_settings()
    try:
        if connection_string:
            connection = Connection(setting="--connection-string", secret=connection_string)
        elif connection_is_set(DEADLETTER_STORAGE, os.environ):
            connection = resolve(DEADLETTER_STORAGE, "blobServiceUri", os.environ)
        elif connection_is_set(DEADLETTER_STORAGE, local):
            connection = resolve(DEADLETTER_STORAGE, "blobServiceUri", local)
        else:
            raise fail(
                f"no dead-letter storage: pass --connection-string, set {DEADLETTER_STORAGE} (a connection string, "
                f"or {DEADLETTER_STORAGE}__blobServiceUri for your Azure identity), or add {DEADLETTER_STORAGE} to "
                f"the Values of {LOCAL_SETTINGS} in this folder (for Azurite: UseDevelopmentStorage=true)"
            )
    except RoutingError as exc:
        raise fail(str(exc)) from None
    candidates = [container, os.environ.get("DEADLETTER_CONTAINER"), local.get("DEADLETTER_CONTAINER")]
    name = next((c.strip() for c in candidates if c and c.strip()), DEFAULT_DEADLETTER_CONTAINER)
    try:
        check_container_name(name)
    except RoutingError as exc:
        raise fail(str(exc)) from None
    # One quick retry (the SDK's default waits 15 s and more between three): a person at the prompt
    # would rather see the error and run the command again.
    options: dict[str, Any] = {
        "retry_policy": LinearRetry(backoff=1, retry_total=1, random_jitter_range=0),
        "connection_timeout": 5,
        "read_timeout": 30,
    }
    try:
        if connection.secret:
            service = BlobServiceClient.from_connection_string(connection.secret, **options)
        else:
            assert connection.address is not None
            service = BlobServiceClient(connection.address, credential=connection.credential(), **options)
        client = service.get_container_client(name)
    except (ValueError, AzureError) as exc:  # a malformed connection string
        raise fail(f"the storage connection from {connection.setting} cannot be used: {short_reason(exc)}") from None
    letters = BlobDeadLetters(client)
    return Store(letters, letters.where)


@contextmanager
def reported(store: Store) -> Iterator[None]:
    """Turn the router's and the SDK's errors into one clear line and exit code 2."""
    try:
        yield
    except RoutingError as exc:
        raise fail(str(exc)) from None
    except ClientAuthenticationError as exc:
        raise fail(f"{store.where} refused the credentials: {short_reason(exc)}") from None
    except ServiceRequestError as exc:
        raise fail(
            f"cannot reach {store.where}: {short_reason(exc)} (check the connection; for Azurite, that it is running)"
        ) from None
    except AzureError as exc:
        raise fail(f"{store.where}: {short_reason(exc)}") from None


def _names(store: Store, endpoint: str | None) -> list[str]:
    folder = endpoint.strip().lower() if endpoint else None
    return [n for n in store.letters.names() if folder is None or n.split("/", 1)[0].lower() == folder]


def _read_all(
    store: Store, names: Sequence[str], advance: Callable[[], None] = lambda: None
) -> tuple[list[Letter], dict[str, str]]:
    """Every letter's record, in name order, and the blobs that are not a letter (name -> why)."""

    def read(name: str) -> Letter | str:
        try:
            record = store.letters.read(name)
        except ResourceNotFoundError:
            return "deleted meanwhile (replayed by someone else?)"
        except orjson.JSONDecodeError as exc:
            return f"not a dead letter: not JSON ({exc})"
        finally:
            advance()
        if not isinstance(record, dict):
            return f"not a dead letter: JSON {type(record).__name__}, not an object"
        return Letter(name=name, record=record)

    letters: list[Letter] = []
    unreadable: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        for name, result in zip(names, pool.map(read, names), strict=True):
            if isinstance(result, Letter):
                letters.append(result)
            else:
                unreadable[name] = result
    return letters, unreadable


def _summary(letter: Letter) -> dict[str, Any]:
    record = letter.record
    return {
        "name": letter.name,
        "endpoint": record.get("endpoint"),
        "code": record.get("code"),
        "eventType": record.get("eventType"),
        "orderKey": record.get("orderKey"),
        "time": record.get("deadLetteredAt"),
        "reason": record.get("reason"),
        "attempts": len(record.get("attempts") or []),
    }


def _text(value: Any) -> str:
    return "" if value is None else escape(str(value))


@deadletters_app.command("list")
def list_letters(
    endpoint: EndpointOption = None,
    code: Annotated[
        str | None, typer.Option("--code", help="Only letters with this reason code (e.g. delivery-failed).")
    ] = None,
    connection_string: ConnectionStringOption = None,
    container: ContainerOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """The dead letters, oldest first per endpoint: what failed, for which key, and why."""
    store = open_store(connection_string, container)
    with reported(store):
        letters, unreadable = _read_all(store, _names(store, endpoint))
    rows = [_summary(letter) for letter in letters]
    if code:
        rows = [r for r in rows if str(r["code"]).lower() == code.strip().lower()]
    if output is OutputFormat.json:
        write_json(rows)
    else:
        table = Table(title=f"Dead letters in {escape(store.where)}", title_justify="left")
        # The name is what `show` takes, so it folds rather than ending in "..."; short fields never wrap.
        table.add_column("Name", overflow="fold", ratio=3)
        table.add_column("Endpoint", overflow="fold")
        table.add_column("Code", no_wrap=True)
        table.add_column("Event type", overflow="fold")
        table.add_column("Order key", overflow="fold")
        table.add_column("Time", overflow="fold")
        table.add_column("Reason", overflow="fold", ratio=3)
        for r in rows:
            table.add_row(
                escape(r["name"]),
                _text(r["endpoint"] or "(unclassified)"),
                _text(r["code"]),
                _text(r["eventType"]),
                _text(r["orderKey"]),
                _text(r["time"]),
                _text(r["reason"]),
            )
        if not rows:
            table.add_row("(none)", "", "", "", "", "", "")
        console.print(table)
        console.print(f"{len(rows)} dead letters", highlight=False, soft_wrap=True)
    for name, why in unreadable.items():
        warn(f"{name}: {why}")


@deadletters_app.command()
def show(
    name: Annotated[str, typer.Argument(help="The letter's name, as `list` shows it.", show_default=False)],
    connection_string: ConnectionStringOption = None,
    container: ContainerOption = None,
) -> None:
    """One dead letter's record as JSON: the original message (body in base64), the reason, every attempt."""
    try:
        check_letter_name(name)
    except RoutingError as exc:
        raise fail(str(exc)) from None
    store = open_store(connection_string, container)
    with reported(store):
        try:
            record = store.letters.read(name)
        except ResourceNotFoundError:
            raise fail(f"no dead letter '{name}' in {store.where} (see `python -m routing deadletters list`)") from None
        except orjson.JSONDecodeError as exc:
            raise fail(f"'{name}' in {store.where} is not a dead letter: not JSON ({exc})") from None
    write_json(record)


class _DryRun:
    """A sender that takes everything and sends nothing: what a replay would send, where, in what order."""

    def __init__(self) -> None:
        self.sent: list[tuple[Endpoint, Outgoing]] = []

    def __call__(self, _endpoint: Endpoint) -> _DryRun:
        return self

    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        messages = tuple(m for g in groups for m in g.messages)
        self.sent.extend((endpoint, m) for m in messages)
        return SendReport(delivered=messages)

    def close(self) -> None:
        pass


def _route_table(routes: Path | None) -> RouteTable:
    if routes is not None:
        try:
            return load_routes_file(routes)
        except RoutingError as exc:
            raise fail(str(exc)) from None
    if not (connection_is_set(ROUTES_STORAGE, os.environ) or connection_is_set(ROUTES_STORAGE, _local_settings())):
        raise fail(
            f"no route table to replay with: pass --routes FILE, or set {ROUTES_STORAGE} (or add it to the "
            f"Values of {LOCAL_SETTINGS} in this folder) to use the routes table"
        )
    rows = open_route_rows(None, None)
    with route_rows_reported(rows):
        loaded = rows.load()
    if loaded.invalid:
        warn(
            f"{len(loaded.invalid)} invalid route rows (the router keeps its last good table while they are there); "
            "run `python -m routing routes validate`"
        )
    return loaded.table


def _sender_env() -> dict[str, str]:
    # As Core Tools does: local.settings.json Values, unless the environment already sets them.
    return {**_local_settings(), **os.environ}


def _missing_settings(endpoints: Sequence[Endpoint], env: Mapping[str, str]) -> list[str]:
    # The primary is always tried first (the secondary only when the primary is refused), so it must be set.
    return [
        f"endpoint '{e.name}' needs app setting {e.connection}"
        for e in endpoints
        if not connection_is_set(e.connection, env)
    ]


def _deleter(store: Store) -> Callable[[str], None]:
    def delete(name: str) -> None:
        # Already gone: someone else's replay delivered and deleted it first; the message is delivered.
        with contextlib.suppress(ResourceNotFoundError):
            store.letters.delete(name)

    return delete


def _report_json(report: ReplayReport) -> dict[str, Any]:
    return {
        "delivered": len(report.delivered),
        "failed": len(report.failed),
        "kept": len(report.kept),
        "deliveredLetters": list(report.delivered),
        "failedLetters": [{"name": n, "reason": r} for n, r in report.failed.items()],
        "keptLetters": [{"name": n, "reason": r} for n, r in report.kept.items()],
    }


def _reasons_table(title: str, reasons: Mapping[str, str]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("Name", overflow="fold")
    table.add_column("Why", overflow="fold")
    for name, why in reasons.items():
        table.add_row(escape(name), escape(why))
    return table


@deadletters_app.command("replay")
def replay_letters(
    *,
    endpoint: EndpointOption = None,
    routes: Annotated[
        Path | None,
        typer.Option("--routes", help=f"Routes file to replay with; else the routes table of ${ROUTES_STORAGE}."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be sent where, in order; send and delete nothing.")
    ] = False,
    connection_string: ConnectionStringOption = None,
    container: ContainerOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Send dead letters again, in order per key, with the current routes; each is deleted once delivered.

    Exits 1 if any could not be delivered (they stay in the store, with why).
    """
    table = _route_table(routes)
    store = open_store(connection_string, container)
    with reported(store):
        names = _names(store, endpoint)
    show_progress = errors.is_terminal and not dry_run
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=errors,
        transient=True,
        disable=not show_progress,
    ) as progress:
        reading = progress.add_task("reading", total=len(names))
        with reported(store):
            letters, unreadable = _read_all(store, names, lambda: progress.advance(reading))
            # After the letters: a write that had not finished when a letter was read still has its
            # marker now, and one that finished meanwhile has none (its letters are good).
            unconfirmed = store.letters.pending_writes()

        # The plan first (no I/O): it names the endpoints the replay needs, so a missing setting is an
        # error now rather than a retried failure per key.
        plan = _DryRun()
        planned = replay(letters, table=table, senders=plan, delete=lambda _name: None, unconfirmed=unconfirmed)
        planned.kept.update(unreadable)
        if dry_run:
            _print_plan(plan, planned, letters, output)
            return
        env = _sender_env()
        endpoints = list({e.name: e for e, _m in plan.sent}.values())
        if missing := _missing_settings(endpoints, env):
            raise fail(
                f"cannot replay: {'; '.join(missing)} (set it in the environment or in the Values of {LOCAL_SETTINGS})"
            )

        sending = progress.add_task("replaying", total=len(letters))
        senders = SenderPool(env=env)
        try:
            with reported(store):
                report = replay(
                    letters,
                    table=table,
                    senders=senders,
                    delete=_deleter(store),
                    progress=lambda n: progress.advance(sending, n),
                    unconfirmed=unconfirmed,
                )
        finally:
            senders.close()
    report.kept.update(unreadable)

    if output is OutputFormat.json:
        write_json(_report_json(report))
    else:
        console.print(
            f"Replayed from {escape(store.where)}: {len(report.delivered)} delivered (and deleted), "
            f"{len(report.failed)} failed, {len(report.kept)} kept",
            highlight=False,
            soft_wrap=True,
        )
        if report.failed:
            console.print(
                _reasons_table("Failed (kept in the store; replay again once the cause is fixed)", report.failed)
            )
        if report.kept:
            console.print(_reasons_table("Kept (not sent)", report.kept))
    if report.failed:
        raise typer.Exit(code=REPLAY_FAILED_EXIT)


def _print_plan(plan: _DryRun, planned: ReplayReport, letters: Sequence[Letter], output: OutputFormat) -> None:
    name_of = {str(letter.record.get("id")): letter.name for letter in letters}
    sends = [
        {
            "name": name_of.get(message.message_id, ""),
            "endpoint": endpoint.name,
            "endpointType": endpoint.type.value,
            "eventType": message.event_type.value,
            "orderKey": message.order_key,
            "messageId": message.message_id,
        }
        for endpoint, message in plan.sent
    ]
    if output is OutputFormat.json:
        write_json({"wouldSend": sends, "kept": [{"name": n, "reason": r} for n, r in planned.kept.items()]})
        return
    table = Table(title="Would send, in this order per endpoint and key (dry run)", title_justify="left")
    table.add_column("Name", overflow="fold")
    table.add_column("Endpoint")
    table.add_column("Event type")
    table.add_column("Order key", overflow="fold")
    for send in sends:
        table.add_row(escape(send["name"]), escape(send["endpoint"]), send["eventType"], escape(send["orderKey"]))
    if not sends:
        table.add_row("(none)", "", "", "")
    console.print(table)
    if planned.kept:
        console.print(_reasons_table("Would keep (not sent)", planned.kept))
    console.print(
        f"{len(sends)} messages would be sent, {len(planned.kept)} letters kept; nothing sent", highlight=False
    )
