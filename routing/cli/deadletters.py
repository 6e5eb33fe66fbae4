"""`python -m routing deadletters ...`: list, show, replay, delete and purge dead letters, kept in Blob
Storage or in a local run's folder (`--dir`, its deadletter.jsonl).

`list` summarises (per endpoint and code), `list --all` gives each letter in original order per key and
what a held-behind letter waits for. `replay` sends letters again through the same senders the functions
use (a local folder's: into its endpoint files), honouring the current route table (`--routes FILE`,
else the routes table of `ROUTES_STORAGE`), in their original order per key; it deletes a letter only
once its message is delivered (`routing.replay` does the work) and adds a failed try to the letter's
attempts. `delete` and `purge` ask first (or take `--yes`). The storage comes from
`--connection-string`, else the environment (`DEADLETTER_STORAGE`, `DEADLETTER_CONTAINER`), else
`local.settings.json` `Values` in the current folder, as for the `routes` commands. Touches the
dead-letter container (never its folders that hold no letters) or the folder's deadletter.jsonl, the
routes (read only) and, for `replay`, the endpoints.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.storage.blob import BlobServiceClient, LinearRetry
from rich.markup import escape
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from routing.cli import routes as route_commands
from routing.cli.command import App, examples
from routing.cli.output import (
    OutputFormat,
    OutputOption,
    console,
    errors,
    fail,
    printable,
    warn,
    write_json,
)
from routing.cli.routes import LOCAL_SETTINGS, YesOption, _local_settings
from routing.cli.routes import open_rows as open_route_rows
from routing.cli.routes import reported as route_rows_reported
from routing.connections import Connection, resolve
from routing.deadletters import FILE_NAME as DEAD_LETTER_FILE
from routing.deadletters import (
    UNCLASSIFIED_FOLDER,
    BlobDeadLetters,
    LocalDeadLetters,
    check_container_name,
    check_letter_name,
    is_container_missing,
    parse_time,
    redact,
    rfc3339,
)
from routing.deliver.pool import SenderPool
from routing.deliver.senders import FileSender, KeyGroup, SenderFor, SendReport
from routing.errors import RoutingError
from routing.model import Outgoing
from routing.parking import BlobParking, ParkedKey, Parking, keys_of
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

deadletters_app = App(
    help="List, show, replay, delete and purge dead letters in Blob Storage (or Azurite) or a local run's folder.",
    epilog=examples("routing deadletters list", "routing deadletters replay --dry-run"),
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


DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help=f"A local run's output folder (`routing run --out`): its {DEAD_LETTER_FILE} instead of Blob Storage.",
        show_default=False,
    ),
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Only letters enqueued at or after this: a time (2026-11-26T09:00Z; UTC without an offset) "
        "or a duration back from now (30m, 2h, 1d).",
        show_default=False,
    ),
]


@dataclass(frozen=True, slots=True)
class Store:
    letters: BlobDeadLetters | LocalDeadLetters
    where: str  # for messages: "container 'x' at http://..." (never a query string: a SAS token is one)
    missing: str  # the error when the container is not there
    folder: Path | None = None  # a local run's folder (`--dir`): replay sends into its endpoint files


def open_store(connection_string: str | None, container: str | None, directory: Path | None = None) -> Store:
    """The dead letters the user means: a local folder (`--dir`), else the container of the option, the
    environment, then local.settings.json."""
    if directory is not None:
        return _open_folder(directory, connection_string, container)
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
                f"the Values of {LOCAL_SETTINGS} in this folder (for Azurite: UseDevelopmentStorage=true), "
                "or pass --dir for a local run's folder"
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
        raise fail(f"the storage connection from {connection.setting} cannot be used: {_reason(exc)}") from None
    letters = BlobDeadLetters(client)
    missing = (
        f"container '{name}' does not exist at {letters.account} "
        "(nothing was ever dead-lettered there, or wrong --container)"
    )
    return Store(letters, letters.where, missing)


def _open_folder(directory: Path, connection_string: str | None, container: str | None) -> Store:
    if connection_string or container:
        raise fail("--dir reads a local folder: pass it without --connection-string and --container")
    if not directory.is_dir():
        problem = "is not a folder" if directory.exists() else "does not exist"
        raise fail(f"--dir {directory} {problem} (give the --out folder of `python -m routing run`)")
    letters = LocalDeadLetters(directory)
    return Store(letters, letters.where, f"{letters.where} does not exist", folder=directory)


def _reason(exc: BaseException) -> str:
    """An SDK error in one line, without the SDK's wrapping and without secrets."""
    text = short_reason(exc)
    if match := _WRAPPED.fullmatch(text):
        text = match.group(1)
    code = getattr(exc, "error_code", None)
    if code is not None and str(getattr(code, "value", code)) not in text:
        text = f"{text} ({getattr(code, 'value', code)})"
    return redact(text)


