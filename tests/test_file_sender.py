"""The local runner's output lines stay what they were: `FileSender` writes each record as one pass of
`output_line`, which makes a shared body's JSON once and splices it in, and defers the writing to the
runner's thread. Each line must be, byte for byte, what the plain way wrote: `orjson.dumps` of the
record `output_record` made before (copied here as it was, so a change to either shows)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec
import orjson
import pytest

from bench.memory import write_events
from bench.routes import write_routes
from routing.deadletters import FileDeadLetters
from routing.deliver.senders import FileSender, KeyGroup, Sender, SendReport, output_line, output_record
from routing.ingest.ingress import parse_line
from routing.model import RAW_TYPES, EndpointType, Outgoing
from routing.pipeline import Router, StaticRoutes
from routing.routes.files import load_routes_file
from routing.routes.table import Endpoint, RouteTable

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def record_as_it_was(endpoint: Endpoint, message: Outgoing) -> dict[str, Any]:
    """`output_record` before the runner's lines were spliced (tree 7ea3c76)."""
    record: dict[str, Any] = {
        "endpoint": endpoint.name,
        "endpointType": endpoint.type.value,
        "eventType": message.event_type.value,
    }
    if endpoint.type is EndpointType.EVENT_HUB:
        record["partitionKey"] = message.order_key
    elif endpoint.type is EndpointType.SERVICE_BUS:
        record["sessionId"] = message.order_key
    record["messageId"] = message.message_id
    record["contentType"] = message.content_type
    record["properties"] = dict(message.properties)
    record["bodyBase64"] = base64.b64encode(message.body).decode("ascii")
    with contextlib.suppress(orjson.JSONDecodeError):
        record["body"] = orjson.loads(message.body)
    return record


def line_as_it_was(endpoint: Endpoint, message: Outgoing) -> bytes:
    return orjson.dumps(record_as_it_was(endpoint, message)) + b"\n"


class Capture:
    def __init__(self) -> None:
        self.sent: list[tuple[Endpoint, tuple[Outgoing, ...]]] = []

    def send(self, endpoint: Endpoint, groups: Any) -> SendReport:
        messages = tuple(m for g in groups for m in g.messages)
        self.sent.append((endpoint, messages))
        return SendReport(delivered=messages)

    def close(self) -> None:
        pass


def routed(events: Path, table: RouteTable, tmp_path: Path) -> list[tuple[Endpoint, tuple[Outgoing, ...]]]:
    capture = Capture()
    router = Router(routes=StaticRoutes(table), senders=lambda _e: capture, dead_letters=FileDeadLetters(tmp_path))
    lines = [line for line in events.read_bytes().splitlines() if line.strip()]
    messages = []
    for number, line in enumerate(lines, start=1):
        with contextlib.suppress(Exception):  # the samples' bad lines: dead letters, not messages
            messages.append(parse_line(line, source="local", line_number=number))
    for start in range(0, len(messages), 100):
        router.route(messages[start : start + 100])
    return capture.sent


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Endpoint, tuple[Outgoing, ...]]]:
    folder = tmp_path_factory.mktemp("lines")
    events = folder / "events.jsonl"
    write_events(events, events=1_000, devices=100)
    table = load_routes_file(write_routes(folder / "routes.json", 5))
    bench = routed(events, table, folder)
    # The same events, their bodies' JSON not in orjson's compact form: what a raw event's record holds
    # is read again (its bytes are the device's), an envelope's is the router's own.
    spaced = folder / "spaced.jsonl"
    lines = [orjson.loads(line) for line in events.read_bytes().splitlines()]
    for line in lines:
        line["bodyText"] = json.dumps(json.loads(line["bodyText"]), indent=1)
    spaced.write_bytes(b"\n".join(orjson.dumps(line) for line in lines))
    samples = routed(SAMPLES / "events.jsonl", load_routes_file(SAMPLES / "routes.json"), folder)
    return bench + routed(spaced, table, folder) + samples


