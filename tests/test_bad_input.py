"""Bad input is bounded in cost: a JSON array of junk is one dead letter (its count and positions), not
one letter per element each carrying the whole body; the valid elements of the same array are routed;
an event nested deeper than the router can serialise is dead-lettered with that reason, alone; a value
quoted in a reason is cut short. Pinned at classification, through the pipeline, through the function
entry (host-shaped input, file mode), and through replay of the letter.

Costs (time, bytes) are measured outside the tests; here the letters are counted.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from routing import app as wiring
from routing.deadletters import Delivered, FileDeadLetters, blob_name, blob_record
from routing.deliver import envelope
from routing.deliver.senders import FileSender
from routing.errors import IngressFormatError
from routing.ingest.classify import MAX_DEPTH, SHOWN_CHARACTERS, classify
from routing.ingest.ingress import parse_line
from routing.model import POSITIONS_LISTED, DeadLetter, EnvelopeFormat, Event, IngressMessage, Rejection
from routing.pipeline import Router, StaticRoutes
from routing.replay import Letter, replay
from routing.routes.table import parse_routes
from tests.conftest import WorkerEvent, sensor_data, telemetry, twin_event, worker_batch
from tests.fakes import FakeSenders, FakeWire, MemoryDeadLetters

ROUTES = [
    {"name": "bus", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "BUS", "path": "q"},
    {"name": "raw", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "RAW", "path": "raw",
     "enrichments": {"reading": "$body.reading"}},
]  # fmt: skip
TABLE = parse_routes(ROUTES)


def sensor(sensor_id: str) -> dict[str, Any]:
    return {"eventType": "SensorChange", "subject": "SensorChange", "data": sensor_data(sensor_id)}


def as_json(value: Any) -> bytes:
    """The stdlib writes deeper JSON than orjson: what a producer might send."""
    return json.dumps(value).encode()


def nested(levels: int) -> Any:
    """`levels` arrays, one inside the other."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def junk_array(size: int, *, valid_every: int = 0) -> list[Any]:
    """`size` elements: zeros, an object without an event type at every 7th, a sensor event every `valid_every`."""
    out: list[Any] = []
    for i in range(size):
        if valid_every and i % valid_every == 0:
            out.append(sensor(f"s-{i}"))
        else:
            out.append({"no": "type"} if i % 7 == 3 else 0)
    return out


# --- classification ---------------------------------------------------------------------------------


def test_ten_thousand_junk_elements_are_one_rejection_with_count_and_positions() -> None:
    results = classify(twin_event(junk_array(10_000), seq=1))

    [rejection] = results
    assert isinstance(rejection, Rejection)
    assert (rejection.index, rejection.count) == (0, 10_000)
    assert rejection.positions == tuple(range(POSITIONS_LISTED))
    assert rejection.code == "not-an-event"  # the first one's; the reason counts each kind
    assert "10000 of the 10000 events" in rejection.reason
    assert "not-an-event x8571, no-event-type x1429" in rejection.reason
    assert "positions 0-99 (the first 100 listed; 9900 more)" in rejection.reason
    assert len(rejection.reason) < 600


def test_valid_elements_of_a_junk_array_are_events_and_the_junk_one_rejection() -> None:
    body = junk_array(10_000, valid_every=3)
    results = classify(twin_event(body, seq=1))

    events = [r for r in results if isinstance(r, Event)]
    [rejection] = [r for r in results if isinstance(r, Rejection)]
    assert [e.index for e in events] == list(range(0, 10_000, 3))
    assert [e.order_key for e in events] == [f"s-{i}" for i in range(0, 10_000, 3)]
    junk = [i for i in range(10_000) if i % 3]
    assert (rejection.index, rejection.count, rejection.positions) == (1, len(junk), tuple(junk[:POSITIONS_LISTED]))
    assert "positions 1-2, 4-5, 7-8," in rejection.reason
    # In the array's order: the rejection stands at its first element's place.
    assert [r.index for r in results[:3]] == [0, 1, 3]


def test_one_junk_element_among_events_is_rejected_as_before() -> None:
    results = classify(twin_event([sensor("a"), 7, sensor("b")], seq=1))

    assert [type(r).__name__ for r in results] == ["Event", "Rejection", "Event"]
    rejection = results[1]
    assert isinstance(rejection, Rejection)
    assert (rejection.index, rejection.count, rejection.positions) == (1, 1, ())
    assert rejection.reason == "body is JSON int, not an event object"