# azure-storage-blob's message for an answer it has no model for: "Operation returned an invalid status 'X'".
_WRAPPED = re.compile(r"Operation returned an invalid status '(.*)'")
# HTTP statuses of a service that would not take the credentials (a wrong key, an expired SAS, a role missing).
_REFUSED = {401, 403}


@contextmanager
def reported(store: Store) -> Iterator[None]:
    """Turn the router's and the SDK's errors into one clear line and exit code 2."""
    try:
        yield
    except RoutingError as exc:
        raise fail(str(exc)) from None
    except ClientAuthenticationError as exc:
        if exc.response is None:  # raised before any request: the key itself is unusable
            raise fail(f"the credentials for {store.where} cannot be used: {_reason(exc)}") from None
        raise fail(f"{store.where} refused the credentials: {_reason(exc)}") from None
    except ResourceNotFoundError as exc:
        if is_container_missing(exc):
            raise fail(store.missing) from None
        raise fail(f"{store.where}: {_reason(exc)}") from None
    except HttpResponseError as exc:
        if exc.status_code in _REFUSED:
            raise fail(
                f"{store.where} refused the credentials: {_reason(exc)} (check the key or SAS, "
                "or that your identity may read and delete blobs there)"
            ) from None
        raise fail(f"{store.where}: {_reason(exc)}") from None
    except ServiceRequestError as exc:
        raise fail(
            f"cannot reach {store.where}: {_reason(exc)} (check the connection; for Azurite, that it is running)"
        ) from None
    except AzureError as exc:
        raise fail(f"{store.where}: {_reason(exc)}") from None
    except OSError as exc:  # a local folder that cannot be read or written
        raise fail(f"{store.where}: {exc.strerror or exc} ({exc.filename})") from None


def _names(store: Store, endpoint: str | None) -> list[str]:
    """The letters' names; a container that is not there is an error (a wrong --container), not nothing."""
    return store.letters.names(endpoint, missing_ok=False)


def _read_all(
    store: Store, names: Sequence[str], advance: Callable[[], None] = lambda: None
) -> tuple[list[Letter], dict[str, str]]:
    """Every letter's record, in name order, and the blobs that are not a letter (name -> why)."""

    def read(name: str) -> Letter | str:
        try:
            record = store.letters.read(name)
        except (ResourceNotFoundError, KeyError):
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
    if isinstance(store.letters, LocalDeadLetters):
        unreadable.update(store.letters.others())
    return letters, unreadable


# --- choosing letters: time, code, order ------------------------------------------------------------------

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_moment(option: str, text: str, now: datetime) -> datetime:
    """`--since`/`--before`: an ISO time (UTC unless it has an offset) or a duration back from `now`
    (`30m`, `2h`, `1d`, `1h30m`)."""
    compact = text.strip().lower()
    if compact and _DURATION.sub("", compact) == "":
        delta = timedelta()
        for amount, unit in _DURATION.findall(compact):
            delta += timedelta(**{_UNITS[unit]: int(amount)})
        return now - delta
    moment = parse_time(text.strip().replace("z", "Z"))
    if moment is None:
        raise fail(
            f"{option} {text!r} is neither a time (e.g. 2026-11-26T09:00Z, UTC unless it has an offset) "
            "nor a duration back from now (e.g. 30m, 2h, 1d)"
        )
    return moment


def enqueued(letter: Letter) -> datetime | None:
    """When the letter's message was enqueued on its ingress hub (None if the record does not say)."""
    original = letter.record.get("original")
    return parse_time(original.get("enqueuedTime")) if isinstance(original, Mapping) else None


