"""`python -m routing routes ...`: list, show, add, update, delete, enable, disable, validate, import and
export the routes in Table Storage, and `test` an event against them (a dry run, like IoT Hub's Test Route).

Every write goes through the routes-file validator first and is guarded by the row's ETag, so two
people editing at once cannot overwrite each other silently. The storage comes from `--connection-string`,
else the environment (`ROUTES_STORAGE`, `ROUTES_TABLE`), else `local.settings.json` `Values` in the
current folder. Touches the routes table only (through `routing.routes.tables`).
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import orjson
import typer
from azure.core.exceptions import AzureError, ClientAuthenticationError, ServiceRequestError
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from routing.cli.command import App, choices, examples
from routing.cli.output import OutputFormat, OutputOption, console, errors, fail, warn, write_json
from routing.connections import Connection, resolve
from routing.errors import Problem, RouteTableError, RoutingError
from routing.explain import explain
from routing.ingest.classify import classify
from routing.ingest.ingress import parse_line
from routing.model import EndpointType, EnvelopeFormat
from routing.routes.files import load_routes_file
from routing.routes.filters import FilterLanguage
from routing.routes.table import FIELDS, PARTITIONING, REQUIRED, Endpoint, RouteTable
from routing.routes.tables import (
    RouteRows,
    Row,
    TableLoad,
    describe,
    row_key,
    short_reason,
    table_client,
    validated,
)
from routing.settings import DEFAULT_ROUTES_TABLE, ROUTES_STORAGE, connection_is_set, table_name_problem

routes_app = App(
    help="Edit and check the routes in Azure Table Storage (or Azurite).",
    epilog=examples(
        "routing routes import samples/routes.json",
        "routing routes list",
        "routing routes test --event event.json",
    ),
)

LOCAL_SETTINGS = "local.settings.json"
# Exit code of `validate` when it found invalid rows; 2 stays for errors (as in every command).
INVALID_ROWS_EXIT = 1


def interactive() -> bool:
    """Whether a person can answer a question (tests stand in for one by replacing this)."""
    return sys.stdin.isatty()


def confirm(question: str, yes: bool) -> None:
    """Ask before a change that cannot be undone; as az does, refuse without a terminal unless --yes."""
    if yes:
        return
    if not interactive():
        raise fail(f"{question} Cannot ask without a terminal: pass --yes to go ahead")
    if not typer.confirm(question, default=False, err=True):
        errors.print("Nothing changed.", highlight=False)
        raise typer.Exit(code=1)


YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Go ahead without asking.")]
ConnectionStringOption = Annotated[
    str | None,
    typer.Option(
        "--connection-string",
        help=f"Storage connection string; else ${ROUTES_STORAGE}, else {LOCAL_SETTINGS} Values in this folder.",
        show_default=False,
    ),
]
TableOption = Annotated[
    str | None,
    typer.Option(
        "--table", help=f"Routes table; else $ROUTES_TABLE, else {LOCAL_SETTINGS}, else '{DEFAULT_ROUTES_TABLE}'."
    ),
]
NameArgument = Annotated[str, typer.Argument(help="Endpoint name (case-insensitive).", show_default=False)]


# A JSON string, or a comment: Core Tools reads local.settings.json with comments allowed (Newtonsoft).
_STRING_OR_COMMENT = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.DOTALL)


def _without_comments(text: str) -> str:
    return _STRING_OR_COMMENT.sub(lambda m: m.group(0) if m.group(0).startswith('"') else " ", text)


def _local_settings() -> Mapping[str, str]:
    """`Values` of local.settings.json in this folder, read as Core Tools reads it (comments, a BOM)."""
    path = Path.cwd() / LOCAL_SETTINGS
    if not path.is_file():
        return {}
    try:
        settings = orjson.loads(_without_comments(path.read_text(encoding="utf-8-sig")))
        if isinstance(settings, dict) and settings.get("IsEncrypted") is True:
            raise fail(f"{path} is encrypted (IsEncrypted: true): run `func settings decrypt` first")
        values = settings.get("Values") or {}
        return {str(k): str(v) for k, v in values.items() if v is not None}
    except (orjson.JSONDecodeError, AttributeError, UnicodeDecodeError):
        raise fail(f"{path} is not a JSON object with a 'Values' object; fix it or pass --connection-string") from None


def open_rows(connection_string: str | None, table: str | None) -> RouteRows:
    """The routes table the user means: the option, then the environment, then local.settings.json."""
    local = _local_settings()
    try:
        if connection_string:
            connection = Connection(setting="--connection-string", secret=connection_string)
        elif connection_is_set(ROUTES_STORAGE, os.environ):
            connection = resolve(ROUTES_STORAGE, "tableServiceUri", os.environ)
        elif connection_is_set(ROUTES_STORAGE, local):
            connection = resolve(ROUTES_STORAGE, "tableServiceUri", local)
        else:
            raise fail(
                f"no routes storage: pass --connection-string, set {ROUTES_STORAGE} (a connection string, or "
                f"{ROUTES_STORAGE}__tableServiceUri for your Azure identity), or add {ROUTES_STORAGE} to the "
                f"Values of {LOCAL_SETTINGS} in this folder (for Azurite: UseDevelopmentStorage=true)"
            )
    except RoutingError as exc:
        raise fail(str(exc)) from None
    candidates = [
        ("--table", table or ""),
        ("$ROUTES_TABLE", os.environ.get("ROUTES_TABLE", "")),
        (f"ROUTES_TABLE in {LOCAL_SETTINGS}", local.get("ROUTES_TABLE", "")),
    ]
    source, name = next(((s, n.strip()) for s, n in candidates if n.strip()), ("default", DEFAULT_ROUTES_TABLE))
    if problem := table_name_problem(name):
        raise fail(f"{source}: {problem}")
    try:
        # One quick retry: a person at the prompt would rather see the error and run it again.
        return RouteRows(table_client(connection, name, retry_total=1))
    except (ValueError, AzureError) as exc:  # a malformed connection string
        raise fail(f"the storage connection from {connection.setting} cannot be used: {short_reason(exc)}") from None


@contextmanager
def reported(rows: RouteRows) -> Iterator[None]:
    """Turn the router's and the SDK's errors into one clear line and exit code 2."""
    try:
        yield
    except RoutingError as exc:
        raise fail(str(exc)) from None
    except ClientAuthenticationError as exc:
        raise fail(f"{describe(rows.client)} refused the credentials: {short_reason(exc)}") from None
    except ServiceRequestError as exc:
        raise fail(
            f"cannot reach {describe(rows.client)}: {short_reason(exc)} "
            "(check the connection; for Azurite, that it is running)"
        ) from None
    except AzureError as exc:
        raise fail(f"{describe(rows.client)}: {short_reason(exc)}") from None


def _warn_undefined(*endpoints: Endpoint) -> None:
    """Say so when a connection the endpoints name is set neither here nor in local.settings.json: the
    function app must have it, or every message to those endpoints is dead-lettered naming it (once per
    setting, with the endpoints that name it)."""
    local = _local_settings()
    missing: dict[str, tuple[list[str], str]] = {}
    for endpoint in endpoints:
        names = [endpoint.connection, *([endpoint.secondary_connection] if endpoint.secondary_connection else [])]
        identity = "topicEndpointUri" if endpoint.type is EndpointType.EVENT_GRID else "fullyQualifiedNamespace"
        for setting in names:
            if not (connection_is_set(setting, os.environ) or connection_is_set(setting, local)):
                missing.setdefault(setting, ([], identity))[0].append(endpoint.name)
    for setting, (named_by, identity) in missing.items():
        who = (
            f"endpoint '{named_by[0]}'" if len(named_by) == 1 else "endpoints " + ", ".join(f"'{n}'" for n in named_by)
        )
        warn(
            f"{who}: app setting {setting} is not defined in this shell or in "
            f"{LOCAL_SETTINGS}; the function app needs it (a connection string, or {setting}__{identity} for its "
            "identity), else its messages are dead-lettered naming it"
        )


def _warn_invalid(loaded: TableLoad) -> None:
    if loaded.invalid:
        count = len(loaded.invalid)
        warn(
            f"{count} invalid row{'s' if count != 1 else ''} (the router does not use the table while it has one, "
            "but keeps its last good table): "
            f"{', '.join(repr(r.row_key) for r in loaded.invalid)}; run `python -m routing routes validate`"
        )


# The words of a dotted event type, each with its dot: "Microsoft.", "DigitalTwins.", "Twin.", "Create".
_DOTTED = re.compile(r"[^.]+\.?|\.")
# What the overview keeps for a name and a path before it breaks event types over lines (a longer name
# or path folds when the table is too wide).
_NAME_ROOM, _PATH_ROOM = 24, 10


def _wrap_at_dots(name: str, width: int) -> list[str]:
    """`name` on lines of at most `width`, broken only after a dot, the rest indented: a type name is
    never split inside a word, as Rich folds a long word ("Microsoft.Digi / talTwins...")."""
    lines, line = [], ""
    for part in _DOTTED.findall(name):
        if line.strip() and len(line) + len(part) > width:
            lines.append(line)
            line = "  "
        line += part
    return [*lines, line]


def _types_width(names: list[str], room: int) -> int:
    """The event types column: every name whole if `room` allows, else as narrow as `room`, down to
    the widest word a name can be broken into (a name without dots is one word)."""
    width = max(room, max((len(line) for name in names for line in _wrap_at_dots(name, 1)), default=0))
    return max((len(line) for name in names for line in _wrap_at_dots(name, width)), default=0)


def _filter_cell(endpoint: Endpoint) -> str:
    if endpoint.filter is None:
        return ""
    return "iothub" if endpoint.filter_language is FilterLanguage.IOT_HUB else "yes"


def _endpoints_table(endpoints: tuple[Endpoint, ...], title: str, width: int) -> Table:
    """The overview, for `width` columns: what a reader scans for (connections and formats are in `show`
    and `-o json`). Each event type on a line of its own, whole, or broken after a dot when the terminal
    is narrow (a name whole first: it is what `show NAME` takes); a long path folds rather than ending
    in "..."."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    rows = [
        (e.name, e.type.value, [t.value for t in e.event_types], e.path, _filter_cell(e), "yes" if e.enabled else "no")
        for e in endpoints
    ]
    headers = ("Name", "Type", "Event types", "Path", "Filter", "Enabled")
    widest = [max([len(header), *(len(str(row[i])) for row in rows)]) for i, header in enumerate(headers)]
    types = [name for row in rows for name in row[2]] or [headers[2]]
    widest[2] = max(len(headers[2]), *map(len, types))
    # What the name, the types and the path share: the width less the fixed columns, each column's
    # padding and the borders between them.
    room = width - (2 * len(headers) - 1) - widest[1] - widest[4] - widest[5]
    fits = widest[0] + widest[2] + widest[3] <= room
    name_room, path_room = min(widest[0], _NAME_ROOM), min(widest[3], _PATH_ROOM)
    types_width = widest[2] if fits else _types_width(types, room - name_room - path_room)
    rest = room - types_width
    path_width = min(widest[3], max(path_room, rest - name_room))
    name_width = min(widest[0], max(len(headers[0]), rest - path_width))
    table.add_column("Name", overflow="fold", width=None if fits else name_width)
    table.add_column("Type", no_wrap=True)
    table.add_column("Event types", no_wrap=True)
    table.add_column("Path", overflow="fold", width=None if fits else path_width)
    table.add_column("Filter", no_wrap=True)
    table.add_column("Enabled", no_wrap=True)
    for name, kind, event_types, path, filtered, enabled in rows:
        lines = [line for event_type in event_types for line in _wrap_at_dots(event_type, types_width)]
        table.add_row(escape(name), kind, "\n".join(lines), escape(path), filtered, enabled)
    if not endpoints:
        table.add_row("(none)", "", "", "", "", "")
    return table