def test_every_line_is_byte_for_byte_the_plain_record(sent: list[tuple[Endpoint, tuple[Outgoing, ...]]]) -> None:
    forms: dict[int, Any] = {}  # shared over every send, as a flush shares it over a batch
    checked = 0
    for endpoint, messages in sent:
        for message in messages:
            assert output_line(endpoint, message, forms) == line_as_it_was(endpoint, message)
            assert output_line(endpoint, message) == line_as_it_was(endpoint, message)
            assert output_record(endpoint, message) == record_as_it_was(endpoint, message)
            checked += 1
    # Every endpoint kind, and bodies shared by several endpoints (what the forms are made once for).
    assert {e.type for e, _m in sent} >= {EndpointType.EVENT_HUB, EndpointType.SERVICE_BUS, EndpointType.EVENT_GRID}
    bodies = [id(m.body) for _e, messages in sent for m in messages]
    assert len(set(bodies)) < len(bodies)
    # Every envelope is the router's own JSON, so each of its lines took it as written (`body_json`).
    assert all(m.body_json for _e, messages in sent for m in messages if m.event_type not in RAW_TYPES)
    assert checked > 2_000


def one_of_each_kind(
    sent: list[tuple[Endpoint, tuple[Outgoing, ...]]],
) -> dict[EndpointType, tuple[Endpoint, Outgoing]]:
    """Per endpoint type, its first endpoint and the first message sent to it."""
    kinds: dict[EndpointType, tuple[Endpoint, Outgoing]] = {}
    for endpoint, messages in sent:
        kinds.setdefault(endpoint.type, (endpoint, messages[0]))
    return kinds


ODD_BODIES = [
    b'{"t": 21.5,  "odd spacing": true}',  # JSON, not in orjson's compact form: written as orjson writes it
    b'{"t": 21.5,  "odd spacing": true}\xff\x00',  # not JSON (nor UTF-8): no `body` field
    b"",
    b"  [1, 2.50, -0.0, 1e400, 12345678901234567890]  ",
    '{"unicode": "Grüße ✓ \\u00e9 \\ud83d\\ude00", "esc": "a\\/b\\n\\t\\u0001"}'.encode(),
    b"null",
    b'"a string"',
    b"[" * 249 + b"]" * 249,  # deep: the plain way
    b"[" * 260 + b"]" * 260,  # deeper than orjson writes: the plain way, its error too
]


@pytest.mark.parametrize("body", ODD_BODIES, ids=range(len(ODD_BODIES)))
def test_odd_bodies_are_written_as_the_plain_record_was(
    body: bytes, sent: list[tuple[Endpoint, tuple[Outgoing, ...]]]
) -> None:
    kinds = one_of_each_kind(sent)
    for endpoint, message in kinds.values():
        odd = msgspec.structs.replace(message, body=body, content_type=None, body_json=False)
        try:
            expected = line_as_it_was(endpoint, odd)
        except orjson.JSONEncodeError:
            with pytest.raises(orjson.JSONEncodeError):
                output_line(endpoint, odd, {})
            continue
        assert output_line(endpoint, odd, {}) == expected


# As deep as a record's properties can nest: 252 levels in the record's object and its properties'.
DEEP_PROPERTY = orjson.loads(b"[" * 252 + b"]" * 252)

ODD_FIELDS: list[dict[str, Any]] = [
    {"order_key": 'a "quoted" \\ key\n\t\u0001 ✓ Grüße', "message_id": 'id "with" \\ quotes'},
    {"content_type": None},
    {"content_type": 'application/json; x="\\y"'},
    {"properties": {'p"q': "\u0001\n", "ü": [1, {"a": None}], "n": 1.5, "b": True, "big": 2**63}},
    {"properties": {}},
    {"properties": MappingProxyType({"not": "a dict"})},
    {"properties": {"deep": DEEP_PROPERTY}},  # as deep as the record holds
    {"properties": {"deeper": [DEEP_PROPERTY]}},  # one deeper than orjson writes: its error, as before
    {"properties": {1: "a key that is not a string"}},  # orjson's error, as the plain way raised it
]


@pytest.mark.parametrize("fields", ODD_FIELDS, ids=range(len(ODD_FIELDS)))
def test_odd_fields_are_written_as_the_plain_record_was(
    fields: dict[str, Any], sent: list[tuple[Endpoint, tuple[Outgoing, ...]]]
) -> None:
    """What the router does not write itself (keys, ids, content types, properties: enrichments and
    parked records carry any) is escaped, nested and refused as the plain record's writing did."""
    kinds = one_of_each_kind(sent)
    endpoint, message = kinds[EndpointType.EVENT_HUB]
    cases = [*kinds.values(), (dataclasses.replace(endpoint, name='hub "odd" \\ ✓'), message)]
    for endpoint, message in cases:
        odd = msgspec.structs.replace(message, **fields)
        try:
            expected = line_as_it_was(endpoint, odd)
        except TypeError as exc:  # orjson.JSONEncodeError is one
            with pytest.raises(type(exc)):
                output_line(endpoint, odd, {})
            continue
        assert output_line(endpoint, odd, {}) == expected