def _select(
    letters: Sequence[Letter],
    *,
    code: str | None = None,
    since: datetime | None = None,
    before: datetime | None = None,
) -> list[Letter]:
    """The letters with the code (case-insensitive) enqueued in [since, before); an undated letter has no
    time, so a time filter leaves it out."""
    wanted = code.strip().lower() if code else None
    chosen = []
    for letter in letters:
        if wanted is not None and str(letter.record.get("code")).lower() != wanted:
            continue
        if since is not None or before is not None:
            moment = enqueued(letter)
            if moment is None or (since is not None and moment < since) or (before is not None and moment >= before):
                continue
        chosen.append(letter)
    return chosen


def _key(letter: Letter) -> tuple[str, str]:
    return (letter.name.split("/", 1)[0], str(letter.record.get("orderKey") or ""))


def in_order(letters: Sequence[Letter]) -> list[Letter]:
    """By endpoint folder (as the names sort), then order key, then the original order of the key (hub,
    partition, sequence number, index): the order a replay sends them in."""
    return sorted(letters, key=lambda letter: (*_key(letter), letter.position, letter.name))


HELD = "held-behind"


def waits_for(letters: Sequence[Letter]) -> dict[str, str | None]:
    """For each held-behind letter, the letter it waits for: the earliest letter of its endpoint and key
    that is not held (None when there is none left: it was replayed or deleted)."""
    first: dict[tuple[str, str], str] = {}
    for letter in in_order(letters):
        if letter.record.get("code") != HELD:
            first.setdefault(_key(letter), letter.name)
    return {letter.name: first.get(_key(letter)) for letter in letters if letter.record.get("code") == HELD}


def _summary(letter: Letter, waiting: Mapping[str, str | None]) -> dict[str, Any]:
    record = letter.record
    moment = enqueued(letter)
    row = {
        "name": letter.name,
        "endpoint": record.get("endpoint"),
        "code": record.get("code"),
        "eventType": record.get("eventType"),
        "orderKey": record.get("orderKey"),
        "enqueuedTime": rfc3339(moment) if moment is not None else None,
        "time": record.get("deadLetteredAt"),
        "reason": record.get("reason"),
        "attempts": len(record.get("attempts") or []),
    }
    if letter.name in waiting:
        row["waitsFor"] = waiting[letter.name]
    return row


def _letters(count: int) -> str:
    return f"{count} dead letter{'s' if count != 1 else ''}"


def _hour(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%dT%H}Z" if moment is not None else "undated"  # ISO 8601 to the hour


def _endpoint_text(endpoint: Any) -> str:
    return "(unclassified)" if not endpoint else str(endpoint)


def summary_table(letters: Sequence[Letter], title: str) -> Table:
    """Letters per endpoint and code: how many, and the oldest and newest hour they were enqueued (UTC)."""
    groups: dict[tuple[str, str], list[Letter]] = {}
    for letter in in_order(letters):
        groups.setdefault((letter.name.split("/", 1)[0], str(letter.record.get("code"))), []).append(letter)
    table = Table(title=title, title_justify="left")
    table.add_column("Endpoint", overflow="fold", min_width=14)
    table.add_column("Code", no_wrap=True)
    table.add_column("Count", justify="right", no_wrap=True)
    table.add_column("Oldest hour", no_wrap=True)
    table.add_column("Newest hour", no_wrap=True)
    for (_folder, code), members in groups.items():
        dated = sorted(m for m in (enqueued(x) for x in members) if m is not None)
        undated = len(dated) < len(members)
        table.add_row(
            escape(_endpoint_text(members[0].record.get("endpoint"))),
            escape(code),
            str(len(members)),
            _hour(dated[0]) if dated else "undated",
            "undated" if undated else _hour(dated[-1]),
        )
    if not groups:
        table.add_row("(none)", "", "0", "", "")
    return table