def _print_endpoints(endpoints: tuple[Endpoint, ...], title: str) -> None:
    console.print(_endpoints_table(endpoints, title, console.width))
    # The filters below the table, one line each, read whole (a cell would fold them), as `test` shows them.
    for e in endpoints:
        if e.filter is not None:
            language = " (IoT Hub routing query)" if e.filter_language is FilterLanguage.IOT_HUB else ""
            console.print(Text(f"  filter of '{e.name}'{language}: {e.filter.text}"), highlight=False, soft_wrap=True)


def _endpoint_table(endpoint: Endpoint, title: str) -> Table:
    """One endpoint, every field, one per line (the routes-file names, as `update` options take them)."""
    table = Table(title=title, title_justify="left")
    table.add_column("Field", no_wrap=True)
    table.add_column("Value", overflow="fold")
    for field_name, value in endpoint.to_dict().items():
        if isinstance(value, list):
            text = ", ".join(value)
        elif isinstance(value, dict):
            text = orjson.dumps(value).decode()  # enrichments, as the routes file writes them
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value)
        table.add_row(field_name, escape(text))
    return table


def _print_endpoint(endpoint: Endpoint, output: OutputFormat, title: str) -> None:
    if output is OutputFormat.json:
        write_json(endpoint.to_dict())
    else:
        console.print(_endpoint_table(endpoint, title))