def test_an_event_nested_deeper_than_the_router_serialises_is_rejected_as_too_deep() -> None:
    deep = sensor("deep")
    deep["data"]["Properties"] = nested(300)
    results = classify(twin_event([sensor("a"), deep, sensor("b")], seq=1))

    assert [r.index for r in results if isinstance(r, Event)] == [0, 2]
    [rejection] = [r for r in results if isinstance(r, Rejection)]
    assert (rejection.code, rejection.index) == ("too-deep", 1)
    assert f"deeper than {MAX_DEPTH} levels" in rejection.reason

    # Alone in its message, in each wire form that parses a body.
    [alone] = classify(twin_event(deep, seq=2))
    assert isinstance(alone, Rejection) and alone.code == "too-deep"
    data = {**sensor_data("deep"), "Properties": nested(300)}
    [typed] = classify(twin_event(data, seq=3, properties={"Type": "SensorChange"}))
    assert isinstance(typed, Rejection) and typed.code == "too-deep"
    [binary] = classify(twin_event(data, seq=4, properties={"cloudEvents:type": "SensorChange"}))
    assert isinstance(binary, Rejection) and binary.code == "too-deep"
    # Deeper than the parser reads at all: the same reason, not "not JSON".
    [unparsed] = classify(twin_event(None, seq=5, raw=b"[" * 1100 + b"]" * 1100))
    assert isinstance(unparsed, Rejection) and unparsed.code == "too-deep"
    assert "deeper than 1024 levels" in unparsed.reason


def test_the_deepest_event_classify_accepts_has_envelopes_the_router_can_write() -> None:
    endpoints = [e for e in TABLE.endpoints if e.name == "bus"]

    def data(levels: int) -> dict[str, Any]:
        # The data object is one level, the value in it the rest.
        return {**sensor_data("s"), "Properties": nested(levels - 1)}

    # The body is the data (a `Type` property names the type), or the event object around it.
    for form in (
        lambda levels: twin_event(data(levels), seq=1, properties={"Type": "SensorChange"}),
        lambda levels: twin_event({"eventType": "SensorChange", "data": data(levels - 1)}, seq=1),
    ):
        [accepted] = classify(form(MAX_DEPTH))
        assert isinstance(accepted, Event)
        for endpoint in endpoints:
            for shape in EnvelopeFormat:
                assert orjson.loads(envelope.envelope_body(accepted, shape))
            assert orjson.loads(envelope.build(accepted, endpoint).body)
        [rejected] = classify(form(MAX_DEPTH + 1))
        assert isinstance(rejected, Rejection) and rejected.code == "too-deep"


def test_a_long_value_quoted_in_a_reason_is_cut_short() -> None:
    name = "X" * 1_000_000
    [rejection] = classify(twin_event([{"eventType": name, "data": {}}], seq=1))
    assert isinstance(rejection, Rejection)
    assert rejection.code == "unknown-type"
    assert f"{'X' * SHOWN_CHARACTERS}... (1000000 characters)" in rejection.reason
    assert len(rejection.reason) < 1000


# --- the pipeline -------------------------------------------------------------------------------------


def route(tmp_path: Path, messages: list[IngressMessage]) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    store = FileDeadLetters(tmp_path)
    router = Router(routes=StaticRoutes(TABLE), senders=lambda _e: FileSender(tmp_path), dead_letters=store)
    report = router.route(messages)
    store.close()
    letters = path_lines(tmp_path / "deadletter.jsonl")
    return report, letters, {name: path_lines(tmp_path / f"{name}.jsonl") for name in ("bus", "raw")}