def test_a_lines_json_body_goes_into_its_records_as_the_runner_wrote_it(tmp_path: Path) -> None:
    """A line's `body` is JSON the runner wrote with orjson: its raw events' messages say so (and their
    records take it as it is); `bodyText` and `bodyBase64` are the producer's bytes, read back."""
    system = {"iothub-connection-device-id": "d", "iothub-message-source": "Telemetry"}
    forms: list[dict[str, Any]] = [
        {"body": {"t": 1}},
        {"bodyText": '{"t":1}'},
        {"bodyBase64": base64.b64encode(b'{"t":1}').decode()},
    ]
    lines = [orjson.dumps({**form, "systemProperties": system}) for form in forms]
    messages = [parse_line(line, source="local", line_number=n) for n, line in enumerate(lines, 1)]
    assert [m.body for m in messages] == [b'{"t":1}'] * 3
    assert [m.body_json for m in messages] == [True, False, False]
    capture = Capture()
    table = load_routes_file(SAMPLES / "routes.json")
    Router(routes=StaticRoutes(table), senders=lambda _e: capture, dead_letters=FileDeadLetters(tmp_path)).route(
        messages
    )
    sent = [m for _e, batch in capture.sent for m in batch]
    assert sent and {m.event.ingress.body_json for m in sent} == {True, False}
    assert all(m.body_json is m.event.ingress.body_json for m in sent)


def test_deferred_file_sender_writes_the_same_files_once_flushed(
    tmp_path: Path, sent: list[tuple[Endpoint, tuple[Outgoing, ...]]]
) -> None:
    now, later = FileSender(tmp_path / "now"), FileSender(tmp_path / "later", deferred=True)
    for endpoint, messages in sent:
        groups = [KeyGroup(m.order_key, (m,)) for m in messages]
        assert now.send(endpoint, groups).delivered == later.send(endpoint, groups).delivered == messages
    assert not (tmp_path / "later").exists()  # nothing written before the flush
    later.flush()
    now.close()
    later.close()
    written = sorted(p.name for p in (tmp_path / "now").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "later").iterdir())
    for name in written:
        expected = b"".join(line_as_it_was(e, m) for e, messages in sent if f"{e.name}.jsonl" == name for m in messages)
        assert (tmp_path / "now" / name).read_bytes() == expected
        assert (tmp_path / "later" / name).read_bytes() == expected


def _same(sender: Sender, _endpoint: Endpoint) -> Sender:
    return sender


def test_the_routers_sends_to_deferred_files_are_made_on_its_thread_with_the_same_lines(tmp_path: Path) -> None:
    """A deferred file sender's send only takes the messages (`sends_at_once`): the pipeline makes it on the
    routing thread instead of handing each endpoint's send to a thread, and the files are the same."""
    from datetime import UTC, datetime  # noqa: PLC0415 - this test's alone

    from routing.cli.runner import _Flaky  # noqa: PLC0415 - the runner's sender, as `routing run` makes it

    folder = tmp_path / "in"
    folder.mkdir()
    events = folder / "events.jsonl"
    write_events(events, events=300, devices=20)
    table = load_routes_file(write_routes(folder / "routes.json", 5))
    messages = [
        parse_line(line, source="local", line_number=n) for n, line in enumerate(events.read_bytes().splitlines(), 1)
    ]
    written = {}
    for name, deferred in (("now", False), ("later", True)):
        files = FileSender(tmp_path / name, deferred=deferred)
        sender = _Flaky(files, [], lambda: datetime.now(UTC))
        assert sender.sends_at_once is deferred
        router = Router(
            routes=StaticRoutes(table), senders=partial(_same, sender), dead_letters=FileDeadLetters(tmp_path)
        )
        for start in range(0, len(messages), 100):
            report = router.route(messages[start : start + 100])
            assert len({e for e, _t in report.delivered}) == 5  # five endpoints a batch
            files.flush()
        # Deferred: no send was handed to a thread (the pool is made on the first hand-off).
        assert (router._pool is None) is deferred
        files.close()
        written[name] = {p.name: p.read_bytes() for p in (tmp_path / name).iterdir()}
    assert written["now"] == written["later"]
    assert len(written["now"]) == 5