def _options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the user gave (`values`: the endpoint options by parameter name), in the routes-file
    form; left out when not given."""
    given: dict[str, Any] = {}
    for name, value in values.items():
        field_name, _option = ENDPOINT_OPTIONS[name]
        if value is None or (name == "enrich" and not value):
            continue
        if name == "event_types":
            given[field_name] = [part.strip() for item in value for part in item.split(",") if part.strip()]
        elif name == "enrich":
            given[field_name] = _enrichments(value)
        else:
            given[field_name] = value
    return given


def _enrichments(items: list[str]) -> dict[str, str]:
    enrichments: dict[str, str] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise fail(f"--enrich {item!r}: write NAME=VALUE (a fixed text, a path like $body.Site, or a template)")
        enrichments[name.strip()] = value
    return enrichments


TypeOption = Annotated[
    str | None,
    typer.Option(
        "--type",
        **choices(EndpointType),
        help="The kind of endpoint: an event hub, a Service Bus queue or topic, an Event Grid topic, a Blob container.",
    ),
]
EventTypesOption = Annotated[
    list[str] | None,
    typer.Option("--event-types", help="Event types, comma-separated or the option repeated."),
]
ConnectionOption = Annotated[
    str | None, typer.Option("--connection", help="NAME of the app setting holding the connection (never the secret).")
]
SecondaryOption = Annotated[
    str | None,
    typer.Option("--secondary-connection", help="App setting tried when the primary is refused; '' removes it."),
]
PathOption = Annotated[
    str | None,
    typer.Option("--path", help="Event hub, queue or topic; Event Grid: the topic host; Storage: the Blob container."),
]
FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        **choices(EnvelopeFormat),
        help="How Digital Twins events are wrapped (default EventGridSchema); telemetry goes as it came.",
    ),
]
EnabledOption = Annotated[bool | None, typer.Option("--enabled/--disabled", help="Whether it receives events.")]
OrderKeyOption = Annotated[
    str | None,
    typer.Option(
        "--order-key",
        help="What orders this endpoint's messages, e.g. '$body.DeviceId' or '{$subject}/{$body.Floor}' "
        "(docs/FILTERS.md); '' removes it (the device or twin id orders them).",
    ),
]
EnrichOption = Annotated[
    list[str] | None,
    typer.Option(
        "--enrich",
        help="Property added to every message, NAME=VALUE (a fixed text, a path like $body.Site, or a template); "
        "repeat it; with update, NAME= removes one.",
    ),
]
PartitioningOption = Annotated[
    str | None,
    typer.Option(
        "--partitioning",
        **choices(PARTITIONING),
        help="EventHub: 'router' (default) picks each key's partition with the service's hash and sends a batch "
        "per partition; 'service' sends a batch per key and lets the service pick.",
    ),
]
TimeToLiveOption = Annotated[
    int | None,
    typer.Option(
        "--time-to-live",
        metavar="MINUTES",
        help="How long a message waits, parked in order, for this endpoint to answer again before it is "
        "dead-lettered as expired (default 1440: a day, as Digital Twins; at most 10080).",
    ),
]
FallbackOption = Annotated[
    bool | None,
    typer.Option(
        "--fallback/--no-fallback",
        help="IoT Hub's fallback route: this endpoint receives, among its event types, every event no other "
        "enabled endpoint took (at most one per table; no filter).",
    ),
]
FilterLanguageOption = Annotated[
    str | None,
    typer.Option(
        "--filter-language",
        **choices(FilterLanguage),
        help="How --filter is written: a Digital Twins route filter (the default) or an IoT Hub routing query "
        "(for IoT Hub's messages); docs/FILTERS.md.",
    ),
]
FilterOption = Annotated[
    str | None,
    typer.Option(
        "--filter", help="Route filter, e.g. \"$body.Value > 3 AND subject = 'x'\" (docs/FILTERS.md); '' removes it."
    ),
]


@routes_app.command(
    "list",
    epilog=examples("routing routes list", "routing routes list --table stagingroutes -o json"),
)
def list_routes(
    connection_string: ConnectionStringOption = None,
    table: TableOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """The endpoints in the routes table (invalid rows are named on stderr)."""
    rows = open_rows(connection_string, table)
    with reported(rows):
        loaded = rows.load()
    if output is OutputFormat.json:
        write_json([e.to_dict() for e in loaded.table.endpoints])
    else:
        _print_endpoints(loaded.table.endpoints, f"Routes in {describe(rows.client)}")
    _warn_invalid(loaded)


@routes_app.command(epilog=examples("routing routes show sensor-alerts", "routing routes show sensor-alerts -o json"))
def show(
    name: NameArgument,
    connection_string: ConnectionStringOption = None,
    table: TableOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """One endpoint; for an invalid row, what it holds and every problem with it."""
    rows = open_rows(connection_string, table)
    with reported(rows):
        row = rows.get(name)
    parsed = row.parsed
    if isinstance(parsed, Endpoint):
        _print_endpoint(parsed, output, f"Endpoint '{parsed.name}'")
        return
    _print_invalid(row, [str(p) for p in parsed], output)


def _print_invalid(row: Row, problems: list[str], output: OutputFormat) -> None:
    if output is OutputFormat.json:
        write_json({**_jsonable(row.raw), "problems": problems})
        return
    table = Table(
        title=f"Row '{row.entity.get('RowKey')}' (invalid: the router keeps its last good table)", title_justify="left"
    )
    table.add_column("Property")
    table.add_column("Value")
    for key, value in row.entity.items():
        table.add_row(escape(str(key)), escape(repr(value)))
    console.print(table)
    for problem in problems:
        errors.print(f"  - {escape(problem)}", highlight=False, soft_wrap=True)


def _jsonable(raw: Mapping[str, Any]) -> dict[str, Any]:
    # Rows written around the CLI may hold any Edm type; show those as text rather than fail.
    return {k: v if isinstance(v, str | int | float | bool | list) or v is None else repr(v) for k, v in raw.items()}


FileNameFormatOption = Annotated[
    str | None,
    typer.Option(
        "--file-name-format",
        help="Storage: how blobs are named, IoT Hub's tokens in any order (default "
        "'{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}'); '' restores the default.",
    ),
]


# The options `add` and `update` both take, one per routes-file field, declared once (endpoint_fields):
# parameter name -> (the field it sets, the option).
ENDPOINT_OPTIONS: dict[str, tuple[str, Any]] = {
    "type_": ("type", TypeOption),
    "event_types": ("eventTypes", EventTypesOption),
    "connection": ("connection", ConnectionOption),
    "secondary_connection": ("secondaryConnection", SecondaryOption),
    "path": ("path", PathOption),
    "format_": ("format", FormatOption),
    "enabled": ("enabled", EnabledOption),
    "filter_": ("filter", FilterOption),
    "filter_language": ("filterLanguage", FilterLanguageOption),
    "order_key": ("orderKey", OrderKeyOption),
    "enrich": ("enrichments", EnrichOption),
    "partitioning": ("partitioning", PartitioningOption),
    "time_to_live": ("timeToLiveMinutes", TimeToLiveOption),
    "fallback": ("fallback", FallbackOption),
    "file_name_format": ("fileNameFormat", FileNameFormatOption),
}
# Fields an empty value removes (with `update`; with `add`, an empty one is as if not given).
REMOVABLE_FIELDS = ("secondaryConnection", "filter", "orderKey", "fileNameFormat")


def _flag(annotation: Any) -> str:
    # In `Annotated`, typer.Option's first positional argument is the option's name, held as its default.
    [info] = [m for m in annotation.__metadata__ if isinstance(m, typer.models.OptionInfo)]
    return str(info.default)


def endpoint_fields(*, required: Collection[str] = ()) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the endpoint options after its first argument, those of the `required` fields
    required (help marks them, and all missing ones are named in one error); it receives them as `given`:
    the fields the user gave, in the routes-file form (see `_options`)."""
    fields = {field_name for field_name, _option in ENDPOINT_OPTIONS.values()}
    # A field the model comes to require needs its option here, else `add` could never give it.
    assert set(required) <= fields, f"no option for {sorted(set(required) - fields)}"

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        hints = get_type_hints(command, include_extras=True)
        own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(command).parameters.values()]
        own = [p for p in own if p.name != "given"]
        shared = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=annotation,
                default=inspect.Parameter.empty if field_name in required else None,
            )
            for name, (field_name, annotation) in ENDPOINT_OPTIONS.items()
        ]

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> None:
            values = {name: kwargs.pop(name) for name in ENDPOINT_OPTIONS}
            command(*args, given=_options(values), **kwargs)

        run.__signature__ = inspect.Signature([own[0], *shared, *own[1:]])  # type: ignore[attr-defined]
        return run

    return decorate


