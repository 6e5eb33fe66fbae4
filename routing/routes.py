"""The route table: endpoints, which event types each wants, and the validation that guards it.

Route tables come from a routes file (a JSON list of endpoints, fields as in the first Digital Twins
service's Endpoints API) or, row by row, from Table Storage. Both go through `parse_endpoint`, which
reports every problem of an endpoint at once (a bad filter among them: filters are compiled here,
once, by `routing.filters`); `parse_routes` adds the checks across endpoints.
Pure values; reading files and tables is the stores' job.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from routing.errors import Problem, RouteTableError
from routing.filters import EventBody, Filter, FilterSyntaxError, compile_filter
from routing.model import EndpointType, EnvelopeFormat, Event, EventType

FIELDS = ("name", "type", "eventTypes", "connection", "secondaryConnection", "path", "format", "enabled", "filter")
REQUIRED = ("name", "type", "eventTypes", "connection", "path")

# Reserved because the local runner writes dead letters beside the endpoint files,
# and the blob dead-letter store keeps unclassifiable messages under `_unclassified/`.
RESERVED_NAMES = frozenset({"deadletter", "_unclassified"})
MAX_NAME_LENGTH = 128
# Characters Table Storage refuses in keys, plus what would escape the output folder.
_BAD_NAME_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
# An app setting name: what App Service accepts (letters, digits, _ . -, and __ for nesting).
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    name: str
    type: EndpointType
    event_types: tuple[EventType, ...]
    connection: str
    path: str
    secondary_connection: str | None = None
    format: EnvelopeFormat = EnvelopeFormat.EVENT_GRID
    enabled: bool = True
    # Compiled when the table loads; None routes every event of the endpoint's types.
    filter: Filter | None = None

    def to_dict(self) -> dict[str, Any]:
        """The routes-file form (what `parse_endpoint` reads back unchanged)."""
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type.value,
            "eventTypes": [t.value for t in self.event_types],
            "connection": self.connection,
        }
        if self.secondary_connection is not None:
            out["secondaryConnection"] = self.secondary_connection
        out["path"] = self.path
        out["format"] = self.format.value
        out["enabled"] = self.enabled
        if self.filter is not None:
            out["filter"] = self.filter.text
        return out


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Endpoints in table order, indexed by event type once so matching is one dict look-up."""

    endpoints: tuple[Endpoint, ...] = ()
    _by_type: Mapping[EventType, tuple[Endpoint, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {t: tuple(e for e in self.endpoints if e.enabled and t in e.event_types) for t in EventType}
        object.__setattr__(self, "_by_type", index)

    def for_type(self, event_type: EventType) -> tuple[Endpoint, ...]:
        return self._by_type[event_type]

    def get(self, name: str) -> Endpoint | None:
        lowered = name.lower()
        return next((e for e in self.endpoints if e.name.lower() == lowered), None)


def matching(event: Event, candidates: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """The candidates (the endpoints taking the event's type) whose filter passes `event`.

    One `EventBody` is shared by every filter, so a telemetry body is parsed at most once per event,
    and only if a filter reads it.
    """
    if all(e.filter is None for e in candidates):
        return candidates
    body = EventBody(event)
    return tuple(e for e in candidates if e.filter is None or e.filter.matches(event, body))


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _setting_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "must name an app setting (a non-empty string)"
    if ";" in value or "=" in value or "://" in value or not _SETTING_NAME.match(value):
        return "must be the NAME of an app setting that holds the connection, never the connection string or key itself"
    return None


def parse_endpoint(raw: Any, where: str) -> Endpoint | list[Problem]:
    """One endpoint from its routes-file form, or every problem with it."""
    if not isinstance(raw, Mapping):
        return [Problem(where, f"must be a JSON object, got {type(raw).__name__}")]
    name = raw.get("name")
    if isinstance(name, str) and name:
        where = f"endpoint '{name}'"
    problems: list[Problem] = []

    def problem(field_name: str, message: str) -> None:
        problems.append(Problem(f"{where}, field '{field_name}'", message))

    for key in raw:
        if key not in FIELDS:
            problem(str(key), f"unknown field{_suggest(str(key), FIELDS)}")
    for key in REQUIRED:
        if key not in raw or raw[key] is None:
            problem(key, "is required")

    if "name" in raw and raw["name"] is not None:
        if not isinstance(name, str) or not name.strip():
            problem("name", "must be a non-empty string")
        elif name != name.strip():
            problem("name", "must not start or end with spaces")
        elif len(name) > MAX_NAME_LENGTH:
            problem("name", f"must be at most {MAX_NAME_LENGTH} characters")
        elif _BAD_NAME_CHARS.search(name) or name in (".", ".."):
            problem("name", "must not contain / \\ # ? or control characters")
        elif name.lower() in RESERVED_NAMES:
            problem("name", f"'{name}' is reserved (dead letters are kept under that name)")

    endpoint_type: EndpointType | None = None
    if raw.get("type") is not None:
        value = raw["type"]
        endpoint_type = EndpointType.parse(value) if isinstance(value, str) else None
        if endpoint_type is None:
            hint = _suggest(value, [t.value for t in EndpointType]) if isinstance(value, str) else ""
            problem("type", f"unknown endpoint type {value!r}{hint}; expected EventHub, ServiceBus or EventGrid")

    event_types: list[EventType] = []
    if raw.get("eventTypes") is not None:
        value = raw["eventTypes"]
        if not isinstance(value, list) or not value:
            problem("eventTypes", "must be a non-empty list of event types")
        else:
            for item in value:
                parsed = EventType.parse(item) if isinstance(item, str) else None
                if parsed is None:
                    known = [t.value for t in EventType]
                    hint = _suggest(item, known) if isinstance(item, str) else ""
                    problem("eventTypes", f"unknown event type {item!r}{hint}; expected one of {', '.join(known)}")
                elif parsed not in event_types:
                    event_types.append(parsed)
    if endpoint_type is not None:
        for event_type in event_types:
            if event_type not in endpoint_type.accepts:
                problem(
                    "eventTypes",
                    f"{endpoint_type} endpoints cannot take {event_type}: raw device telemetry goes to "
                    "EventHub endpoints only",
                )

    connection = raw.get("connection")
    if connection is not None and (message := _setting_problem(connection)):
        problem("connection", message)
    secondary = raw.get("secondaryConnection")
    if secondary is not None and (message := _setting_problem(secondary)):
        problem("secondaryConnection", message)

    path = raw.get("path")
    if path is not None and (not isinstance(path, str) or not path.strip()):
        problem("path", "must be a non-empty string (the hub, queue or topic name, or the Event Grid topic host)")

    envelope_format = EnvelopeFormat.EVENT_GRID
    if raw.get("format") is not None:
        value = raw["format"]
        parsed_format = EnvelopeFormat.parse(value) if isinstance(value, str) else None
        if parsed_format is None:
            problem("format", f"unknown format {value!r}; expected EventGridSchema or CloudEventSchemaV1_0")
        else:
            envelope_format = parsed_format

    enabled = raw.get("enabled", True)
    if enabled is None:
        enabled = True
    if not isinstance(enabled, bool):
        problem("enabled", f"must be true or false, got {enabled!r}")

    compiled: Filter | None = None
    if raw.get("filter") is not None:
        value = raw["filter"]
        if not isinstance(value, str):
            problem("filter", f"must be a string (a route filter, see docs/FILTERS.md), got {value!r}")
        else:
            try:
                compiled = compile_filter(value)
            except FilterSyntaxError as exc:
                problem("filter", f"{exc} in {value!r}")

    if problems or endpoint_type is None:
        return problems
    assert isinstance(name, str) and isinstance(connection, str) and isinstance(path, str)
    return Endpoint(
        name=name,
        type=endpoint_type,
        event_types=tuple(event_types),
        connection=connection,
        secondary_connection=secondary,
        path=path,
        format=envelope_format,
        enabled=bool(enabled),
        filter=compiled,
    )


def parse_routes(raw: Any, source: str = "route table") -> RouteTable:
    """A whole route table from its routes-file form; raises `RouteTableError` listing every problem."""
    if not isinstance(raw, list):
        raise RouteTableError([Problem(source, f"must be a JSON list of endpoints, got {type(raw).__name__}")], source)
    problems: list[Problem] = []
    endpoints: list[Endpoint] = []
    seen: dict[str, int] = {}
    for position, item in enumerate(raw, start=1):
        parsed = parse_endpoint(item, f"endpoint #{position}")
        # Duplicates are checked on the raw name, so they are reported even beside other problems.
        name = item.get("name") if isinstance(item, Mapping) else None
        if isinstance(name, str) and name:
            first = seen.setdefault(name.lower(), position)
            if first != position:
                problems.append(
                    Problem(f"endpoint '{name}' (#{position})", f"duplicate name: endpoint #{first} has it already")
                )
        if isinstance(parsed, list):
            problems.extend(parsed)
        else:
            endpoints.append(parsed)
    if problems:
        raise RouteTableError(problems, source)
    return RouteTable(tuple(endpoints))
