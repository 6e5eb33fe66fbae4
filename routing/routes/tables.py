"""Routes in Azure Table Storage: the row <-> endpoint mapping, the route store the functions read
(loaded once, refreshed on an interval with one query, never per event), and the row edits the
`routes` CLI makes (validated first, guarded by ETags).

One table, one partition (`PartitionKey` = "endpoint"), one row per endpoint, `RowKey` = the name
lower-cased so names stay unique case-insensitively; the display name is in `Name`. The other
properties are the routes-file fields with a capital first letter; `EventTypes` is comma-separated,
`Filter` the route filter's text and `OrderKey` the order key template (both compiled when the rows
load, so a bad one makes the row invalid), `Enrichments` a JSON object of property name -> value.
`Position` keeps the table's order, the one a routes file has by its order of endpoints (the first of
several endpoints alike delivers, README "Routes"): rows load by it, not by `RowKey` (the query's order,
alphabetical); a row without one (written by hand, or before it existed) comes after those with one.
Every row goes through `routing.routes.table.parse_endpoint`, the one validator. Touches Table Storage only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableEntity, UpdateMode

from routing import observability as obs
from routing.connections import Connection, resolve
from routing.errors import Problem, RouteTableError, RoutingError
from routing.routes.table import Endpoint, RouteTable, fallback_problems, parse_endpoint
from routing.settings import DEFAULT_ROUTES_REFRESH_SECONDS, ROUTES_STORAGE

log = logging.getLogger(__name__)

PARTITION_KEY = "endpoint"
# The row property that keeps the table's order (not a routes-file field: a file's order is its own).
POSITION = "Position"
# All rows in one query: the filter names the one partition; values always travel as parameters.
ALL_ROWS = "PartitionKey eq @pk"
# A transaction may hold at most 100 operations, all in one partition.
MAX_BATCH = 100
# The routes table's time budget. A refresh is one query of one partition (one request per 1,000
# rows), which Table Storage answers in tens of milliseconds; a request without an answer in seconds is
# lost, and waiting longer only stalls the invocation that refreshes (the others keep routing on the
# last good table, `TableRoutes.current`). The SDK's defaults (300 s timeouts, 10 retries) would stall
# it for an hour; azure-data-tables 12.7 honours these client options (`TablesRetryPolicy` takes
# `retry_total`, `retry_backoff_factor` and `timeout`; the requests transport `connection_timeout` and
# `read_timeout`). A per-call `timeout=` is not one of them: Table operations send it to the service as
# its server-side timeout.
CONNECT_TIMEOUT_SECONDS = 3.0  # TCP connect; a reachable account connects in milliseconds
READ_TIMEOUT_SECONDS = 5.0  # silence on an open connection (a black hole) before the try is given up
# One more try at once (the SDK does not back off before the first retry): a reset keep-alive connection
# is the usual transient fault. More tries would only lengthen an outage that the last good table rides out.
RETRIES = 1
# One request, whatever happens: no try starts after it (the SDK's absolute `timeout`), and a refresh
# asks for no further page once it is spent. Worst case of a request: (1 + RETRIES) tries of
# connect + read = 16 s; a black hole (connects, never answers) costs (1 + RETRIES) x READ = 10 s.
REFRESH_BUDGET_SECONDS = (1 + RETRIES) * (CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS)
# How long past the budget a cold invocation waits for another's refresh before giving up itself.
LOCK_MARGIN_SECONDS = 5.0
CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": RETRIES,
    "retry_backoff_factor": 0.5,
    "connection_timeout": CONNECT_TIMEOUT_SECONDS,
    "read_timeout": READ_TIMEOUT_SECONDS,
    "timeout": REFRESH_BUDGET_SECONDS,
}


class RoutesUnavailableError(RoutingError):
    """The routes table has never been read in this process, so there is nothing to route with."""


class EndpointNotFoundError(RoutingError):
    def __init__(self, name: str, table: str) -> None:
        self.name = name
        super().__init__(f"no endpoint '{name}' in routes table '{table}' (see `python -m routing routes list`)")


class EndpointExistsError(RoutingError):
    def __init__(self, name: str, table: str) -> None:
        self.name = name
        super().__init__(
            f"endpoint '{name}' already exists in routes table '{table}' (names are unique case-insensitively); "
            f"change it with `python -m routing routes update {name} ...`"
        )


class EndpointChangedError(RoutingError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"endpoint '{name}' changed since you read it; run the command again")


# --- rows and endpoints ------------------------------------------------------------------------------


def row_key(name: str) -> str:
    return name.lower()


def _property(field_name: str) -> str:
    return field_name[:1].upper() + field_name[1:]


def _field(property_name: str) -> str:
    return property_name[:1].lower() + property_name[1:]


def to_entity(endpoint: Endpoint, position: int | None = None) -> dict[str, Any]:
    """The row of an endpoint: its routes-file form with capitalised property names, and its `position`
    in the table's order (None: none, the row sorts after those with one)."""
    entity: dict[str, Any] = {"PartitionKey": PARTITION_KEY, "RowKey": row_key(endpoint.name)}
    if position is not None:
        entity[POSITION] = position
    for field_name, value in endpoint.to_dict().items():
        if field_name == "eventTypes":
            entity[_property(field_name)] = ",".join(value)
        elif field_name == "enrichments":
            entity[_property(field_name)] = orjson.dumps(value).decode()  # a property holds a scalar: JSON text
        else:
            entity[_property(field_name)] = value
    return entity