@routes_app.command(
    epilog=examples(
        "routing routes add raw --type EventHub --event-types DeviceMessages --connection RAW_HUB --path raw "
        "--order-key '$body.DeviceId'",
        "routing routes add topology-grid --type EventGrid --event-types TopologyOperation,UdfCustom "
        "--connection TOPOLOGY_GRID_KEY --path topology-events.westeurope-1.eventgrid.azure.net "
        "--format CloudEventSchemaV1_0",
    )
)
@endpoint_fields(required=[f for f in REQUIRED if f != "name"])  # the name is the argument
def add(
    name: NameArgument,
    *,
    given: dict[str, Any],
    connection_string: ConnectionStringOption = None,
    table: TableOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Add an endpoint (validated first; an existing name is refused)."""
    given = {k: v for k, v in given.items() if not (k in REMOVABLE_FIELDS and v == "")}
    try:
        endpoint = validated({"name": name, **given}, f"endpoint '{name}'")
    except RoutingError as exc:
        raise fail(str(exc)) from None
    rows = open_rows(connection_string, table)
    with reported(rows):
        rows.add(endpoint)
    _print_endpoint(endpoint, output, f"Added endpoint '{endpoint.name}'")
    _warn_undefined(endpoint)


@routes_app.command(
    epilog=examples(
        "routing routes update raw --filter '$body.Temperature > 25'",
        "routing routes update raw --time-to-live 60",
        "routing routes update raw --remove-property Enabeld --disabled   # repair a row written by hand",
    )
)
@endpoint_fields()
def update(
    name: NameArgument,
    *,
    given: dict[str, Any],
    remove_property: Annotated[
        list[str] | None,
        typer.Option(
            "--remove-property",
            metavar="PROPERTY",
            help="Remove a property the router does not know from the row (written around the CLI); repeatable.",
        ),
    ] = None,
    connection_string: ConnectionStringOption = None,
    table: TableOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Change the given fields of an endpoint (validated; refused if someone changed it meanwhile).

    A row written around the CLI with a property the router does not know (a misspelt `Enabeld` in
    Storage Explorer) is repaired with --remove-property NAME, together with the field it meant."""
    removed = {name.strip().lower() for name in remove_property or [] if name.strip()}
    if not given and not removed:
        flags = ", ".join([*(_flag(option) for _field, option in ENDPOINT_OPTIONS.values()), "--remove-property"])
        raise fail(f"nothing to change: pass one or more of {flags}")
    known = {field.lower() for field in FIELDS}
    if refused := sorted(removed & known):
        raise fail(
            f"--remove-property {', '.join(refused)}: a field the router knows; change it with its option "
            "(or '' to remove an optional one) instead"
        )

    def change(raw: dict[str, Any]) -> dict[str, Any]:
        missing = removed - {key.lower() for key in raw}
        if missing:
            raise RouteTableError(
                [Problem(f"endpoint '{name}'", f"has no property {', '.join(sorted(missing))} to remove")]
            )
        raw = {key: value for key, value in raw.items() if key.lower() not in removed}
        changed = {**raw, **given}
        for optional in REMOVABLE_FIELDS:
            if changed.get(optional) == "":
                del changed[optional]
        if "enrichments" in given:
            # --enrich adds to (or replaces in) what the endpoint has; NAME= removes one.
            current = raw.get("enrichments")
            merged = {**(current if isinstance(current, dict) else {}), **given["enrichments"]}
            changed["enrichments"] = {k: v for k, v in merged.items() if v != ""}
            if not changed["enrichments"]:
                del changed["enrichments"]
        return changed

    rows = open_rows(connection_string, table)
    with reported(rows):
        try:
            endpoint = rows.edit(name, change)
        except RouteTableError as exc:
            unknown = [p for p in exc.problems if "unknown field" in p.message]
            if not unknown:
                raise
            # The row holds a property no field has: say how to repair it with this very command.
            names = " ".join(f"--remove-property {p.where.rsplit(chr(39), 2)[-2]}" for p in unknown)
            raise fail(f"{exc}\nrepair the row: routing routes update {name} {names} (and set what it meant)") from None
    _print_endpoint(endpoint, output, f"Updated endpoint '{endpoint.name}'")
    _warn_undefined(endpoint)


def _set_enabled(name: str, enabled: bool, connection_string: str | None, table: str | None) -> Endpoint:
    rows = open_rows(connection_string, table)
    with reported(rows):
        return rows.edit(name, lambda raw: {**raw, "enabled": enabled})


@routes_app.command(epilog=examples("routing routes enable sensor-alerts"))
def enable(
    name: NameArgument,
    connection_string: ConnectionStringOption = None,
    table: TableOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Let an endpoint receive events again."""
    endpoint = _set_enabled(name, True, connection_string, table)
    _print_endpoint(endpoint, output, f"Enabled endpoint '{endpoint.name}'")


@routes_app.command(epilog=examples("routing routes disable sensor-alerts"))
def disable(
    name: NameArgument,
    connection_string: ConnectionStringOption = None,
    table: TableOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Keep an endpoint in the table but send it nothing."""
    endpoint = _set_enabled(name, False, connection_string, table)
    _print_endpoint(endpoint, output, f"Disabled endpoint '{endpoint.name}'")


@routes_app.command(
    epilog=examples("routing routes delete sensor-alerts", "routing routes delete sensor-alerts --yes -o json")
)
def delete(
    name: NameArgument,
    yes: YesOption = False,
    connection_string: ConnectionStringOption = None,
    table: TableOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Delete an endpoint, after asking (refused if someone changed it since it was read)."""
    rows = open_rows(connection_string, table)
    confirm(f"Delete endpoint '{name}' from {describe(rows.client)}?", yes)
    with reported(rows):
        rows.delete(name)
    if output is OutputFormat.json:
        write_json({"deleted": name})
    else:
        console.print(f"Deleted endpoint '{escape(name)}' from {escape(describe(rows.client))}")


@routes_app.command(epilog=examples("routing routes validate", "routing routes validate -o json"))
def validate(
    connection_string: ConnectionStringOption = None,
    table: TableOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Check every row with the routes validator; list each invalid row and its problems (exit 1 if any)."""
    rows = open_rows(connection_string, table)
    with reported(rows):
        loaded = rows.load()
    _warn_undefined(*loaded.table.endpoints)
    if output is OutputFormat.json:
        write_json(
            {
                "valid": len(loaded.table.endpoints),
                "invalid": [{"row": r.row_key, "problems": [str(p) for p in r.problems]} for r in loaded.invalid],
            }
        )
    else:
        console.print(
            f"{describe(rows.client)}: {len(loaded.table.endpoints)} valid endpoints, "
            f"{len(loaded.invalid)} invalid rows"
        )
        for row in loaded.invalid:
            console.print(f"row '{escape(row.row_key)}':", highlight=False)
            for problem in row.problems:
                console.print(f"  - {escape(str(problem))}", highlight=False, soft_wrap=True)
    if loaded.invalid:
        raise typer.Exit(code=INVALID_ROWS_EXIT)


@routes_app.command(
    "import",
    epilog=examples(
        "routing routes import samples/routes.json --dry-run",
        "routing routes import samples/routes.json",
        "routing routes import routes.json --replace --yes   # also delete the rows not in the file",
    ),
)
def import_routes(
    file: Annotated[Path, typer.Argument(help="Routes file: a JSON list of endpoints.", show_default=False)],
    *,
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Also delete the rows that are not in the file, after asking (default: keep)."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be added, changed, kept or deleted; write nothing.")
    ] = False,
    yes: YesOption = False,
    connection_string: ConnectionStringOption = None,
    table: TableOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Write a routes file into the table: validated whole first, then applied in transactions."""
    try:
        routes = load_routes_file(file)
    except RoutingError as exc:
        raise fail(f"nothing imported: {exc}") from None
    _warn_undefined(*routes.endpoints)
    rows = open_rows(connection_string, table)
    with reported(rows):
        diff = import_diff(routes, rows.load(), replace=replace) if dry_run or replace else None
    if dry_run:
        assert diff is not None
        _print_diff(diff, output, f"Importing {file} into {describe(rows.client)} would")
        return
    if diff and diff["deleted"]:
        confirm(f"Delete {len(diff['deleted'])} rows not in {file} ({', '.join(diff['deleted'])})?", yes)
    with reported(rows):
        result = rows.import_table(routes, replace=replace)
    summary = {
        "added": list(result.added),
        "updated": list(result.updated),
        "deleted": list(result.deleted),
        "kept": list(result.kept),
    }
    if output is OutputFormat.json:
        write_json(summary)
        return
    console.print(
        f"Imported {len(routes.endpoints)} endpoints from {escape(str(file))} into {escape(describe(rows.client))}: "
        f"{len(result.added)} added, {len(result.updated)} updated, {len(result.deleted)} deleted"
    )
    if result.kept:
        console.print(
            f"Kept {len(result.kept)} rows not in the file ({escape(', '.join(result.kept))}); --replace deletes them",
            highlight=False,
        )


def import_diff(routes: RouteTable, loaded: TableLoad, *, replace: bool) -> dict[str, list[str]]:
    """What an import would do to the table: rows added, changed, unchanged, and those not in the file
    (deleted with --replace, else kept). An invalid row the file names counts as changed."""
    current = {row_key(e.name): e for e in loaded.table.endpoints}
    invalid = {r.row_key for r in loaded.invalid}
    wanted = {row_key(e.name) for e in routes.endpoints}
    diff: dict[str, list[str]] = {"added": [], "changed": [], "unchanged": [], "deleted": [], "kept": []}
    for endpoint in routes.endpoints:
        key = row_key(endpoint.name)
        if key in current:
            same = current[key].to_dict() == endpoint.to_dict()
            diff["unchanged" if same else "changed"].append(endpoint.name)
        else:
            diff["changed" if key in invalid else "added"].append(endpoint.name)
    absent = sorted(k for k in set(current) | invalid if k not in wanted)
    diff["deleted" if replace else "kept"] = absent
    return diff


def _print_diff(diff: dict[str, list[str]], output: OutputFormat, title: str) -> None:
    if output is OutputFormat.json:
        write_json(diff)
        return
    console.print(f"{escape(title)}:", highlight=False)
    for what, names in diff.items():
        if names:
            console.print(f"  {what}: {escape(', '.join(names))}", highlight=False, soft_wrap=True)
    console.print("Nothing written (--dry-run).")


@routes_app.command(
    epilog=examples(
        "routing routes export --file routes.json",
        "routing routes export > routes.json",
        "routing routes export -o table   # what it exports, as `list` shows it",
    )
)
def export(
    file: Annotated[Path | None, typer.Option("--file", help="Write here instead of stdout.")] = None,
    connection_string: ConnectionStringOption = None,
    table: TableOption = None,
    output: Annotated[
        OutputFormat,
        typer.Option(
            "--output",
            "-o",
            help="The routes file's JSON (what --file holds, and `import` reads back) or, for people, the table "
            "`list` shows.",
        ),
    ] = OutputFormat.json,
) -> None:
    """The table as a routes file (JSON), to stdout or --file; `import` reads it back."""
    rows = open_rows(connection_string, table)
    with reported(rows):
        loaded = rows.load()
    text = orjson.dumps([e.to_dict() for e in loaded.table.endpoints], option=orjson.OPT_INDENT_2) + b"\n"
    if file is not None:
        try:
            file.write_bytes(text)
        except OSError as exc:
            raise fail(f"--file {file}: {exc.strerror or exc}") from None
        errors.print(f"Wrote {len(loaded.table.endpoints)} endpoints to {escape(str(file))}", highlight=False)
    if output is OutputFormat.table:
        _print_endpoints(loaded.table.endpoints, f"Routes in {describe(rows.client)}")
    elif file is None:
        sys.stdout.write(text.decode())
    _warn_invalid(loaded)


# Exit code of `test` when an event would be dead-lettered or reach no endpoint: a CI assertion.
NOT_ROUTED_EXIT = 1


class Hub(StrEnum):
    telemetry = "telemetry"
    twins = "twins"


def _json_object(option: str, text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise fail(f'{option}: not JSON ({exc}); write a JSON object, e.g. \'{{"Type": "SensorChange"}}\'') from None
    if not isinstance(value, dict):
        raise fail(f"{option}: must be a JSON object, got {type(value).__name__}")
    return value


def _test_line(
    event: Path | None, body: str | None, properties: str | None, system_properties: str | None
) -> tuple[bytes, str]:
    """The ingress line to test, and what to call it in errors: from --event, or built from --body."""
    if (event is None) == (body is None):
        raise fail("give the event either as --event FILE (one ingress line) or as --body with its properties")
    if event is not None:
        if properties is not None or system_properties is not None:
            raise fail("--properties and --system-properties go with --body; --event holds them in the line")
        try:
            raw = sys.stdin.buffer.read() if str(event) == "-" else event.read_bytes()
        except OSError as exc:
            raise fail(f"--event {event}: {exc.strerror or exc}") from None
        return raw.strip(), f"--event {event}"
    line = {
        "bodyText": body,
        "properties": _json_object("--properties", properties),
        "systemProperties": _json_object("--system-properties", system_properties),
    }
    return orjson.dumps(line), "--body"


@routes_app.command(
    "test",
    epilog=examples(
        """routing routes test --body '{"Id": "s-1"}' --properties '{"Type": "SensorChange"}' --routes routes.json""",
        "routing routes test --event line.json -o json",
    ),
)
def test_route(
    *,
    event: Annotated[
        Path | None,
        typer.Option("--event", help="One ingress line (the local runner's format) in a file; '-' reads stdin."),
    ] = None,
    body: Annotated[
        str | None, typer.Option("--body", help="The message body as text (JSON or not), instead of --event.")
    ] = None,
    properties: Annotated[
        str | None, typer.Option("--properties", help="With --body: application properties, a JSON object.")
    ] = None,
    system_properties: Annotated[
        str | None,
        typer.Option(
            "--system-properties",
            help='With --body: system properties, a JSON object (e.g. {"iothub-connection-device-id": "dev-1"}).',
        ),
    ] = None,
    hub: Annotated[
        Hub | None,
        typer.Option(
            "--hub",
            help="The ingress hub the event arrives on, which message ids derive from; default: telemetry for an "
            "IoT Hub message (iothub-* system properties), else twins.",
        ),
    ] = None,
    routes_file: Annotated[
        Path | None, typer.Option("--routes", help="A routes file to test against, instead of the routes table.")
    ] = None,
    connection_string: ConnectionStringOption = None,
    table: TableOption = None,
    output: OutputOption = OutputFormat.table,
) -> None:
    """Dry run: which endpoints one event would go to and why, or why it would be dead-lettered. Exits 1
    when it would be dead-lettered or reach no endpoint, so a script can assert a route."""
    raw, where = _test_line(event, body, properties, system_properties)
    try:
        probe = parse_line(raw, source="", line_number=1)
        source = hub.value if hub is not None else _hub_of(probe.system_properties).value
        message = parse_line(raw, source=source, line_number=1)
    except RoutingError as exc:
        raise fail(f"{where}: must hold one ingress line: {exc}") from None
    if routes_file is not None:
        if connection_string is not None or table is not None:
            raise fail("--routes tests against a file; --connection-string and --table name a routes table")
        try:
            routes = load_routes_file(routes_file)
        except RoutingError as exc:
            raise fail(str(exc)) from None
        decisions = explain(list(classify(message)), routes)
    else:
        rows = open_rows(connection_string, table)
        with reported(rows):
            loaded = rows.load()
        decisions = explain(list(classify(message)), loaded.table)
    if output is OutputFormat.json:
        write_json(decisions)
    else:
        _print_decisions(decisions)
    if routes_file is None:
        _warn_invalid(loaded)
    if any(d["result"] != "routed" for d in decisions):
        raise typer.Exit(code=NOT_ROUTED_EXIT)


def _hub_of(system_properties: Mapping[str, Any]) -> Hub:
    """Which of the two functions would take the event: IoT Hub stamps its messages with iothub-*."""
    return Hub.telemetry if any(str(k).startswith("iothub-") for k in system_properties) else Hub.twins


def _print_decisions(decisions: list[dict[str, Any]]) -> None:
    for decision in decisions:
        # An Event Grid array holds several events; name each by its position, as dead letters do.
        label = f"Event {decision['index']}" if len(decisions) > 1 else "Event"
        if decision["result"] == "rejected":
            console.print(
                f"{label}: dead-lettered ({escape(decision['code'])}): {escape(decision['reason'])}", highlight=False
            )
            continue
        console.print(
            f"{label}: {decision['eventType']}, order key {escape(decision['orderKey'])}, "
            f"message id {decision['messageId']}",
            highlight=False,
            soft_wrap=True,  # an id is copied whole: never folded mid-UUID
        )
        table = Table(title_justify="left")
        table.add_column("Endpoint")
        table.add_column("Type")
        table.add_column("Sent")
        table.add_column("Why")
        listed = (("yes", decision["endpoints"]), ("no", decision["notSent"] + decision["otherTypes"]))
        for sent, items in listed:
            for item in items:
                table.add_row(escape(item["name"]), item["type"], sent, escape(item["why"]))
        if decision["endpoints"] or decision["notSent"] or decision["otherTypes"]:
            console.print(table)
        # Filters below the table, one line each, so a long one is read whole rather than folded in a cell.
        for item in decision["endpoints"] + decision["notSent"]:
            if "filterMatched" in item:
                outcome = "matched" if item["filterMatched"] else "did not match"
                console.print(
                    f"  filter of '{escape(item['name'])}' {outcome}: {escape(item['filter'])}",
                    highlight=False,
                    soft_wrap=True,
                )
        if "reason" in decision:
            console.print(f"  unrouted: {decision['reason']}", highlight=False)
