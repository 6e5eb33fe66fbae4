"""Ingress: turning what arrives (a Functions Event Hub batch, or a line of a local events file)
into `IngressMessage`s, and back into the documented line form for dead letters.

The line form is a stable format other tools read:
`{"body": <JSON>} | {"bodyText": "<UTF-8>"} | {"bodyBase64": "..."}`, plus optional `properties`,
`systemProperties`, `partition`, `sequenceNumber`, `offset`, `enqueuedTime`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from routing.errors import IngressFormatError
from routing.model import IngressMessage

# How deep orjson writes nested arrays and objects (it reads 1,024).
WRITTEN_DEPTH = 254
LINE_FIELDS = frozenset(
    {
        "body",
        "bodyText",
        "bodyBase64",
        "properties",
        "systemProperties",
        "partition",
        "sequenceNumber",
        "offset",
        "enqueuedTime",
    }
)


def parse_line(raw: bytes | str, *, source: str, line_number: int) -> IngressMessage:
    """One events-file line. Without a sequence number, the line number stands in, so ids stay stable."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise IngressFormatError(f"line {line_number} is not JSON: {exc}") from None
    return from_line_object(obj, source=source, line_number=line_number)


def from_line_object(obj: Any, *, source: str, line_number: int) -> IngressMessage:
    if not isinstance(obj, dict):
        raise IngressFormatError(f"line {line_number} must be a JSON object, got {type(obj).__name__}")
    if not obj.keys() <= LINE_FIELDS:
        unknown = sorted(set(obj) - LINE_FIELDS)
        raise IngressFormatError(
            f"line {line_number} has unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(LINE_FIELDS))}"
        )
    # Run for every line: a valid one costs the fewest look-ups, and a reason is made only for a line
    # that has one (issue #15).
    given = ("body" in obj) + ("bodyText" in obj) + ("bodyBase64" in obj)
    if given != 1:
        raise IngressFormatError(
            f"line {line_number} must have exactly one of body, bodyText, bodyBase64 (has {given})"
        )
    text = obj.get("bodyText")
    if text is not None or "bodyText" in obj:
        if not isinstance(text, str):
            raise IngressFormatError(f"line {line_number}: bodyText must be a string")
        body = text.encode("utf-8")
    elif "body" in obj:
        try:
            body = orjson.dumps(obj["body"])
        except orjson.JSONEncodeError:
            raise IngressFormatError(
                f"line {line_number}: body nests JSON deeper than the router can write ({WRITTEN_DEPTH} levels); "
                "give it as bodyText or bodyBase64"
            ) from None
    else:
        try:
            body = base64.b64decode(obj["bodyBase64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise IngressFormatError(f"line {line_number}: bodyBase64 is not valid base64") from None
    properties = obj.get("properties")
    if properties is not None or "properties" in obj:
        _check_properties("properties", properties, line_number)
    system_properties = obj.get("systemProperties")
    if system_properties is not None or "systemProperties" in obj:
        _check_properties("systemProperties", system_properties, line_number)
    sequence = obj.get("sequenceNumber")
    if sequence is not None and (not isinstance(sequence, int) or isinstance(sequence, bool)):
        raise IngressFormatError(f"line {line_number}: sequenceNumber must be an integer")
    partition = obj.get("partition")
    enqueued = obj.get("enqueuedTime")
    offset = obj.get("offset")
    return IngressMessage(
        body=body,
        properties=properties or {},
        system_properties=system_properties or {},
        source=source,
        partition=str(partition) if partition is not None else "0",
        sequence_number=sequence if sequence is not None else line_number,
        offset=str(offset) if offset is not None else None,
        enqueued_time=_line_time(enqueued, line_number) if enqueued is not None else None,
        body_json="body" in obj,  # written by `orjson.dumps` above
    )


def _check_properties(name: str, value: Any, line_number: int) -> None:
    if not isinstance(value, dict):
        raise IngressFormatError(f"line {line_number}: {name} must be a JSON object")
    if not value:
        return
    try:
        # Properties travel two levels down in what is written of the message (a dead letter's
        # `original.properties`, an output line's `properties`): they must be writable there. Their
        # writing is the check: a line's properties are a few short values, and writing them cost
        # half of counting the line's brackets to know they cannot nest that deep (issue #15).
        orjson.dumps([[value]])
    except orjson.JSONEncodeError:
        raise IngressFormatError(
            f"line {line_number}: {name} nest JSON deeper than the router can write ({WRITTEN_DEPTH - 2} levels)"
        ) from None


def _line_time(value: Any, line_number: int) -> str:
    """An events file's `enqueuedTime`: kept as written when it has an offset; without one it is UTC."""
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise IngressFormatError(
            f"line {line_number}: enqueuedTime {value!r} is not an ISO 8601 time (e.g. 2026-11-26T09:00:00Z)"
        )
    return value if moment.tzinfo is not None else _iso(moment)


def to_line(msg: IngressMessage) -> dict[str, Any]:
    """The line form of a message: exact text when the body is UTF-8, base64 otherwise."""
    line: dict[str, Any] = {}
    try:
        line["bodyText"] = msg.body.decode("utf-8")
    except UnicodeDecodeError:
        line["bodyBase64"] = base64.b64encode(msg.body).decode("ascii")
    line["properties"] = dict(msg.properties)
    if msg.system_properties:
        line["systemProperties"] = dict(msg.system_properties)
    line["partition"] = msg.partition
    line["sequenceNumber"] = msg.sequence_number
    if msg.offset is not None:
        line["offset"] = msg.offset
    if msg.enqueued_time is not None:
        line["enqueuedTime"] = msg.enqueued_time
    return line


class EventHubEventLike(Protocol):
    """What the Functions worker hands over per event (`azure.functions.EventHubEvent`)."""

    def get_body(self) -> bytes: ...

    @property
    def sequence_number(self) -> int | None: ...

    @property
    def offset(self) -> Any: ...

    @property
    def enqueued_time(self) -> datetime | None: ...

    @property
    def metadata(self) -> Mapping[str, Any] | None: ...


def from_eventhub_events(events: Sequence[EventHubEventLike], *, source: str) -> list[IngressMessage]:
    """A Functions batch (cardinality many) as ingress messages.

    Application properties are only in the batch metadata (`PropertiesArray`), and `metadata` converts
    the whole batch on each call, so it is read once from the first event.
    """
    if not events:
        return []
    metadata = events[0].metadata or {}
    properties_array = metadata.get("PropertiesArray") or []
    system_array = metadata.get("SystemPropertiesArray") or []
    partition_context = metadata.get("PartitionContext") or {}
    partition = partition_context.get("PartitionId") if isinstance(partition_context, Mapping) else None
    messages = []
    for i, event in enumerate(events):
        properties = properties_array[i] if i < len(properties_array) and properties_array[i] else {}
        system = system_array[i] if i < len(system_array) and system_array[i] else {}
        enqueued = event.enqueued_time
        messages.append(
            IngressMessage(
                body=event.get_body() or b"",
                properties=properties,
                system_properties=system,
                source=source,
                partition=str(partition) if partition is not None else None,
                sequence_number=event.sequence_number,
                offset=str(event.offset) if event.offset is not None else None,
                enqueued_time=_iso(enqueued) if enqueued is not None else None,
            )
        )
    return messages


def _iso(moment: datetime) -> str:
    """RFC 3339 in UTC. The host sends `EnqueuedTimeUtc` without a zone (`2026-11-26T09:00:00.15`, a .NET
    DateTime of no kind) and the library parses it to a naive datetime: it is UTC, as its name says."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")