def to_raw(entity: Mapping[str, Any]) -> dict[str, Any]:
    """A row in the routes-file form, unvalidated: what `parse_endpoint` (and `update`) start from.

    Unknown properties are kept (as fields with a lower-case first letter) so the validator reports
    them; a misspelt `Enabeld` must not leave an endpoint silently enabled.
    """
    raw: dict[str, Any] = {}
    for key, value in entity.items():
        if key in ("PartitionKey", "RowKey", POSITION):
            continue
        field_name = _field(key)
        if field_name == "eventTypes" and isinstance(value, str):
            raw[field_name] = [part.strip() for part in value.split(",") if part.strip()]
        elif field_name == "enrichments" and isinstance(value, str):
            try:
                raw[field_name] = orjson.loads(value)
            except orjson.JSONDecodeError:
                raw[field_name] = value  # the validator says what is wrong with it
        else:
            raw[field_name] = value
    return raw


def parse_row(entity: Mapping[str, Any]) -> Endpoint | list[Problem]:
    """The endpoint a row holds, or every problem with it (the routes-file validator, plus the key rule)."""
    key = str(entity.get("RowKey", ""))
    parsed = parse_endpoint(to_raw(entity), f"row '{key}'")
    if isinstance(parsed, Endpoint) and key != row_key(parsed.name):
        # A row written around the CLI could share a name with another; the key rule prevents it.
        return [
            Problem(
                f"row '{key}', field 'RowKey'",
                f"must be the lower-cased name '{row_key(parsed.name)}' (names are unique case-insensitively); "
                f"delete the row and add the endpoint again with `python -m routing routes add`",
            )
        ]
    return parsed


@dataclass(frozen=True, slots=True)
class InvalidRow:
    row_key: str
    problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class TableLoad:
    """A whole table as read: the endpoints that passed, and every row that did not, with why."""

    table: RouteTable
    invalid: tuple[InvalidRow, ...] = ()

    @property
    def problems(self) -> tuple[Problem, ...]:
        return tuple(p for row in self.invalid for p in row.problems)