def path_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class KeptLetters:
    """A dead-letter store that keeps the letters as given (what the file and blob writers receive)."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def write(self, letters: Sequence[DeadLetter], *, delivered: Delivered = ()) -> None:
        self.letters.extend(letters)

    def close(self) -> None:
        pass


def test_the_letter_of_a_junk_array_carries_its_count_and_positions_to_the_store(tmp_path: Path) -> None:
    store = KeptLetters()
    router = Router(routes=StaticRoutes(TABLE), senders=lambda _e: FileSender(tmp_path), dead_letters=store)
    report = router.route([twin_event(junk_array(10_000, valid_every=3), seq=1)])

    [letter] = store.letters
    junk = [i for i in range(10_000) if i % 3]
    assert (letter.index, letter.count, letter.positions) == (1, len(junk), tuple(junk[:POSITIONS_LISTED]))
    assert (report.dead_letters, report.dead_lettered) == ({"not-an-event": 1}, len(junk))
    assert len(path_lines(tmp_path / "bus.jsonl")) == len(range(0, 10_000, 3))


def test_telemetry_an_enrichment_cannot_write_is_dead_lettered_as_unserialisable(tmp_path: Path) -> None:
    deep = telemetry("dev-1", as_json({"reading": nested(300)}), seq=1)
    fine = telemetry("dev-1", as_json({"reading": 21.5}), seq=2)
    report, letters, delivered = route(tmp_path, [deep, fine])

    [letter] = letters
    assert letter["code"] == "unserialisable"
    assert "cannot be serialised as JSON for 'raw'" in letter["reason"]
    assert "deeper than the 254 levels orjson writes" in letter["reason"]
    assert letter["original"]["sequenceNumber"] == 1
    assert [line["properties"]["reading"] for line in delivered["raw"]] == [21.5]
    assert report.dead_letters == {"unserialisable": 1}


# --- the function entry -------------------------------------------------------------------------------


@pytest.fixture
def deployed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "routes.json").write_text(json.dumps(ROUTES))
    monkeypatch.setenv("ROUTES_FILE", str(tmp_path / "routes.json"))
    monkeypatch.setenv("ROUTER_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.delenv("ROUTES_STORAGE", raising=False)
    wiring.reset()
    yield tmp_path / "out"
    wiring.reset()


def test_a_junk_array_through_the_function_is_one_letter_and_its_events_are_delivered(
    functions: dict[str, Any], deployed: Path
) -> None:
    deep = sensor("deep")
    deep["data"]["Properties"] = nested(300)
    batch = [
        WorkerEvent(body=as_json(sensor("first")), sequence_number=10),
        WorkerEvent(body=as_json(junk_array(10_000)), sequence_number=11),
        WorkerEvent(body=as_json(junk_array(10_000, valid_every=1000)), sequence_number=12),
        WorkerEvent(body=as_json(deep), sequence_number=13),
        WorkerEvent(body=as_json(sensor("last")), sequence_number=14),
    ]
    functions["route_twins"].get_user_function()(worker_batch(batch))  # must not raise

    letters = path_lines(deployed / "deadletter.jsonl")
    assert [(x["original"]["sequenceNumber"], x["index"], x["code"]) for x in letters] == [
        (11, 0, "not-an-event"),
        (12, 1, "not-an-event"),
        (13, 0, "too-deep"),
    ]
    assert "10000 of the 10000 events" in letters[0]["reason"]
    assert "9990 of the 10000 events" in letters[1]["reason"]
    # Each letter holds the original once: the letters together are about the size of the input.
    assert sum(len(json.dumps(x)) for x in letters) < 3 * sum(len(e.body) for e in batch)
    delivered = [line["sessionId"] for line in path_lines(deployed / "bus.jsonl")]
    assert delivered == ["first", *(f"s-{i}" for i in range(0, 10_000, 1000)), "last"]


# --- replay of the letters ------------------------------------------------------------------------------


def test_a_grouped_letter_and_a_too_deep_one_replay_as_kept_and_resend_nothing(tmp_path: Path) -> None:
    deep = sensor("deep")
    deep["data"]["Properties"] = nested(300)
    mixed = twin_event(junk_array(10_000, valid_every=1000), seq=1)
    alone = twin_event(deep, seq=2)
    letters = []
    for message in (mixed, alone):
        for result in classify(message):
            if isinstance(result, Rejection):
                letter = DeadLetter(code=result.code, reason=result.reason, ingress=message, index=result.index)
                record = blob_record(letter, datetime(2026, 11, 26, 9, tzinfo=UTC))
                letters.append(Letter(name=blob_name(letter), record=orjson.loads(orjson.dumps(record))))
    deleted: list[str] = []

    report = replay(letters, table=TABLE, senders=lambda _e: FileSender(tmp_path), delete=deleted.append)

    assert (report.delivered, report.failed, deleted) == ([], {}, [])
    kept = list(report.kept.values())
    assert len(kept) == 2
    assert kept[0].startswith("still cannot be classified: 9990 of the 10000 events")
    assert kept[1].startswith("still cannot be classified:") and "deeper than 253 levels" in kept[1]
    assert not (tmp_path / "bus.jsonl").exists(), "replay re-sent the valid events the array delivered"


def test_an_endpoint_refusing_every_event_of_an_array_costs_letters_of_about_the_array_s_size(tmp_path: Path) -> None:
    size = 1_000
    array = twin_event([sensor(f"s-{i}") for i in range(size)], seq=7)
    events = [result for result in classify(array) if isinstance(result, Event)]
    built = [envelope.build(event, TABLE.endpoints[0]) for event in events]
    wire = FakeWire(mixed=True, batch_size=size, faults={f"bus/{m.message_id}": ["permanent"] * 2 for m in built})
    store = MemoryDeadLetters()
    router = Router(routes=StaticRoutes(TABLE), senders=FakeSenders(wire), dead_letters=store)

    report = router.route([array])

    assert report.dead_letters == {"delivery-failed": size} and not wire.delivered
    records = sorted(store.blobs.values(), key=lambda r: r["index"])
    original = orjson.loads(array.body)
    for i, record in enumerate(records):
        # Each letter keeps its own event, cut from the array, and says what it was cut from.
        assert record["index"] == i and record["id"] == built[i].message_id
        assert orjson.loads(base64.b64decode(record["original"]["bodyBase64"])) == original[i]
        assert record["original"]["element"] == {"count": size, "bytes": len(array.body)}
    weight = sum(len(orjson.dumps(record)) for record in records)
    # Each letter holds its event twice (as it came and as built, in base64) and its reason: about 5x the array
    # in all. Whole, they held the array 1,000 times (1,337x its size).
    assert weight < 8 * len(array.body), (weight, len(array.body))

    # Replayed, each is the message the pipeline built for the event: the same id, body and properties.
    letters = [Letter(name=name, record=record) for name, record in store.blobs.items()]
    deleted: list[str] = []
    replayed = replay(letters, table=TABLE, senders=lambda _e: FileSender(tmp_path), delete=deleted.append)
    assert len(replayed.delivered) == size and not replayed.failed and not replayed.kept
    sent = path_lines(tmp_path / "bus.jsonl")
    direct = tmp_path / "direct"
    Router(routes=StaticRoutes(TABLE), senders=lambda _e: FileSender(direct), dead_letters=KeptLetters()).route([array])
    assert sent == path_lines(direct / "bus.jsonl")


def test_a_cut_letter_parked_by_a_replay_and_expired_since_still_replays_as_its_event(tmp_path: Path) -> None:
    # Its record no longer marks the cut (a parked blob keeps the original it was given): position and body
    # alone say it is an event cut from its array.
    array = twin_event([sensor("s-0"), sensor("s-1"), sensor("s-2")], seq=3)
    event = [r for r in classify(array) if isinstance(r, Event)][2]
    message = envelope.build(event, TABLE.endpoints[0])
    cut = IngressMessage(
        **{f: getattr(array, f) for f in IngressMessage.__struct_fields__} | {"body": orjson.dumps(sensor("s-2"))}
    )
    relabelled = msgspec.structs.replace(message, event=msgspec.structs.replace(event, ingress=cut))
    record = blob_record(
        DeadLetter.of_message(relabelled, code="expired", reason="x"), datetime(2026, 11, 26, tzinfo=UTC)
    )
    assert "element" not in record["original"] and record["index"] == 2

    replayed = replay(
        [Letter(name="bus/x.json", record=record)],
        table=TABLE,
        senders=lambda _e: FileSender(tmp_path),
        delete=lambda _n: None,
    )

    assert replayed.failed == {} and replayed.kept == {}
    direct = tmp_path / "direct"
    Router(routes=StaticRoutes(TABLE), senders=lambda _e: FileSender(direct), dead_letters=KeptLetters()).route([array])
    assert path_lines(tmp_path / "bus.jsonl") == path_lines(direct / "bus.jsonl")[2:]


# --- events-file lines ----------------------------------------------------------------------------------


def test_an_events_file_line_the_router_could_not_write_is_a_bad_line_with_why() -> None:
    deep = json.dumps(nested(300))
    with pytest.raises(IngressFormatError, match=r"line 3: body nests JSON deeper than the router can write"):
        parse_line(f'{{"body": {deep}}}', source="t", line_number=3)
    with pytest.raises(IngressFormatError, match=r"line 4: properties nest JSON deeper than the router can write"):
        parse_line(f'{{"body": 1, "properties": {{"p": {deep}}}}}', source="t", line_number=4)
    # As text it is a message: classification then dead-letters it as too deep, with the original.
    message = parse_line(
        json.dumps({"bodyText": json.dumps(sensor(""))[:-1] + f', "x": {deep}}}'}), source="t", line_number=5
    )
    [rejection] = classify(message)
    assert isinstance(rejection, Rejection) and rejection.code == "too-deep"