def _print_letters(letters: Sequence[Letter], waiting: Mapping[str, str | None]) -> None:
    """Each letter, grouped by endpoint and key in replay order. A name is printed whole on a line of its
    own, never folded or cut (it is what `show`, `delete` and a person's copy and paste take)."""
    key: tuple[str, str] | None = None
    for letter in letters:
        record = letter.record
        if _key(letter) != key:
            first, key = key is None, _key(letter)
            order_key = record.get("orderKey")
            console.print(
                Text.assemble(
                    ("" if first else "\n", ""),
                    (_endpoint_text(record.get("endpoint")), "bold"),
                    f", key {order_key}" if order_key else ", no order key",
                ),
                soft_wrap=True,
            )
        console.print(Text(f"  {letter.name}"), soft_wrap=True, highlight=False)
        attempts = len(record.get("attempts") or [])
        moment = enqueued(letter)
        facts = [
            str(record.get("code")),
            str(record.get("eventType") or "no event type"),
            f"enqueued {rfc3339(moment)}" if moment is not None else "undated",
            f"{attempts} attempt{'s' if attempts != 1 else ''}",
        ]
        console.print(Padding(Text(printable("  ".join(facts))), (0, 0, 0, 4)), highlight=False)
        if letter.name in waiting:
            ahead = waiting[letter.name]
            if ahead is None:
                console.print(
                    Text("    waits for no letter now (the one in front was replayed or deleted)"), soft_wrap=True
                )
            else:
                console.print(Text(f"    waits for {ahead}"), soft_wrap=True, highlight=False)
        console.print(Padding(Text(printable(str(record.get("reason") or ""))), (0, 0, 0, 4)), highlight=False)