def position_of(entity: Mapping[str, Any]) -> int | None:
    value = entity.get(POSITION)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def in_table_order(entities: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows by `Position`; rows without one after them, as the query returned them (by `RowKey`)."""
    return sorted(entities, key=lambda e: (position_of(e) is None, position_of(e) or 0))


def parse_rows(entities: Iterable[Mapping[str, Any]]) -> TableLoad:
    """The rows as a table, in the table's order (`Position`)."""
    endpoints: list[Endpoint] = []
    invalid: list[InvalidRow] = []
    for entity in in_table_order(entities):
        parsed = parse_row(entity)
        if isinstance(parsed, Endpoint):
            endpoints.append(parsed)
        else:
            invalid.append(InvalidRow(str(entity.get("RowKey", "")), tuple(parsed)))
    # A rule across rows: a second fallback makes its row invalid (and so the table, as any invalid row).
    extra = fallback_problems(endpoints)
    for position, problem in extra:
        invalid.append(InvalidRow(row_key(endpoints[position].name), (problem,)))
    dropped = {position for position, _problem in extra}
    kept = tuple(e for i, e in enumerate(endpoints) if i not in dropped)
    return TableLoad(RouteTable(kept), tuple(invalid))


def load(client: TableClient, *, budget: float | None = None, clock: Callable[[], float] = time.monotonic) -> TableLoad:
    """Every row, with one query (more than 1,000 endpoints take one request per 1,000); with a `budget`,
    no further page is asked for once it is spent (each request is bounded by the client's options)."""
    pages = client.query_entities(ALL_ROWS, parameters={"pk": PARTITION_KEY}).by_page()
    if budget is None:
        return parse_rows(entity for page in pages for entity in page)
    deadline = clock() + budget
    entities: list[Mapping[str, Any]] = []
    for page in pages:
        entities.extend(page)
        if clock() > deadline and getattr(pages, "continuation_token", None):
            raise TimeoutError(f"reading the table took over {budget:g} s (at {len(entities)} rows)")
    return parse_rows(entities)


# --- connections ---------------------------------------------------------------------------------------


def table_client(connection: Connection, table_name: str, **options: Any) -> TableClient:
    """A client for `table_name` over a resolved connection (a connection string, or a managed identity)."""
    options = {**CLIENT_OPTIONS, **options}
    if connection.secret:
        return TableClient.from_connection_string(connection.secret, table_name=table_name, **options)
    assert connection.address is not None
    return TableClient(
        endpoint=connection.address, table_name=table_name, credential=connection.credential(), **options
    )


def describe(client: TableClient) -> str:
    """Where a table is, for messages: the account URL and table name, never a key."""
    return f"routes table '{client.table_name}' at {client.url}"


def short_reason(exc: BaseException) -> str:
    """The first line of an SDK error (the rest is the response body and request ids)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# --- the store the functions read --------------------------------------------------------------------


class RoutesRefusedError(RoutesUnavailableError):
    """The routes table has invalid rows, so it is not used (see `TableRoutes`)."""

    def __init__(self, where: str, invalid: tuple[InvalidRow, ...]) -> None:
        self.invalid = invalid
        rows = "; ".join(f"row '{r.row_key}': " + "; ".join(str(p) for p in r.problems) for r in invalid)
        count = len(invalid)
        super().__init__(
            f"{where} has {count} invalid row{'s' if count != 1 else ''}, so it is not used until "
            f"{'they are' if count != 1 else 'it is'} fixed (`python -m routing routes validate` lists them; "
            f"fix with `routes update` or `routes delete`): {rows}"
        )


class TableRoutes:
    """The route table from Table Storage, cached and re-read every `refresh_seconds` (one query).

    A table is used whole or not at all, as a routes file is: a load with an invalid row (one written
    around the CLI, which validates every write) is refused, logged and counted, and routing keeps the
    last good table. Skipping the row instead would silently stop its endpoint's traffic, and
    dead-lettering "what it would have received" is a guess when the invalid field is its event types or
    its filter; keeping the last good table keeps the endpoint's previous, valid form serving. With no
    table yet (a cold start), `current()` raises, so the function fails and the retry policy holds the
    checkpoint until the row is fixed: nothing is lost, and the failures are visible.

    A failed refresh (unreachable, refused or invalid) is tried again one interval after it ended, so a
    table that hangs costs one bounded refresh (`REFRESH_BUDGET_SECONDS`) per interval, paid by the one
    invocation that refreshes: the others route on the last good table meanwhile instead of waiting.
    """

    def __init__(
        self,
        client: TableClient,
        *,
        refresh_seconds: float = DEFAULT_ROUTES_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not refresh_seconds > 0:
            raise ValueError(f"refresh_seconds must be positive, got {refresh_seconds}")
        self.client = client
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        # The Python worker may run invocations on several threads; one of them refreshes at a time.
        self._lock = threading.Lock()
        self._table: RouteTable | None = None
        self._next_load = -math.inf
        self._last: TableLoad | None = None
        # Refreshes ended, so a cold invocation that waited for another's refresh does not try again at once.
        self._attempts = 0
        self._last_failure: RoutingError | None = None
        self.last_error: str | None = None

    @classmethod
    def from_settings(
        cls, table_name: str, refresh_seconds: float, env: Mapping[str, str] | None = None
    ) -> TableRoutes:
        connection = resolve(ROUTES_STORAGE, "tableServiceUri", env)
        return cls(table_client(connection, table_name), refresh_seconds=refresh_seconds)

    @property
    def invalid_rows(self) -> int:
        """How many rows were invalid in the last load read (which was then refused)."""
        return len(self._last.invalid) if self._last else 0

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Every problem of the invalid rows of the last load read."""
        return self._last.problems if self._last else ()

    def current(self) -> RouteTable:
        table = self._table
        if table is not None:
            if self._clock() < self._next_load:
                return table
            # Due. One invocation refreshes; the others route on the last good table rather than queue.
            if not self._lock.acquire(blocking=False):
                return table
        else:
            # Nothing to route with: wait for a refresh under way (it ends within its budget), then use it.
            attempts = self._attempts
            if not self._lock.acquire(timeout=REFRESH_BUDGET_SECONDS + LOCK_MARGIN_SECONDS):
                raise RoutesUnavailableError(
                    f"{describe(self.client)}: no routes were loaded yet, and another invocation's read "
                    f"of the table took longer than {REFRESH_BUDGET_SECONDS:g} s"
                )
            if self._table is None and self._attempts != attempts and self._last_failure is not None:
                # Another invocation's read failed while this one waited: that is this one's answer too.
                self._lock.release()
                raise self._last_failure
        try:
            if self._table is not None and self._clock() < self._next_load:
                return self._table
            return self._refresh()
        finally:
            self._lock.release()

    def _refresh(self) -> RouteTable:
        try:
            loaded = load(self.client, budget=REFRESH_BUDGET_SECONDS, clock=self._clock)
        except Exception as exc:  # any failure to read must leave routing on the last good table
            self.last_error = short_reason(exc)
            obs.ROUTE_REFRESHES.add(1, {"outcome": "failed"})
            return self._failed(
                RoutesUnavailableError(
                    f"{describe(self.client)} could not be read, and no routes were loaded before: "
                    f"{self.last_error} (check the {ROUTES_STORAGE} setting, the table name, and that "
                    "the identity may read the table)"
                ),
                exc,
                f"could not be read: {self.last_error}",
            )
        self._last = loaded
        if loaded.invalid:
            refused = RoutesRefusedError(describe(self.client), loaded.invalid)
            self.last_error = str(refused)
            obs.ROUTE_REFRESHES.add(1, {"outcome": "invalid"})
            obs.INVALID_ROWS.add(len(loaded.invalid))
            for row in loaded.invalid:
                log.error(
                    "%s: row '%s' is invalid, so the table is not used until it is fixed: %s",
                    describe(self.client),
                    row.row_key,
                    "; ".join(str(p) for p in row.problems),
                    extra={"rowKey": row.row_key, "problems": [str(p) for p in row.problems]},
                )
            count = len(loaded.invalid)
            return self._failed(refused, None, f"was not used: {count} invalid row{'s' if count != 1 else ''}")
        self._succeeded()
        obs.ROUTE_REFRESHES.add(1, {"outcome": "loaded"})
        if self._table != loaded.table:  # logged when it changes, not every interval
            log.info("%s loaded: %d endpoints", describe(self.client), len(loaded.table.endpoints))
        self._table = loaded.table
        return loaded.table

    def _succeeded(self) -> None:
        # From the end of the read, not its start: a slow read must not make the next one due at once.
        self._next_load = self._clock() + self.refresh_seconds
        self._attempts += 1
        self._last_failure = None
        self.last_error = None

    def _failed(self, error: RoutingError, cause: BaseException | None, what: str) -> RouteTable:
        self._attempts += 1
        self._last_failure = error
        if self._table is None:
            # Not loaded yet: the next call tries again (the function's retry policy paces it).
            raise error from cause
        # Again one interval after this attempt ended: an outage costs one bounded read per interval.
        self._next_load = self._clock() + self.refresh_seconds
        log.error(
            "%s %s; routing keeps the last good table (%d endpoints) and tries again in %g s",
            describe(self.client),
            what,
            len(self._table.endpoints),
            self.refresh_seconds,
        )
        return self._table


# --- edits (the CLI) ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One row as read, with its ETag: what an edit starts from and must not overwrite blindly."""

    entity: Mapping[str, Any]
    etag: str

    @property
    def raw(self) -> dict[str, Any]:
        return to_raw(self.entity)

    @property
    def parsed(self) -> Endpoint | list[Problem]:
        return parse_row(self.entity)


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: tuple[str, ...]
    updated: tuple[str, ...]
    deleted: tuple[str, ...]
    kept: tuple[str, ...]  # rows not in the file, left alone (without --replace)


def validated(raw: Mapping[str, Any], where: str) -> Endpoint:
    """An endpoint from user input, or `RouteTableError` listing every problem (the one validator)."""
    parsed = parse_endpoint(dict(raw), where)
    if isinstance(parsed, list):
        raise RouteTableError(parsed, where)
    return parsed


class RouteRows:
    """Reads and edits of the routes table for the CLI: every write validated, every change ETag-guarded."""

    def __init__(self, client: TableClient) -> None:
        self.client = client

    @property
    def name(self) -> str:
        return self.client.table_name

    def load(self) -> TableLoad:
        try:
            return load(self.client)
        except ResourceNotFoundError:
            return TableLoad(RouteTable())  # no table yet: no routes

    def entities(self) -> list[TableEntity]:
        try:
            return list(self.client.query_entities(ALL_ROWS, parameters={"pk": PARTITION_KEY}))
        except ResourceNotFoundError:
            return []

    def get(self, name: str) -> Row:
        try:
            entity = self.client.get_entity(PARTITION_KEY, row_key(name))
        except ResourceNotFoundError:
            raise EndpointNotFoundError(name, self.name) from None
        return Row(entity, str(entity.metadata["etag"]))

    def ensure_table(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            self.client.create_table()

    def _check_fallback(self, endpoints: Sequence[Endpoint], *, replacing: bool = False) -> None:
        """Refuse to write a second fallback endpoint: the table would not load (at most one per table)."""
        fallback = next((e for e in endpoints if e.fallback), None)
        if fallback is None or replacing:
            return
        written = {row_key(e.name) for e in endpoints}
        for entity in self.entities():
            if entity.get("Fallback") is True and str(entity.get("RowKey")) not in written:
                raise RouteTableError(
                    [
                        Problem(
                            f"endpoint '{fallback.name}', field 'fallback'",
                            f"'{entity.get('Name') or entity.get('RowKey')}' is the fallback already: a table has "
                            "at most one (update that one with --no-fallback first)",
                        )
                    ]
                )

    def add(self, endpoint: Endpoint) -> None:
        """A new row, last in the table's order."""
        self.ensure_table()
        self._check_fallback([endpoint])
        positions = [p for e in self.entities() if (p := position_of(e)) is not None]
        try:
            self.client.create_entity(to_entity(endpoint, max(positions, default=-1) + 1))
        except ResourceExistsError:
            raise EndpointExistsError(endpoint.name, self.name) from None

    def replace(self, endpoint: Endpoint, etag: str, position: int | None = None) -> None:
        """Write `endpoint` over its row at `position`, only if the row still has `etag` (nobody changed it
        meanwhile)."""
        try:
            self.client.update_entity(
                to_entity(endpoint, position),
                mode=UpdateMode.REPLACE,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            raise EndpointChangedError(endpoint.name) from None
        except ResourceNotFoundError:
            # Deleted since it was read: also a change the user has not seen.
            raise EndpointChangedError(endpoint.name) from None

    def edit(self, name: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Endpoint:
        """Read the row, apply `change` to its routes-file form, validate, and write it back if unchanged."""
        row = self.get(name)
        endpoint = validated(change(row.raw), f"endpoint '{name}'")
        if row_key(endpoint.name) != row_key(name):
            raise RouteTableError(
                [Problem(f"endpoint '{name}', field 'name'", "cannot be changed: delete it and add the new name")]
            )
        self._check_fallback([endpoint])
        self.replace(endpoint, row.etag, position_of(row.entity))  # an edit keeps the row's place
        return endpoint

    def delete(self, name: str) -> None:
        row = self.get(name)
        try:
            self.client.delete_entity(
                PARTITION_KEY, row_key(name), etag=row.etag, match_condition=MatchConditions.IfNotModified
            )
        except ResourceModifiedError:
            raise EndpointChangedError(name) from None

    def import_table(self, table: RouteTable, *, replace: bool) -> ImportResult:
        """Write a validated table: upsert every endpoint; with `replace`, delete rows not in it.

        The file's endpoints take the table's first places, in the file's order; rows kept (not in the
        file, without `replace`) follow, in their order.

        One transaction per 100 operations (one partition). Up to 100 changes apply all or nothing;
        beyond that, batches apply in order and a failure leaves the earlier ones applied; running the
        import again completes it, since every operation is idempotent.
        """
        self.ensure_table()
        self._check_fallback(table.endpoints, replacing=replace)
        existing = [str(e["RowKey"]) for e in in_table_order(self.entities())]
        wanted = {row_key(e.name) for e in table.endpoints}
        operations: list[Any] = [
            ("upsert", to_entity(e, position), {"mode": UpdateMode.REPLACE})
            for position, e in enumerate(table.endpoints)
        ]
        absent = [key for key in existing if key not in wanted]
        if replace:
            operations += [("delete", {"PartitionKey": PARTITION_KEY, "RowKey": key}) for key in absent]
        else:
            # Only their place changes: a merge of that one property leaves whatever else they hold.
            operations += [
                # An update, not an upsert: a row deleted meanwhile fails the import instead of coming back
                # as a row holding only its place.
                ("update", {"PartitionKey": PARTITION_KEY, "RowKey": key, POSITION: len(table.endpoints) + i},
                 {"mode": UpdateMode.MERGE})
                for i, key in enumerate(absent)
            ]  # fmt: skip
        for start in range(0, len(operations), MAX_BATCH):
            self.client.submit_transaction(operations[start : start + MAX_BATCH])
        before = set(existing)
        return ImportResult(
            added=tuple(e.name for e in table.endpoints if row_key(e.name) not in before),
            updated=tuple(e.name for e in table.endpoints if row_key(e.name) in before),
            deleted=tuple(absent) if replace else (),
            kept=() if replace else tuple(absent),
        )
