"""The route table: endpoints, which event types each wants, and the validation that guards it.

Route tables come from a routes file (a JSON list of endpoints, fields as in the first Digital Twins
service's Endpoints API) or, row by row, from Table Storage. Both go through `parse_endpoint`, which
reports every problem of an endpoint at once (a bad filter among them: filters are compiled here,
once, by `routing.routes.filters`); `parse_routes` adds the checks across endpoints.
Pure values; reading files and tables is the stores' job.
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_origin

import msgspec

from routing.errors import Problem, RouteTableError
from routing.model import (
    DIGITAL_TWINS_EVENT_TYPES,
    IOT_HUB_SOURCE_TYPES,
    KNOWN_ENDPOINT_TYPES,
    KNOWN_EVENT_TYPES,
    RAW_TYPES,
    EndpointType,
    EnvelopeFormat,
    Event,
    EventType,
    shape_seed,
)
from routing.routes.filters import EventBody, Filter, FilterLanguage, FilterSyntaxError, IndexKey, compile_filter
from routing.routes.iothub_queries import compile_iot_hub_query
from routing.routes.templates import ValueTemplate, compile_value
from routing.settings import looks_like_secret

# Reserved because the local runner writes dead letters beside the endpoint files,
# and the blob dead-letter store keeps unclassifiable messages under `_unclassified/`.
# Names the dead letters use: the file store's file, the Blob store's folders (unclassified messages,
# the pending markers of writes under way, parked messages, endpoint health; listings of letters skip
# the folders starting with `_` but `_unclassified`: routing/deadletters.py).
RESERVED_NAMES = frozenset({"deadletter", "_unclassified", "_pending", "_parked", "_health"})
MAX_NAME_LENGTH = 128
# Characters Table Storage refuses in keys, plus what would escape the output folder.
_BAD_NAME_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
# An app setting name: what App Service accepts (letters, digits, _ . -, and __ for nesting).
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
# Properties the router sets on Digital Twins events itself; an enrichment may not replace them.
_ROUTER_PROPERTIES = frozenset({"eventtype", "subject", "correlationid"})
# CloudEvents extension attribute names (the spec: lower-case letters and digits, at most 20), and the
# context attributes an extension cannot be.
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_CLOUD_EVENT_ATTRIBUTES = frozenset(
    {"id", "source", "type", "subject", "time", "specversion", "datacontenttype", "dataschema", "data", "data_base64"}
)
MAX_ENRICHMENTS = 20
# Event Hubs: the router picks each key's partition with the service's hash and sends a batch per
# partition (default), or sends a batch per key and lets the service pick.
PARTITIONING = ("router", "service")
# How long a parked message waits for its endpoint before it is dead-lettered (`expired`): Digital Twins
# keeps retrying an endpoint for 24 hours; at most a week (a parked key holds its device that long).
DEFAULT_TIME_TO_LIVE_MINUTES = 24 * 60
MAX_TIME_TO_LIVE_MINUTES = 7 * 24 * 60
# A Storage endpoint's blob names, as IoT Hub's storage endpoint names them (`fileNameFormat`): these
# tokens, every one of them, in any order; the router adds a suffix (routing/deliver/storage.py).
FILE_NAME_TOKENS = ("{iothub}", "{partition}", "{YYYY}", "{MM}", "{DD}", "{HH}", "{mm}")
DEFAULT_FILE_NAME_FORMAT = "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}"
# Blob names are at most 1,024 characters: this leaves room for the tokens' values and the suffix.
MAX_FILE_NAME_FORMAT_LENGTH = 512
_TOKEN = re.compile(r"\{[^{}]*\}")
# A Blob container's name: 3-63 lower-case letters, digits and single hyphens, starting with a letter or digit.
_CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:-?[a-z0-9])*$")


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
    # How `filter` is written: a Digital Twins route filter or an IoT Hub routing query.
    filter_language: FilterLanguage = FilterLanguage.DIGITAL_TWINS
    # Compiled when the table loads; None routes every event of the endpoint's types.
    filter: Filter | None = None
    # What orders this endpoint's messages (None: the device or twin id), and properties added to each.
    order_key: ValueTemplate | None = None
    enrichments: tuple[tuple[str, ValueTemplate], ...] = ()
    partitioning: str = PARTITIONING[0]
    time_to_live_minutes: int = DEFAULT_TIME_TO_LIVE_MINUTES
    # IoT Hub's fallback route: takes, among its event types, what no other enabled endpoint took.
    fallback: bool = False
    # Storage endpoints: how blobs are named (IoT Hub's tokens; FILE_NAME_TOKENS).
    file_name_format: str = DEFAULT_FILE_NAME_FORMAT
    # What sets this endpoint's message ids apart from other shapes of an event, once per load (None: the
    # default shape, which keeps the event's ids); see `routing.model.shape_seed`.
    id_seed: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        order_key = None if self.order_key is None else self.order_key.raw
        seed = shape_seed(self.format, order_key, [(name, value.raw) for name, value in self.enrichments])
        object.__setattr__(self, "id_seed", seed)

    @property
    def destination(self) -> tuple[str, ...]:
        """Where messages go and what they look like there: endpoints alike in this are one destination,
        and an event matching several of them is sent once."""
        return (
            self.type.value,
            self.connection.lower(),
            self.path.strip().lower(),
            self.format.value,
            "" if self.order_key is None else repr(self.order_key.raw),
            repr(sorted((name, repr(template.raw)) for name, template in self.enrichments)),
            self.file_name_format,
        )

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
        if self.filter_language is not FilterLanguage.DIGITAL_TWINS:
            out["filterLanguage"] = self.filter_language.value
        if self.filter is not None:
            out["filter"] = self.filter.text
        if self.order_key is not None:
            out["orderKey"] = self.order_key.raw
        if self.enrichments:
            out["enrichments"] = {name: template.raw for name, template in self.enrichments}
        if self.partitioning != PARTITIONING[0]:
            out["partitioning"] = self.partitioning
        if self.time_to_live_minutes != DEFAULT_TIME_TO_LIVE_MINUTES:
            out["timeToLiveMinutes"] = self.time_to_live_minutes
        if self.fallback:
            out["fallback"] = True
        if self.file_name_format != DEFAULT_FILE_NAME_FORMAT:
            out["fileNameFormat"] = self.file_name_format
        return out


def _forwards(event_type: EventType, endpoints: tuple[Endpoint, ...]) -> bool:
    """Whether each of `endpoints` gets every event of `event_type` as it came: the ingress message's body,
    application properties and content type (a raw type; no order key template, no enrichment; not v2
    telemetry for Event Grid, which gets a CloudEvent), so the pipeline makes its messages in one step
    (routing/deliver/envelope.py, `forward_all`)."""
    if event_type not in RAW_TYPES:
        return False
    return not any(
        e.order_key is not None
        or e.enrichments
        or (event_type is EventType.TWIN_TELEMETRY and e.type is EndpointType.EVENT_GRID)
        for e in endpoints
    )


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Endpoints in table order, arranged once per load: per event type, the endpoints taking it (one
    dict look-up per event), their filters indexed (`_Selector`), and endpoints sharing a destination."""

    endpoints: tuple[Endpoint, ...] = ()
    _by_type: Mapping[EventType, tuple[Endpoint, ...]] = field(init=False, repr=False, compare=False)
    # Endpoints sharing a destination with an earlier one, by name -> the first one's name.
    same_as: Mapping[str, str] = field(init=False, repr=False, compare=False)
    # Per type: whether any endpoint taking it has a filter; whether any reads the event (a filter,
    # an order key template or an enrichment), so the pipeline shares one lazily parsed body.
    _filtered: Mapping[EventType, _Selector | None] = field(init=False, repr=False, compare=False)
    _reads_event: Mapping[EventType, bool] = field(init=False, repr=False, compare=False)
    # Per type without filters: the targets of every event, decided once.
    _unfiltered: Mapping[EventType, tuple[Endpoint, ...]] = field(init=False, repr=False, compare=False)
    # The enabled fallback endpoint (IoT Hub's fallback route), if any, and per type what it adds: itself
    # for an event no other endpoint took, if it takes the type.
    fallback: Endpoint | None = field(init=False, repr=False, compare=False)
    _spare: Mapping[EventType, tuple[Endpoint, ...]] = field(init=False, repr=False, compare=False)
    # Per type: its targets when every event of it goes to each as it came (`forwarded`), else None.
    forwarded: Mapping[EventType, tuple[Endpoint, ...] | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        routed = [e for e in self.endpoints if e.enabled and not e.fallback]
        index = {t: tuple(e for e in routed if t in e.event_types) for t in EventType}
        object.__setattr__(self, "_by_type", index)
        fallback = next((e for e in self.endpoints if e.enabled and e.fallback), None)
        object.__setattr__(self, "fallback", fallback)
        spare = {t: (fallback,) if fallback is not None and t in fallback.event_types else () for t in EventType}
        object.__setattr__(self, "_spare", spare)
        first: dict[tuple[str, ...], str] = {}
        same_as = {}
        for endpoint in self.endpoints:
            if endpoint.enabled:
                name = first.setdefault(endpoint.destination, endpoint.name)
                if name != endpoint.name:
                    same_as[endpoint.name] = name
        object.__setattr__(self, "same_as", same_as)
        filtered = {t: _Selector.of(index[t]) for t in EventType}
        object.__setattr__(self, "_filtered", filtered)
        reads = {
            t: filtered[t] is not None or any(e.order_key or e.enrichments for e in index[t] + spare[t])
            for t in EventType
        }
        object.__setattr__(self, "_reads_event", reads)
        unfiltered = {t: self.once(index[t]) or spare[t] for t in EventType}
        object.__setattr__(self, "_unfiltered", unfiltered)
        object.__setattr__(
            self,
            "forwarded",
            {t: unfiltered[t] if filtered[t] is None and _forwards(t, unfiltered[t]) else None for t in EventType},
        )

    def for_type(self, event_type: EventType) -> tuple[Endpoint, ...]:
        """The enabled endpoints taking `event_type`, the fallback aside."""
        return self._by_type[event_type]

    def reads_event(self, event_type: EventType) -> bool:
        return self._reads_event[event_type]

    def targets(self, event: Event, body: EventBody | None = None) -> tuple[Endpoint, ...]:
        """Where `event` goes: the endpoints taking its type (an index look-up), then those whose filter
        passes, each destination once; if none, the fallback endpoint, if it takes the type."""
        selector = self._filtered[event.event_type]
        if selector is None:
            return self._unfiltered[event.event_type]
        return (
            self.once(selector.select(event, EventBody(event) if body is None else body))
            or self._spare[event.event_type]
        )

    def once(self, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        """`endpoints` without those that repeat an earlier one's destination: an event goes there once."""
        if not self.same_as or len(endpoints) < 2:
            return endpoints
        kept: list[Endpoint] = []
        seen: set[str] = set()
        for endpoint in endpoints:
            # Named after the first endpoint of its destination (its own name when it is the first).
            destination = self.same_as.get(endpoint.name, endpoint.name)
            if destination not in seen:
                seen.add(destination)
                kept.append(endpoint)
        return tuple(kept)

    def get(self, name: str) -> Endpoint | None:
        lowered = name.lower()
        return next((e for e in self.endpoints if e.name.lower() == lowered), None)


Placed = tuple[int, Endpoint]  # an endpoint and its position in the table


class _PathIndex:
    """The filtered endpoints indexed by one path: for a value of that path, the endpoints whose indexed
    conjunct it satisfies (`=` a dictionary, STARTS_WITH the value's prefixes, `<`/`>` sorted literals).
    It may offer more than pass (each is then tested whole) but never misses one that would."""

    def __init__(self, key: IndexKey) -> None:
        self.key = key
        self.equal: dict[Any, list[Placed]] = {}
        self.prefixes: dict[str, list[Placed]] = {}
        self.longest_prefix = 0
        # op -> ("number" | "text" -> literals with their endpoints); sorted into `sorted_ranges`
        self.ranges: dict[str, dict[str, list[tuple[Any, Placed]]]] = {}
        self.sorted_ranges: dict[str, dict[str, tuple[list[Any], list[Placed]]]] = {}

    def add(self, key: IndexKey, placed: Placed) -> None:
        if key.op == "=":
            self.equal.setdefault(key.key, []).append(placed)
        elif key.op == "starts_with":
            assert isinstance(key.key, str)
            self.prefixes.setdefault(key.key, []).append(placed)
            self.longest_prefix = max(self.longest_prefix, len(key.key))
        else:
            kind = "text" if isinstance(key.key, str) else "number"
            self.ranges.setdefault(key.op, {}).setdefault(kind, []).append((key.key, placed))

    def freeze(self) -> None:
        for op, by_kind in self.ranges.items():
            for kind, items in by_kind.items():
                items.sort(key=lambda item: item[0])
                literals = [literal for literal, _placed in items]
                self.sorted_ranges.setdefault(op, {})[kind] = (literals, [placed for _literal, placed in items])

    def candidates(self, value: Any) -> list[Placed]:
        # As the filters compare: strings with strings, numbers with numbers, and true is not 1.
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return []
        found = list(self.equal.get(value, ()))
        if isinstance(value, str) and self.prefixes:
            for end in range(min(len(value), self.longest_prefix) + 1):
                found.extend(self.prefixes.get(value[:end], ()))
        kind = "text" if isinstance(value, str) else "number"
        for op, by_kind in self.sorted_ranges.items():
            sorted_range = by_kind.get(kind)
            if sorted_range is None:
                continue
            literals, placed = sorted_range
            if op == ">":  # value > literal
                found.extend(placed[: bisect.bisect_left(literals, value)])
            elif op == ">=":
                found.extend(placed[: bisect.bisect_right(literals, value)])
            elif op == "<":
                found.extend(placed[bisect.bisect_right(literals, value) :])
            else:  # "<="
                found.extend(placed[bisect.bisect_left(literals, value) :])
        return found


@dataclass(frozen=True, slots=True)
class _Selector:
    """The endpoints of one event type that have filters, arranged so an event tests only those that
    could pass: a filter with an indexable top-level conjunct (`path = 'x' AND ...`, `path > 3`,
    `STARTS_WITH(path, 'x')`) is found through its path's index (one evaluation of the path per event,
    however many endpoints), the others are tested one by one, each distinct filter text once."""

    # No filter (always taken) or a filter with nothing to index by.
    tested: tuple[Placed, ...]
    # Whether some filters are the same text (then each text is tested once per event).
    repeated: bool
    indexed: tuple[_PathIndex, ...]

    @classmethod
    def of(cls, endpoints: tuple[Endpoint, ...]) -> _Selector | None:
        if all(e.filter is None for e in endpoints):
            return None
        tested: list[Placed] = []
        # A path reads differently in each language (`$body` of a message IoT Hub would not read is
        # undefined), so each language's paths are indexed apart.
        by_path: dict[tuple[FilterLanguage, str], _PathIndex] = {}
        for position, endpoint in enumerate(endpoints):
            key = endpoint.filter.index if endpoint.filter is not None else None
            if key is None or endpoint.filter is None:
                tested.append((position, endpoint))
            else:
                where = (endpoint.filter.language, key.path)
                index = by_path.get(where)
                if index is None:
                    index = by_path[where] = _PathIndex(key)
                index.add(key, (position, endpoint))
        for index in by_path.values():
            index.freeze()
        filters = [e.filter for e in endpoints if e.filter is not None]
        return cls(tuple(tested), len(set(filters)) < len(filters), tuple(by_path.values()))

    def select(self, event: Event, body: EventBody) -> tuple[Endpoint, ...]:
        seen: dict[Filter, bool] = {}  # a filter is its text and language

        def passes(endpoint: Endpoint) -> bool:
            test = endpoint.filter
            if test is None:
                return True
            if not self.repeated:
                return test.matches(event, body)
            passed = seen.get(test)
            if passed is None:
                passed = seen[test] = test.matches(event, body)
            return passed

        chosen = [placed for placed in self.tested if passes(placed[1])]
        if not self.indexed:
            return tuple(e for _p, e in chosen)
        for index in self.indexed:
            for position, endpoint in index.candidates(index.key.operand.value(event, body)):
                if passes(endpoint):  # the whole filter: its other conditions too
                    chosen.append((position, endpoint))
        chosen.sort(key=lambda item: item[0])  # table order, as without the index
        return tuple(e for _p, e in chosen)


def matching(event: Event, candidates: tuple[Endpoint, ...], body: EventBody | None = None) -> tuple[Endpoint, ...]:
    """The candidates (the endpoints taking the event's type) whose filter passes `event`.

    One `EventBody` is shared by every filter, so a telemetry body is parsed at most once per event,
    and only if a filter reads it.
    """
    if all(e.filter is None for e in candidates):
        return candidates
    if body is None:
        body = EventBody(event)
    return tuple(e for e in candidates if e.filter is None or e.filter.matches(event, body))


# --- validation -------------------------------------------------------------------------------------
#
# The fields and their types are declared once (`RouteFields`); the library checks each field's type,
# one field at a time so that every problem is reported at once, and the unknown fields are those the
# struct does not declare. What a type cannot say (a name's characters, known event types with a
# did-you-mean, which endpoint kinds take a type, filters and templates that compile) is one rule per field,
# in `_RULES`, run in field order on the values that have the right type.


class RouteFields(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """An endpoint as the routes file writes it (a table row holds the same fields, capitalised)."""

    name: str
    type: str
    event_types: list[str]
    connection: str
    secondary_connection: str | None = None
    path: str
    format: str = EnvelopeFormat.EVENT_GRID.value
    enabled: bool = True
    filter_language: str = FilterLanguage.DIGITAL_TWINS.value
    filter: str | None = None
    order_key: str | None = None
    enrichments: dict[str, Any] | None = None
    partitioning: str = PARTITIONING[0]
    time_to_live_minutes: int = DEFAULT_TIME_TO_LIVE_MINUTES
    fallback: bool = False
    file_name_format: str | None = None


_DECLARED = msgspec.structs.fields(RouteFields)
FIELDS = tuple(f.encode_name for f in _DECLARED)
REQUIRED = tuple(f.encode_name for f in _DECLARED if f.required)
# The type each field is checked as. The items of a list and the keys of an object are left to the
# rules, which name the item (an event type that is not a string is an unknown event type).
_CHECKED_AS: dict[str, Any] = {
    **{f.encode_name: f.type for f in _DECLARED},
    "eventTypes": list[Any],
    "enrichments": dict[Any, Any],
}
_TTL_PROBLEM = f"must be a whole number of minutes from 1 to {MAX_TIME_TO_LIVE_MINUTES} (a week)"
_PATH_PROBLEM = (
    "must be a non-empty string (the hub, queue or topic name, the Event Grid topic host, or the Blob container)"
)
_SETTING_PROBLEM = "must name an app setting (a non-empty string)"
# What a value of the wrong type is told.
_WRONG_TYPE: dict[str, Callable[[Any], str]] = {
    "name": lambda _value: "must be a non-empty string",
    "type": lambda value: f"unknown endpoint type {value!r}; expected {KNOWN_ENDPOINT_TYPES}",
    "eventTypes": lambda _value: "must be a non-empty list of event types",
    "connection": lambda _value: _SETTING_PROBLEM,
    "secondaryConnection": lambda _value: _SETTING_PROBLEM,
    "path": lambda _value: _PATH_PROBLEM,
    "format": lambda value: f"unknown format {value!r}; expected EventGridSchema or CloudEventSchemaV1_0",
    "enabled": lambda value: f"must be true or false, got {value!r}",
    "filterLanguage": lambda value: f"must be {_LANGUAGE_CHOICES}, got {value!r}",
    "filter": lambda value: f"must be a string (a route filter, see docs/FILTERS.md), got {value!r}",
    "orderKey": lambda value: f"must be a string (a path or a template, see docs/FILTERS.md), got {value!r}",
    "enrichments": lambda value: f"must be an object of property name -> value, got {type(value).__name__}",
    "partitioning": lambda value: f"must be 'router' or 'service', got {value!r}",
    "timeToLiveMinutes": lambda value: _TTL_PROBLEM + f", got {value!r}",
    "fallback": lambda value: f"must be true or false, got {value!r}",
    "fileNameFormat": lambda value: f"must be a string (IoT Hub's blob name format), got {value!r}",
}


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _setting_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return _SETTING_PROBLEM
    if ";" in value or "=" in value or "://" in value or not _SETTING_NAME.match(value) or looks_like_secret(value):
        return "must be the NAME of an app setting that holds the connection, never the connection string or key itself"
    return None


class _Rules:
    """What the rules found so far: the values they made, and the problems (field label, message)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.problems: list[tuple[str, str]] = []

    def problem(self, label: str, message: str) -> None:
        self.problems.append((label, message))


# Each rule gets a value of the field's declared type, and returns what the endpoint holds (or None).
Rule = Callable[[Any, _Rules], Any]


def _name(name: str, found: _Rules) -> str | None:
    if not name.strip():
        found.problem("name", "must be a non-empty string")
    elif name != name.strip():
        found.problem("name", "must not start or end with spaces")
    elif len(name) > MAX_NAME_LENGTH:
        found.problem("name", f"must be at most {MAX_NAME_LENGTH} characters")
    elif _BAD_NAME_CHARS.search(name) or name in (".", ".."):
        found.problem("name", "must not contain / \\ # ? or control characters")
    elif name.lower() in RESERVED_NAMES:
        found.problem("name", f"'{name}' is reserved (dead letters are kept under that name)")
    elif name.startswith("_"):
        # The dead-letter container's folders starting with `_` hold no letters (markers, parked messages,
        # health): an endpoint named so would have its dead letters hidden from every listing.
        found.problem("name", "must not start with '_' (reserved for the dead-letter store's own folders)")
    else:
        return name
    return None


def _endpoint_type(value: str, found: _Rules) -> EndpointType | None:
    parsed = EndpointType.parse(value)
    if parsed is None:
        hint = _suggest(value, [t.value for t in EndpointType])
        found.problem("type", f"unknown endpoint type {value!r}{hint}; expected {KNOWN_ENDPOINT_TYPES}")
    return parsed


# What an `eventTypes` entry may say for "every event type this endpoint's type takes".
EVERY_EVENT_TYPE = frozenset({"*", "all"})
_EVERY = "*"  # in `_Rules.values` once an entry said so (no field is named so)


def _event_types(items: list[Any], found: _Rules) -> list[EventType]:
    if not items:
        found.problem("eventTypes", "must be a non-empty list of event types")
        return []
    event_types: list[EventType] = []
    endpoint_type: EndpointType | None = found.values.get("type")
    for item in items:
        if isinstance(item, str) and item.strip().lower() in EVERY_EVENT_TYPE:
            # Every type this kind of endpoint takes, as they are today: written out (export shows them).
            if endpoint_type is None:
                found.problem(
                    "eventTypes", f"{item!r} means every event type the endpoint's type takes: give a valid type"
                )
            else:
                event_types += [t for t in EventType if t in endpoint_type.accepts and t not in event_types]
                found.values[_EVERY] = True
            continue
        parsed = EventType.parse(item) if isinstance(item, str) else None
        if parsed is None:
            hint = _suggest(item, [t.value for t in EventType]) if isinstance(item, str) else ""
            found.problem("eventTypes", f"unknown event type {item!r}{hint}; expected one of {KNOWN_EVENT_TYPES}")
        elif parsed not in event_types:
            event_types.append(parsed)
    if endpoint_type is not None:
        for event_type in event_types:
            if event_type not in endpoint_type.accepts:
                why = _WHY_NOT[event_type]
                found.problem("eventTypes", f"{endpoint_type} endpoints cannot take {event_type}: {why}")
    return event_types


# Why an endpoint kind cannot take a type (`EndpointType.accepts`): what the service it comes from does.
_WHY_NOT = {
    EventType.DEVICE_MESSAGES: "the first service's raw telemetry is forwarded to EventHub (and Storage) "
    "endpoints only (today's microsoft.iot.telemetry may also go to ServiceBus and EventGrid)",
    **dict.fromkeys(
        IOT_HUB_SOURCE_TYPES,
        "IoT Hub's sources are forwarded unprocessed, to EventHub, ServiceBus and Storage endpoints, as IoT Hub "
        "routes them; IoT Hub routes none to Event Grid, which has no application properties to carry theirs",
    ),
}


def _setting(label: str) -> Rule:
    def rule(value: str, found: _Rules) -> str | None:
        if message := _setting_problem(value):
            found.problem(label, message)
            return None
        return value

    return rule


def _path(value: str, found: _Rules) -> str | None:
    if not value.strip():
        found.problem("path", _PATH_PROBLEM)
        return None
    if found.values.get("type") is EndpointType.STORAGE and not _CONTAINER_NAME.match(value):
        found.problem(
            "path",
            f"{value!r} is not a Blob container name: 3-63 lower-case letters, digits and single hyphens, "
            "starting and ending with a letter or digit",
        )
        return None
    return value


def _format(value: str, found: _Rules) -> EnvelopeFormat | None:
    parsed = EnvelopeFormat.parse(value)
    if parsed is None:
        found.problem("format", f"unknown format {value!r}; expected EventGridSchema or CloudEventSchemaV1_0")
    return parsed


_LANGUAGE_CHOICES = "'digitaltwins' (a Digital Twins route filter, the default) or 'iothub' (an IoT Hub routing query)"
# The events an IoT Hub routing query can describe: those that came from IoT Hub as its messages.
IOT_HUB_EVENT_TYPES = frozenset(EventType) - DIGITAL_TWINS_EVENT_TYPES


def _filter_language(value: str, found: _Rules) -> FilterLanguage | None:
    parsed = FilterLanguage.parse(value)
    if parsed is None:
        hint = _suggest(value.lower(), [language.value for language in FilterLanguage])
        found.problem("filterLanguage", f"unknown filter language {value!r}{hint}; expected {_LANGUAGE_CHOICES}")
    return parsed


def _filter(value: str, found: _Rules) -> Filter | None:
    language = found.values.get("filterLanguage", FilterLanguage.DIGITAL_TWINS)
    if language is None:
        return None  # an unknown language: reported; which grammar to check the filter with is unknown
    if language is FilterLanguage.IOT_HUB:
        others = [t.value for t in found.values.get("eventTypes") or () if t not in IOT_HUB_EVENT_TYPES]
        if others:
            found.problem(
                "filterLanguage",
                f"an IoT Hub routing query describes IoT Hub's messages, and {', '.join(others)} "
                f"{'is' if len(others) == 1 else 'are'} Digital Twins events: give them an endpoint with a "
                "Digital Twins filter (filterLanguage 'digitaltwins')",
            )
    compile_ = compile_iot_hub_query if language is FilterLanguage.IOT_HUB else compile_filter
    try:
        return compile_(value)
    except FilterSyntaxError as exc:
        found.problem("filter", f"{exc} in {value!r}")
    return None


def _order_key(value: str, found: _Rules) -> ValueTemplate | None:
    if found.values.get("type") is EndpointType.STORAGE:
        found.problem("orderKey", "has no use on a Storage endpoint: it writes each ingress partition in arrival order")
        return None
    try:
        return compile_value(value, allow_fixed=False)
    except FilterSyntaxError as exc:
        found.problem("orderKey", f"{exc} in {value!r}")
    except ValueError as exc:
        found.problem("orderKey", f"{value!r} {exc}")
    return None


def _enrichments(value: dict[Any, Any], found: _Rules) -> tuple[tuple[str, ValueTemplate], ...]:
    if len(value) > MAX_ENRICHMENTS:
        found.problem("enrichments", f"has {len(value)} properties; at most {MAX_ENRICHMENTS} are allowed")
    endpoint_type = found.values.get("type")
    cloud_events = found.values.get("format", EnvelopeFormat.EVENT_GRID) is EnvelopeFormat.CLOUD_EVENTS
    if value and endpoint_type is EndpointType.EVENT_GRID and not cloud_events:
        found.problem(
            "enrichments",
            "the Event Grid schema has no place for added properties: set format CloudEventSchemaV1_0 "
            "(enrichments become CloudEvents extension attributes)",
        )
    enrichments: list[tuple[str, ValueTemplate]] = []
    for key, item in value.items():
        label = f"enrichments.{key}"
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_NAME_LENGTH:
            found.problem(label, f"a property name must be a non-empty string of at most {MAX_NAME_LENGTH} characters")
            continue
        if key.lower() in _ROUTER_PROPERTIES:
            found.problem(label, f"'{key}' is set by the router on every Digital Twins event; choose another name")
        if (
            endpoint_type is EndpointType.EVENT_GRID
            and cloud_events
            and (not _EXTENSION_NAME.match(key) or key in _CLOUD_EVENT_ATTRIBUTES)
        ):
            found.problem(
                label,
                "becomes a CloudEvents extension attribute, so it must be 1-20 lower-case letters or digits "
                "and not a CloudEvents attribute (id, source, type, subject, time, ...)",
            )
        try:
            enrichments.append((key, compile_value(item)))
        except FilterSyntaxError as exc:
            found.problem(label, f"{exc} in {item!r}")
        except ValueError as exc:
            found.problem(label, str(exc))
    return tuple(enrichments)


def _partitioning(value: str, found: _Rules) -> str | None:
    endpoint_type = found.values.get("type")
    if value.strip().lower() not in PARTITIONING:
        found.problem("partitioning", f"must be 'router' or 'service', got {value!r}")
    elif endpoint_type is not None and endpoint_type is not EndpointType.EVENT_HUB:
        found.problem("partitioning", "applies to EventHub endpoints only")
    else:
        return value.strip().lower()
    return None


def _time_to_live(value: int, found: _Rules) -> int | None:
    if isinstance(value, bool) or not 1 <= value <= MAX_TIME_TO_LIVE_MINUTES:
        found.problem("timeToLiveMinutes", _TTL_PROBLEM + f", got {value!r}")
        return None
    return value


def _fallback(value: bool, found: _Rules) -> bool:
    if value and found.values.get("filter") is not None:
        found.problem("fallback", "a fallback endpoint takes what no other endpoint took: it cannot have a filter")
    return value


def _file_name_format(value: str, found: _Rules) -> str | None:
    """IoT Hub's rule (every token, in any order) and what makes a blob name: no empty folder, no
    backslash or control character, no name ending in `/` or `.`, room for the values."""
    endpoint_type = found.values.get("type")
    if endpoint_type is not None and endpoint_type is not EndpointType.STORAGE:
        found.problem("fileNameFormat", "applies to Storage endpoints only")
        return None
    problems = []
    missing = [token for token in FILE_NAME_TOKENS if token not in value]
    if missing:
        every = " ".join(FILE_NAME_TOKENS)
        problems.append(f"must hold every one of {every}, in any order (missing {' '.join(missing)})")
    unknown = [token for token in _TOKEN.findall(value) if token not in FILE_NAME_TOKENS]
    if unknown:
        # Tokens differ by case alone ({MM} the month, {mm} the minute): a case slip is the likely one.
        same = [token for token in FILE_NAME_TOKENS if token.lower() == unknown[0].lower()]
        hint = f" (did you mean '{same[0]}'?)" if len(same) == 1 else _suggest(unknown[0], FILE_NAME_TOKENS)
        problems.append(f"has unknown token {unknown[0]}{hint}; the tokens are {' '.join(FILE_NAME_TOKENS)}")
    if len(value) > MAX_FILE_NAME_FORMAT_LENGTH:
        problems.append(f"must be at most {MAX_FILE_NAME_FORMAT_LENGTH} characters")
    if value.startswith("/") or "//" in value or value.endswith(("/", ".")):
        problems.append("must not start or end with '/', end with '.', or hold an empty folder ('//')")
    if "\\" in value or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        problems.append("must not hold a backslash or control characters")
    for problem in problems:
        found.problem("fileNameFormat", f"{problem}: {value!r}")
    return None if problems else value


# The rules, in the order their problems are reported; a field without one needs only its type.
_RULES: dict[str, Rule] = {
    "name": _name,
    "type": _endpoint_type,
    "eventTypes": _event_types,
    "connection": _setting("connection"),
    "secondaryConnection": _setting("secondaryConnection"),
    "path": _path,
    "format": _format,
    "filterLanguage": _filter_language,
    "filter": _filter,
    "orderKey": _order_key,
    "enrichments": _enrichments,
    "partitioning": _partitioning,
    "timeToLiveMinutes": _time_to_live,
    "fallback": _fallback,
    "fileNameFormat": _file_name_format,
}


def _typed(value: Any, expected: Any) -> Any:
    """`value` as `expected`, or `msgspec.ValidationError`. A list must be one: msgspec would take a
    tuple or a set for it, which no routes file, row or command line gives, and the validator never took."""
    if get_origin(expected) is list and not isinstance(value, list):
        raise msgspec.ValidationError(f"Expected `array`, got `{type(value).__name__}`")
    return msgspec.convert(value, expected)


def parse_endpoint(raw: Any, where: str) -> Endpoint | list[Problem]:
    """One endpoint from its routes-file form, or every problem with it."""
    if not isinstance(raw, Mapping):
        return [Problem(where, f"must be a JSON object, got {type(raw).__name__}")]
    name = raw.get("name")
    if isinstance(name, str) and name:
        where = f"endpoint '{name}'"
    found = _Rules()
    for key in raw:
        if key not in _CHECKED_AS:
            found.problem(str(key), f"unknown field{_suggest(str(key), FIELDS)}")
    for key in REQUIRED:
        if raw.get(key) is None:
            found.problem(key, "is required")
    # An absent field and a null one are the same: the default.
    for key in FIELDS:
        value = raw.get(key)
        if value is None:
            continue
        try:
            value = _typed(value, _CHECKED_AS[key])
        except msgspec.ValidationError:
            found.problem(key, _WRONG_TYPE[key](value))
            continue
        rule = _RULES.get(key)
        found.values[key] = value if rule is None else rule(value, found)

    endpoint_type = found.values.get("type")
    if (
        endpoint_type is EndpointType.EVENT_GRID
        and EventType.TWIN_TELEMETRY in (found.values.get("eventTypes") or ())
        and found.values.get("format", EnvelopeFormat.EVENT_GRID) is EnvelopeFormat.EVENT_GRID
    ):
        if found.values.get(_EVERY):
            # "Every type" in the Event Grid schema: every type that schema can carry.
            found.values["eventTypes"] = [t for t in found.values["eventTypes"] if t is not EventType.TWIN_TELEMETRY]
        else:
            found.problem(
                "format",
                "an EventGrid endpoint takes microsoft.iot.telemetry as a CloudEvent (the Event Grid schema cannot "
                "carry its bytes): set format CloudEventSchemaV1_0",
            )
    if found.problems or endpoint_type is None:
        return [Problem(f"{where}, field '{label}'", message) for label, message in found.problems]
    values = found.values
    return Endpoint(
        name=values["name"],
        type=endpoint_type,
        event_types=tuple(values["eventTypes"]),
        connection=values["connection"],
        secondary_connection=values.get("secondaryConnection"),
        path=values["path"],
        format=values.get("format", EnvelopeFormat.EVENT_GRID),
        enabled=values.get("enabled", True),
        filter_language=values.get("filterLanguage") or FilterLanguage.DIGITAL_TWINS,
        filter=values.get("filter"),
        order_key=values.get("orderKey"),
        enrichments=values.get("enrichments", ()),
        partitioning=values.get("partitioning", PARTITIONING[0]),
        time_to_live_minutes=values.get("timeToLiveMinutes", DEFAULT_TIME_TO_LIVE_MINUTES),
        fallback=values.get("fallback", False),
        file_name_format=values.get("fileNameFormat") or DEFAULT_FILE_NAME_FORMAT,
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
    problems.extend(problem for _position, problem in fallback_problems(endpoints))
    if problems:
        raise RouteTableError(problems, source)
    return RouteTable(tuple(endpoints))


def fallback_problems(endpoints: Sequence[Endpoint]) -> list[tuple[int, Problem]]:
    """(position, problem) of every fallback endpoint after the first: a table has at most one."""
    fallbacks = [(i, e) for i, e in enumerate(endpoints) if e.fallback]
    return [
        (
            i,
            Problem(
                f"endpoint '{e.name}', field 'fallback'",
                f"'{fallbacks[0][1].name}' is the fallback already: a table has at most one",
            ),
        )
        for i, e in fallbacks[1:]
    ]