@deadletters_app.command(
    "list",
    epilog=examples(
        "routing deadletters list",
        "routing deadletters list --all --endpoint sensor-alerts --since 2h",
        "routing deadletters list --dir out -o json   # a local run's letters",
    ),
)
def list_letters(
    *,
    endpoint: EndpointOption = None,
    code: Annotated[
        str | None, typer.Option("--code", help="Only letters with this reason code (e.g. delivery-failed).")
    ] = None,
    since: SinceOption = None,
    every: Annotated[
        bool, typer.Option("--all", "-a", help="Each letter, in original order per endpoint and key (not a summary).")
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most this many letters, in that order (implies --all).")
    ] = None,
    connection_string: ConnectionStringOption = None,
    container: ContainerOption = None,
    directory: DirOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """How many dead letters there are, per endpoint and code; `--all` for each letter and why.

    `-o json` gives every letter (in original order per endpoint and key)."""
    moment = parse_moment("--since", since, datetime.now(UTC)) if since else None
    store = open_store(connection_string, container, directory)
    with reported(store):
        letters, unreadable = _read_all(store, _names(store, endpoint))
    waiting = waits_for(letters)
    chosen = in_order(_select(letters, code=code, since=moment))
    shown = chosen[:limit] if limit is not None else chosen
    if output is OutputFormat.json:
        write_json([_summary(letter, waiting) for letter in shown])
    elif every or limit is not None:
        console.print(
            f"Dead letters in {escape(store.where)}, in original order per endpoint and key",
            highlight=False,
            soft_wrap=True,
        )
        if shown:
            console.print()
        _print_letters(shown, waiting)
        more = f" of {len(chosen)} (--limit)" if len(shown) < len(chosen) else ""
        console.print(f"\n{_letters(len(shown))}{more}", highlight=False, soft_wrap=True)
    else:
        console.print(summary_table(chosen, f"Dead letters in {escape(store.where)} (hours enqueued, UTC)"))
        console.print(
            f"{_letters(len(chosen))}; `deadletters list --all` lists each, `deadletters show NAME` shows one",
            highlight=False,
            soft_wrap=True,
        )
    for name, why in unreadable.items():
        warn(f"{name}: {why}")


def _body(data: Any) -> tuple[str, str | None]:
    """How to show a base64 body: (what it is, its text), the text pretty when JSON, None when binary."""
    try:
        raw = base64.b64decode(str(data), validate=True)
    except ValueError:
        return "not valid base64 (see -o json)", None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"{len(raw)} bytes, not UTF-8 text (bodyBase64 in -o json)", None
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"text, {len(raw)} bytes", text
    return f"JSON, {len(raw)} bytes", orjson.dumps(parsed, option=orjson.OPT_INDENT_2).decode()


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _print_record(name: str, record: Mapping[str, Any], where: str) -> None:
    given = record.get("original")
    original: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    console.print(Text.assemble((name, "bold"), f"  in {where}"), soft_wrap=True, highlight=False)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim", no_wrap=True)
    facts.add_column(overflow="fold")
    position = (
        f"{original.get('source')}, partition {original.get('partition')}, sequence {original.get('sequenceNumber')}"
    )
    index = f"{record.get('index', 0)}" + (f" (and {int(record['count']) - 1} more)" if record.get("count") else "")
    for label, value in [
        ("endpoint", _endpoint_text(record.get("endpoint"))),
        ("code", record.get("code")),
        ("reason", record.get("reason")),
        ("event type", record.get("eventType")),
        ("order key", record.get("orderKey")),
        ("message id", record.get("id")),
        ("enqueued", original.get("enqueuedTime")),
        ("from", position),
        ("position", index),
        ("dead-lettered", record.get("deadLetteredAt")),
    ]:
        if value is not None:
            facts.add_row(label, Text(printable(str(value))))
    console.print(facts)
    attempts = record.get("attempts") or []
    if attempts:
        table = Table(title=f"Attempts ({len(attempts)})", title_justify="left")
        table.add_column("Time", no_wrap=True)
        table.add_column("Error", overflow="fold")
        for attempt in attempts:
            table.add_row(Text(printable(str(attempt.get("time")))), Text(printable(str(attempt.get("error")))))
        console.print(table)
    for title, part in [("Original message", original), ("Envelope sent", record.get("envelope"))]:
        if not isinstance(part, Mapping):
            continue
        kind, text = _body(part.get("bodyBase64"))
        content_type = f", {part['contentType']}" if part.get("contentType") else ""
        console.print(Text.assemble("\n", (title, "bold"), f" ({kind}{content_type})"), highlight=False)
        if text is not None:
            console.print(Text(printable(text)), highlight=False)
        for label in ("properties", "systemProperties"):
            if part.get(label):
                console.print(Text(f"{label}: {printable(_json_text(part[label]))}"), highlight=False)


@deadletters_app.command(
    epilog=examples(
        "routing deadletters show sensor-alerts/2026/11/26/09/<id>.json",
        "routing deadletters show sensor-alerts/2026/11/26/09/<id>.json -o json",
    )
)
def show(
    name: Annotated[str, typer.Argument(help="The letter's name, as `list --all` shows it.", show_default=False)],
    connection_string: ConnectionStringOption = None,
    container: ContainerOption = None,
    directory: DirOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """One dead letter: why, every attempt, and the original message and envelope (bodies decoded when they
    are text or JSON). `-o json` gives the record as stored (bodies in base64)."""
    try:
        check_letter_name(name)
    except RoutingError as exc:
        raise fail(str(exc)) from None
    store = open_store(connection_string, container, directory)
    with reported(store):
        try:
            record = store.letters.read(name)
        except (ResourceNotFoundError, KeyError) as exc:
            if isinstance(exc, ResourceNotFoundError) and is_container_missing(exc):
                raise
            raise fail(
                f"no dead letter '{name}' in {store.where} (see `python -m routing deadletters list --all`)"
            ) from None
        except orjson.JSONDecodeError as exc:
            raise fail(f"'{name}' in {store.where} is not a dead letter: not JSON ({exc})") from None
    if output is OutputFormat.json:
        write_json(record)
    elif not isinstance(record, Mapping):
        raise fail(f"'{name}' in {store.where} is not a dead letter: JSON {type(record).__name__}, not an object")
    else:
        _print_record(name, record, store.where)


# --- delete and purge --------------------------------------------------------------------------------------


def _delete(store: Store, names: Sequence[str]) -> None:
    """Delete the letters (one already gone is fine: someone else deleted or replayed it)."""

    def delete(name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError, KeyError):
            store.letters.delete(name)

    with ThreadPoolExecutor(max_workers=READERS) as pool:
        list(pool.map(delete, names))
    if isinstance(store.letters, LocalDeadLetters):
        store.letters.save()


def _print_deleted(store: Store, names: Sequence[str], output: OutputFormat) -> None:
    if output is OutputFormat.json:
        write_json({"deleted": list(names)})
    else:
        console.print(f"Deleted {_letters(len(names))} from {escape(store.where)}", highlight=False, soft_wrap=True)


@deadletters_app.command(
    "delete", epilog=examples("routing deadletters delete sensor-alerts/2026/11/26/09/<id>.json --yes")
)
def delete_letters(
    names: Annotated[
        list[str], typer.Argument(help="The letters' names, as `list --all` shows them.", show_default=False)
    ],
    *,
    yes: YesOption = False,
    connection_string: ConnectionStringOption = None,
    container: ContainerOption = None,
    directory: DirOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Delete dead letters by name, after asking (their messages are not sent: see `replay`)."""
    problems = []
    for name in names:
        try:
            check_letter_name(name)
        except RoutingError as exc:
            problems.append(str(exc))
    if problems:
        raise fail("; ".join(problems))
    unique = list(dict.fromkeys(names))
    store = open_store(connection_string, container, directory)
    with reported(store):
        absent = [name for name in unique if not store.letters.exists(name)]
        if absent:
            raise fail(
                f"no dead letter {', '.join(repr(n) for n in absent)} in {store.where}, so nothing was deleted "
                "(see `python -m routing deadletters list --all`)"
            )
        count = f"{len(unique)} dead letter{'s' if len(unique) != 1 else ''}"
        route_commands.confirm(f"Delete {count} from {store.where} ({', '.join(unique)})?", yes)
        _delete(store, unique)
    _print_deleted(store, unique, output)


@deadletters_app.command(
    epilog=examples(
        "routing deadletters purge --endpoint sensor-alerts --before 7d",
        "routing deadletters purge --code expired --yes",
    )
)
def purge(
    *,
    endpoint: EndpointOption = None,
    code: Annotated[str | None, typer.Option("--code", help="Only letters with this reason code.")] = None,
    since: SinceOption = None,
    before: Annotated[
        str | None,
        typer.Option(
            "--before",
            help="Only letters enqueued before this: a time or a duration back from now.",
            show_default=False,
        ),
    ] = None,
    yes: YesOption = False,
    connection_string: ConnectionStringOption = None,
    container: ContainerOption = None,
    directory: DirOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Delete every dead letter (or those of an endpoint, a code, a time), after showing how many will go.

    Pending markers, parked messages and endpoint health are never touched."""
    now = datetime.now(UTC)
    low = parse_moment("--since", since, now) if since else None
    high = parse_moment("--before", before, now) if before else None
    store = open_store(connection_string, container, directory)
    with reported(store):
        letters, unreadable = _read_all(store, _names(store, endpoint))
        chosen = in_order(_select(letters, code=code, since=low, before=high))
        names = [letter.name for letter in chosen]
        if not (code or low or high):
            # Everything in the letters' folders goes, blobs that are not letters too; lines of a local file
            # that are no letter stay (they have no name to delete them by).
            names += [name for name in unreadable if not name.startswith("line ")]
        if not names:
            if output is OutputFormat.json:
                write_json({"deleted": []})
            else:
                console.print(f"No dead letters in {escape(store.where)} match: nothing deleted", highlight=False)
            return
        errors.print(summary_table(chosen, "Would delete"))
        others = len(names) - len(chosen)
        also = f" and {others} blobs that are not letters" if others else ""
        route_commands.confirm(f"Delete these {_letters(len(chosen))}{also} from {store.where}?", yes)
        _delete(store, names)
    _print_deleted(store, names, output)


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
        with contextlib.suppress(ResourceNotFoundError, KeyError):
            store.letters.delete(name)

    return delete


def _record_attempts(store: Store, failed: Mapping[str, str]) -> None:
    """Add this replay's failed try to each letter that failed (its `attempts`), so the letter tells every
    try. A letter rewritten meanwhile (by the router, or another replay) keeps what that wrote."""

    def record(item: tuple[str, str]) -> str | None:
        name, error = item
        try:
            store.letters.record_attempt(name, error)
        except ResourceModifiedError:
            return f"{name}: this attempt is not recorded in it: it changed meanwhile"
        except (ResourceNotFoundError, KeyError):
            return None  # deleted meanwhile: nothing to record it in
        except AzureError as exc:
            return f"{name}: this attempt is not recorded in it: {_reason(exc)}"
        return None

    with ThreadPoolExecutor(max_workers=READERS) as pool:
        problems = [p for p in pool.map(record, failed.items()) if p is not None]
    for problem in problems:
        warn(problem)


def _report_json(report: ReplayReport) -> dict[str, Any]:
    return {
        "delivered": len(report.delivered),
        "failed": len(report.failed),
        "kept": len(report.kept),
        "parked": len(report.parked),
        "deliveredLetters": list(report.delivered),
        "parkedLetters": list(report.parked),
        "failedLetters": [{"name": n, "reason": r} for n, r in report.failed.items()],
        "keptLetters": [{"name": n, "reason": r} for n, r in report.kept.items()],
    }


def _print_reasons(title: str, reasons: Mapping[str, str]) -> None:
    """Letters and why, each name whole on a line of its own (never folded: `show` takes it)."""
    console.print(Text(f"\n{title}", style="bold"), soft_wrap=True)
    for name, why in reasons.items():
        console.print(Text(f"  {name}"), soft_wrap=True, highlight=False)
        console.print(Padding(Text(printable(why)), (0, 0, 0, 4)), highlight=False)


@deadletters_app.command(
    "replay",
    epilog=examples(
        "routing deadletters replay --dry-run",
        "routing deadletters replay --endpoint raw --routes routes.json",
        "routing deadletters replay --dir out   # a local run's letters, into its endpoint files",
    ),
)
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
    directory: DirOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Send dead letters again, in order per key, with the current routes; each is deleted once delivered.

    With --dir, a local run's letters go to that folder's endpoint files, as `routing run` writes them.
    Exits 1 if any could not be delivered (they stay in the store, with why, this try added to their
    attempts).
    """
    table = _route_table(routes)
    store = open_store(connection_string, container, directory)
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
        senders: SenderFor
        if store.folder is not None:
            # A local run's letters go where `routing run` sends: the folder's <endpoint>.jsonl files.
            files = FileSender(store.folder)
            senders, closing = (lambda _endpoint: files), files.close
        else:
            env = _sender_env()
            endpoints = list({e.name: e for e, _m in plan.sent}.values())
            if missing := _missing_settings(endpoints, env):
                raise fail(
                    f"cannot replay: {'; '.join(missing)} "
                    f"(set it in the environment or in the Values of {LOCAL_SETTINGS})"
                )
            pool = SenderPool(env=env)
            senders, closing = pool, pool.close
        # Keys parked now (an endpoint's outage, routing/parking.py): their letters are parked behind them,
        # at their own position, rather than sent ahead of (or behind) the parked messages.
        parking: Parking | None = None
        parked: frozenset[ParkedKey] = frozenset()
        if isinstance(store.letters, BlobDeadLetters):
            parking = Parking(BlobParking(store.letters.container))
            with reported(store):
                parked = frozenset(keys_of(parking.store.snapshot()))

        sending = progress.add_task("replaying", total=len(letters))
        try:
            with reported(store):
                report = replay(
                    letters,
                    table=table,
                    senders=senders,
                    delete=_deleter(store),
                    progress=lambda n: progress.advance(sending, n),
                    unconfirmed=unconfirmed,
                    parked=parked,
                    park=None if parking is None else parking.park_replayed,
                )
        finally:
            closing()
            # A local folder's letters are removed once their messages are in the endpoint files.
            if isinstance(store.letters, LocalDeadLetters):
                with reported(store):
                    store.letters.save()
        with reported(store):
            _record_attempts(store, report.failed)
            if isinstance(store.letters, LocalDeadLetters):
                store.letters.save()
    report.kept.update(unreadable)

    if output is OutputFormat.json:
        write_json(_report_json(report))
    else:
        console.print(
            f"Replayed from {escape(store.where)}: {len(report.delivered)} delivered (and deleted), "
            f"{len(report.failed)} failed, {len(report.kept)} kept"
            + (
                f", {len(report.parked)} parked behind their key (the redelivery sends them in order)"
                if report.parked
                else ""
            ),
            highlight=False,
            soft_wrap=True,
        )
        if report.failed:
            _print_reasons(
                "Failed (kept in the store, this try added to its attempts; replay again once the cause is fixed)",
                report.failed,
            )
        if report.kept:
            _print_reasons("Kept (not sent)", report.kept)
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
    console.print(Text("Would send, in this order per endpoint and key (dry run)", style="bold"), soft_wrap=True)
    for send in sends:
        console.print(Text(f"  {send['name']}"), soft_wrap=True, highlight=False)
        console.print(
            Text(f"    to {send['endpoint']} ({send['eventType']}, key {printable(send['orderKey'])})"),
            soft_wrap=True,
            highlight=False,
        )
    if not sends:
        console.print("  (none)")
    if planned.kept:
        _print_reasons("Would keep (not sent)", planned.kept)
    console.print(
        f"{len(sends)} messages would be sent, {len(planned.kept)} letters kept; nothing sent", highlight=False
    )
