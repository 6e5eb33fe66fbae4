"""Route filters: the grammar and its errors, what each operand reads, arrays, missing operands, bodies
parsed only when a filter needs them, and filters through validation, the pipeline, the table mapping
and the routes CLI's dry run."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from routing.cli.main import app
from routing.deadletters import FileDeadLetters
from routing.deliver.senders import FileSender
from routing.errors import RouteTableError
from routing.ingest.classify import classify
from routing.model import Event, EventType, IngressMessage
from routing.pipeline import Router, StaticRoutes
from routing.routes.filters import FilterSyntaxError, compile_filter
from routing.routes.table import Endpoint, parse_endpoint, parse_routes
from routing.routes.tables import parse_row, to_entity, to_raw
from tests.azurite import Azurite
from tests.conftest import telemetry, twin_event

READINGS = [{"Value": 1, "Unit": "C"}, {"Value": 5, "Unit": "C"}, {"Value": 3, "Unit": "F"}]
DATA: dict[str, Any] = {
    "Id": "sensor-1",
    "Type": "Sensor",
    "Value": 21.5,
    "Name": "it's hot",
    "Alarm": True,
    "Nothing": None,
    "Readings": READINGS,
    "Empty": [],
    "Nested": {"odd-key": "x", "Grid": [[1, 2], [3, 4]]},
}


def event_of(msg: IngressMessage) -> Event:
    [result] = classify(msg)
    assert isinstance(result, Event), result
    return result


def sensor_event(data: Any = DATA, **properties: Any) -> Event:
    return event_of(twin_event(data, seq=1, properties={"Type": "SensorChange", **properties}))


def structured_event() -> Event:
    cloud_event = {
        "specversion": "1.0",
        "type": "SensorChange",
        "source": "/sites/plant-7",
        "id": "ce-42",
        "subject": "sensors/sensor-1",
        "data": DATA,
    }
    return event_of(twin_event(cloud_event, seq=1))


def device_event(body: bytes = b'{"t": 30, "tags": ["a", "b"]}', **properties: Any) -> Event:
    return event_of(telemetry("dev-1", body, seq=1, **properties))


def passes(text: str, event: Event | None = None) -> bool:
    return compile_filter(text).matches(event if event is not None else sensor_event())


# --- the grammar --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("true OR false AND false", True),  # AND binds tighter than OR
        ("(true OR false) AND false", False),
        ("NOT false AND false", False),  # NOT binds tighter than AND
        ("NOT (false AND false)", True),
        ("NOT NOT true", True),
        ("false OR false OR true", True),
        ("true AND true AND false", False),
        ("not $body.Value > 30 and $body.Value > 20", True),  # keywords in any case; NOT over a comparison
        ("((($body.Value = 21.5)))", True),
        ("$body.Alarm", True),  # a bare path is true when it holds JSON true
        ("$body.Name", False),
        ("$body.Alarm = true AND $body.Nothing = null", True),
    ],
)
def test_precedence_parentheses_and_boolean_literals(text: str, expected: bool) -> None:
    assert passes(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$body.Value = 21.5", True),
        ("$body.Value != 21.5", False),
        ("$body.Value <> 21", True),
        ("$body.Value > 21", True),
        ("$body.Value >= 21.5", True),
        ("$body.Value < 21.5", False),
        ("$body.Value <= 21.5", True),
        ("$body.Value > -1", True),
        ("$body.Value < 2.2e1", True),
        ("$body.Readings[0].Value = 1.0", True),  # int and float compare as numbers
        ("$body.Name = 'it''s hot'", True),  # a doubled quote stands for itself
        ('$body.Name = "it\'s hot"', True),
        ("$body.Name > 'a'", True),  # strings compare by code point
        ("$body.Name < 'It'", False),
        ("$body.Name = 'IT''S HOT'", False),  # case-sensitive
        ("$body.Value = '21.5'", False),  # different types never compare ...
        ("$body.Value != '21.5'", False),  # ... not even unequal
        ("$body.Alarm = true", True),
        ("$body.Alarm > false", False),  # bools have equality, not order
        ("$body.Nothing = null", True),
        ("$body.Value = null", False),
        ("$body.Value != null", True),
        ("$body.Nested.Grid[1] = $body.Nested.Grid[1]", True),
        ("$body.Readings[0] != $body.Readings[1]", True),
    ],
)
def test_comparisons_and_literals(text: str, expected: bool) -> None:
    assert passes(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("STARTS_WITH($body.Name, 'it')", True),
        ("STARTS_WITH($body.Name, 'hot')", False),
        ("ENDS_WITH($body.Name, 'hot')", True),
        ("ends_with($body.Name, 'it')", False),
        ("CONTAINS($body.Name, '''s h')", True),
        ("CONTAINS($body.Name, 'cold')", False),
        ("CONTAINS($body.Value, '21')", False),  # not a string: false, not an error
        ("STARTS_WITH($body.Missing, '')", False),
        ("IS_DEFINED($body.Value)", True),
        ("IS_DEFINED($body.Nothing)", True),  # null is defined
        ("IS_DEFINED($body.Missing)", False),
        ("NOT IS_DEFINED($body.Readings[9])", True),
        ("IS_DEFINED($properties.Type)", True),
        ("is_defined($system['iothub-connection-device-id'])", False),
    ],
)
def test_functions(text: str, expected: bool) -> None:
    assert passes(text) is expected


def test_the_event_operands_type_subject_source_and_id() -> None:
    event = structured_event()
    assert passes("type = 'SensorChange' AND subject = 'sensors/sensor-1'", event)
    assert passes("source = '/sites/plant-7' AND id = 'ce-42'", event)
    assert not passes("type = 'SpaceChange'", event)
    assert passes("TYPE = 'SensorChange'")  # operand names are case-insensitive too
    device = device_event()
    assert passes("type = 'DeviceMessages'", device)
    assert passes("id = '" + device.message_id + "'", device)  # telemetry's id is its message id
    assert not passes("IS_DEFINED(subject) OR IS_DEFINED(source)", device)  # telemetry has neither


def test_application_and_system_properties() -> None:
    properties: dict[str, Any] = {"Unit": "C", "DigitalTwins-Telemetry": "1.0", "Count": 3}
    event = device_event(**properties)
    assert passes("$properties.Unit = 'C'", event)
    assert passes("$properties.unit = 'C'", event)  # property names are matched case-insensitively
    assert passes("$properties['DigitalTwins-Telemetry'] = '1.0'", event)
    assert passes("$properties.Count >= 3", event)
    assert passes("$system['iothub-connection-device-id'] = 'dev-1'", event)
    assert passes("$system['iothub-message-source'] = 'Telemetry'", event)
    assert not passes("$properties.Unit = 'F'", event)
    assert not passes("$properties.Unit.Deeper = 'C'", event)


# --- arrays -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$body.Readings[1].Value = 5", True),
        ("$body.Readings[2]['Unit'] = 'F'", True),
        ("$body.Readings[3].Value = 5", False),  # beyond the end: missing
        ("$body.Nested.Grid[1][0] = 3", True),
        ("$body.Nested['odd-key'] = 'x'", True),
        ("ANY($body.Readings, r, r.Value > 3)", True),
        ("ANY($body.Readings, r, r.Value > 5)", False),
        ("ALL($body.Readings, r, r.Value > 0)", True),
        ("ALL($body.Readings, r, r.Unit = 'C')", False),
        ("ANY($body.Readings, r, r.Unit = 'F' AND r.Value = 3)", True),
        ("ANY($body.Readings, r, r.Unit = 'F' AND r.Value = 1)", False),
        ("ANY($body.Empty, r, true)", False),
        ("ALL($body.Empty, r, false)", True),  # vacuously true, as in logic
        ("ANY($body.Missing, r, true)", False),
        ("ALL($body.Missing, r, true)", False),  # not an array: false for ALL too
        ("ALL($body.Name, r, true)", False),
        ("ANY($body.Nested.Grid, row, ANY(row, x, x = 4))", True),  # nested, the element itself
        ("ALL($body.Nested.Grid, row, ANY(row, x, x = 4))", False),
        ("ANY($body.Readings, r, r.Value = $body.Readings[1].Value)", True),  # the outer body stays in scope
    ],
)
def test_array_index_any_and_all(text: str, expected: bool) -> None:
    assert passes(text) is expected


# --- missing operands ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "$body.Missing = 1",
        "$body.Missing != 1",
        "$body.Missing < 1",
        "$body.Missing = null",
        "$body.Value.Deeper = 1",
        "$properties.Nope = 'x'",
        "$properties.Nope != 'x'",
        "$body.Missing = $body.AlsoMissing",
        "$body.Missing",
    ],
)
def test_a_comparison_with_a_missing_operand_is_false_not_an_error(text: str) -> None:
    assert passes(text) is False
    assert passes(f"NOT ({text})") is True


# --- malformed filters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("type = 'SensorChange')", "unexpected ')' at position 22", 22),
        ("type = 'SensorChange' AND (subject = 'x'", "unexpected end of filter at position 41", 41),
        ("type = ", "unexpected end of filter at position 8", 8),
        ("type == 'x'", "unexpected '=' at position 7", 7),
        ("type = 'x' AND", "unexpected end of filter at position 15", 15),
        ("type = 'x' $body.a = 1", "unexpected '$body' at position 12", 12),
        ("subject = 'it's'", "unterminated string starting at position 16", 16),  # the quote needs doubling
        ("subject = 'open", "unterminated string starting at position 11", 11),
        ("subject # 'x'", "unexpected '#' at position 9", 9),
        ("'just a string'", "expected a condition at position 1", 1),
        ("$body.Value", None, 0),  # a path alone is a condition: valid
        ("42 AND true", "expected a condition at position 1", 1),
        ("colour = 'red'", "unknown operand 'colour' at position 1", 1),
        ("properties.Unit = 'C'", "unknown operand 'properties' at position 1: write $properties.<name>", 1),
        ("$properties = 'C'", "$properties needs a name at position 1", 1),
        ("STARTSWITH(subject, 'a')", "unknown function 'STARTSWITH' at position 1 (did you mean STARTS_WITH?)", 1),
        ("STARTS_WITH(subject)", "unexpected ')' at position 20", 20),
        ("IS_DEFINED('x')", "IS_DEFINED needs a path (like $body.Value) at position 12", 12),
        ("ANY('x', r, true)", "ANY needs an array path", 5),
        ("ANY($body.R, type, true)", "unexpected 'type' at position 14: ANY needs a name for the element", 14),
        ("ANY($body.R, r, ANY(r, r, true))", "'r' is already the element of an outer ANY/ALL at position 24", 24),
        ("r.Value = 1", "unknown operand 'r' at position 1", 1),  # outside its ANY
        ("$body.Readings[-1].Value = 1", "unexpected '-' at position 16", 16),
        ("$body.Readings[0.5] = 1", "unexpected '0.5' at position 16", 16),
        ("$body. = 1", "unexpected '=' at position 8: expected a name after '.'", 8),
        pytest.param("(" * 5000 + "true" + ")" * 5000, "is nested too deeply", 1, id="nested-5000-deep"),
        ("", "is empty", 1),
        ("   ", "is empty", 1),
    ],
)
def test_malformed_filters_name_the_position(text: str, message: str | None, position: int) -> None:
    if message is None:
        compile_filter(text)
        return
    with pytest.raises(FilterSyntaxError) as caught:
        compile_filter(text)
    assert message in str(caught.value)
    assert caught.value.position == position


# --- bodies parsed only when needed ------------------------------------------------------------------


def counting_loader(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    import routing.routes.filters  # noqa: PLC0415 - the module attribute is what gets patched

    calls: list[bytes] = []
    real = routing.routes.filters.load_json

    def loader(data: bytes) -> Any:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(routing.routes.filters, "load_json", loader)
    return calls


def hub(name: str, event_types: list[str], filter_: str | None = None) -> dict[str, Any]:
    # A hub each: endpoints that share a destination get an event once (tests/test_templates.py).
    raw: dict[str, Any] = {"name": name, "type": "EventHub", "eventTypes": event_types, "connection": "C", "path": name}
    if filter_ is not None:
        raw["filter"] = filter_
    return raw


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def make_router(tmp_path: Path, routes: list[dict[str, Any]]) -> Router:
    senders = FileSender(tmp_path)
    return Router(
        routes=StaticRoutes(parse_routes(routes)), senders=lambda _e: senders, dead_letters=FileDeadLetters(tmp_path)
    )


def test_the_compiled_filter_says_whether_it_needs_the_body() -> None:
    assert compile_filter("$body.t > 3").needs_body
    assert compile_filter("type = 'x' OR ANY($body.R, r, r = 1)").needs_body
    assert not compile_filter("$properties.Unit = 'C' AND STARTS_WITH(subject, '$body')").needs_body


def test_a_telemetry_body_is_parsed_once_per_event_however_many_filters_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_loader(monkeypatch)
    routes = [
        hub("hot", ["DeviceMessages"], "$body.t > 25"),
        hub("tagged", ["DeviceMessages"], "ANY($body.tags, x, x = 'b')"),
        hub("celsius", ["DeviceMessages"], "$properties.Unit = 'C'"),
    ]
    report = make_router(tmp_path, routes).route(
        [telemetry("d", b'{"t": 30, "tags": ["b"]}', seq=1, Unit="C"), telemetry("d", b'{"t": 20}', seq=2, Unit="F")]
    )
    assert calls == [b'{"t": 30, "tags": ["b"]}', b'{"t": 20}']
    assert report.delivered == {
        ("hot", EventType.DEVICE_MESSAGES): 1,
        ("tagged", EventType.DEVICE_MESSAGES): 1,
        ("celsius", EventType.DEVICE_MESSAGES): 1,
    }
    assert dict(report.unrouted) == {EventType.DEVICE_MESSAGES: 1}


def test_a_telemetry_body_is_never_parsed_when_no_filter_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_loader(monkeypatch)
    routes = [hub("all", ["DeviceMessages"]), hub("celsius", ["DeviceMessages"], "$properties.Unit = 'C'")]
    body = b"\xff not json at all"
    report = make_router(tmp_path, routes).route([telemetry("d", body, seq=1, Unit="C")])
    assert calls == []
    assert report.delivered[("celsius", EventType.DEVICE_MESSAGES)] == 1
    [line] = read(tmp_path / "celsius.jsonl")
    assert line["bodyBase64"]  # forwarded as it came


def test_a_body_filter_on_a_body_that_is_not_json_is_false() -> None:
    event = device_event(b"\xff\x00 binary", Unit="C")
    assert not passes("NOT IS_DEFINED($body.t)", event)  # even a filter that would hold for a missing field
    assert not passes("$properties.Unit = 'C' OR $body.t = 1", event)
    assert passes("$properties.Unit = 'C'", event)


def test_filters_are_compiled_when_the_table_loads_never_per_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = make_router(tmp_path, [hub("hot", ["DeviceMessages"], "$body.t > 25")])

    def no_parsing(text: str) -> Any:
        raise AssertionError("a filter was parsed while routing")

    monkeypatch.setattr("routing.routes.filters._tokenize", no_parsing)
    report = router.route([telemetry("d", f'{{"t": {t}}}'.encode(), seq=t) for t in range(20, 31)])
    assert report.delivered[("hot", EventType.DEVICE_MESSAGES)] == 5


# --- through the pipeline, validation and the table mapping ------------------------------------------


def test_events_go_only_to_the_endpoints_whose_filter_matches(tmp_path: Path) -> None:
    routes = [
        hub("everything", ["SensorChange"]),
        hub("high", ["SensorChange", "SpaceChange"], "$body.Value > 20 AND type = 'SensorChange'"),
        hub("low", ["SensorChange"], "$body.Value <= 20"),
        hub("spaces", ["SpaceChange"], "ANY($body.Readings, r, r.Value > 3)"),
    ]
    batch = [
        twin_event({**DATA, "Id": "a", "Value": 25}, seq=1, properties={"Type": "SensorChange"}),
        twin_event({**DATA, "Id": "b", "Value": 10}, seq=2, properties={"Type": "SensorChange"}),
        twin_event({"Id": "s", "Readings": [{"Value": 1}]}, seq=3, properties={"Type": "SpaceChange"}),
        twin_event({"Id": "t", "Readings": [{"Value": 4}]}, seq=4, properties={"Type": "SpaceChange"}),
    ]
    report = make_router(tmp_path, routes).route(batch)
    assert [x["partitionKey"] for x in read(tmp_path / "everything.jsonl")] == ["a", "b"]
    assert [x["partitionKey"] for x in read(tmp_path / "high.jsonl")] == ["a"]
    assert [x["partitionKey"] for x in read(tmp_path / "low.jsonl")] == ["b"]
    assert [x["partitionKey"] for x in read(tmp_path / "spaces.jsonl")] == ["t"]
    # The space event no filter wanted is counted, not lost.
    assert dict(report.unrouted) == {EventType.SPACE_CHANGE: 1}
    assert not report.dead_letters


def test_a_bad_filter_is_reported_with_every_other_problem_of_the_table() -> None:
    raw = [
        hub("ok", ["SensorChange"], "$body.Value > 3"),
        hub("broken", ["SensorChange"], "type = 'SensorChange')"),
        hub("also", ["Weather"], "STARTS_WITH(subject 'x')"),
        {**hub("typed", ["SensorChange"]), "filter": 42},
    ]
    with pytest.raises(RouteTableError) as caught:
        parse_routes(raw, "routes.json")
    problems = [str(p) for p in caught.value.problems]
    assert len(problems) == 4, problems
    assert problems[0] == (
        "endpoint 'broken', field 'filter': unexpected ')' at position 22: expected AND, OR or the end of the "
        "filter in \"type = 'SensorChange')\""
    )
    assert "endpoint 'also', field 'eventTypes': unknown event type 'Weather'" in problems[1]
    assert problems[2].startswith("endpoint 'also', field 'filter': unexpected \"'x'\" at position 21")
    assert problems[3].startswith("endpoint 'typed', field 'filter': must be a string")


def test_a_filter_round_trips_through_the_routes_file_form_and_the_table_row() -> None:
    raw = hub("Hot", ["DeviceMessages"], "$body.t > 25 AND $properties['Unit'] = 'C'")
    parsed = parse_endpoint(raw, "endpoint #1")
    assert isinstance(parsed, Endpoint) and parsed.filter is not None
    assert parsed.to_dict()["filter"] == raw["filter"]
    assert parse_endpoint(parsed.to_dict(), "endpoint #1") == parsed

    entity = to_entity(parsed)
    assert entity["Filter"] == raw["filter"]
    assert to_raw(entity)["filter"] == raw["filter"]
    assert parse_row(entity) == parsed

    unfiltered = parse_endpoint(hub("plain", ["DeviceMessages"]), "endpoint #1")
    assert isinstance(unfiltered, Endpoint)
    assert "filter" not in unfiltered.to_dict() and "Filter" not in to_entity(unfiltered)


def test_a_row_with_a_bad_filter_is_invalid_and_says_where() -> None:
    entity = to_entity(parse_routes([hub("x", ["SensorChange"])]).endpoints[0])
    entity["Filter"] = "$body.Value >"
    problems = parse_row(entity)
    assert isinstance(problems, list)
    assert [str(p) for p in problems] == [
        "endpoint 'x', field 'filter': unexpected end of filter at position 14: expected a value, a path or a "
        "condition in '$body.Value >'"
    ]


# --- the routes CLI ------------------------------------------------------------------------------------

cli = CliRunner()


class Table:
    def __init__(self, connection_string: str) -> None:
        self.connection_string = connection_string
        self.name = f"filters{uuid.uuid4().hex[:16]}"

    def __call__(self, *args: str) -> Any:
        return cli.invoke(app, ["routes", *args, "--connection-string", self.connection_string, "--table", self.name])

    def json(self, *args: str, exit_code: int = 0) -> Any:
        result = self(*args, "-o", "json")
        assert result.exit_code == exit_code, result.output
        return json.loads(result.stdout)


@pytest.fixture
def table(azurite: Azurite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Table:
    for name in ("ROUTES_STORAGE", "ROUTES_STORAGE__tableServiceUri", "ROUTES_TABLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return Table(azurite.connection_string)


# No --path: each endpoint gets its own hub (endpoints sharing one get an event once).
HUB = ("--type", "EventHub", "--connection", "C")


def test_the_dry_run_shows_for_each_endpoint_whether_its_filter_matched(table: Table, tmp_path: Path) -> None:
    assert (
        table(
            "add", "hot", *HUB, "--path", "hot", "--event-types", "SensorChange", "--filter", "$body.Value > 20"
        ).exit_code
        == 0
    )
    assert (
        table(
            "add", "cold", *HUB, "--path", "cold", "--event-types", "SensorChange", "--filter", "$body.Value < 0"
        ).exit_code
        == 0
    )
    assert table("add", "all", *HUB, "--path", "all", "--event-types", "SensorChange").exit_code == 0
    assert (
        table(
            "add", "raw", *HUB, "--path", "raw", "--event-types", "DeviceMessages", "--filter", "$body.t > 1"
        ).exit_code
        == 0
    )
    line = {"body": {**DATA, "Value": 25}, "properties": {"Type": "SensorChange"}, "sequenceNumber": 1}
    event = tmp_path / "e.json"
    event.write_text(json.dumps(line))

    [decision] = table.json("test", "--event", str(event))
    assert decision["result"] == "routed"
    # In the table's order: the order they were added in.
    assert [(e["name"], e["why"], e.get("filterMatched")) for e in decision["endpoints"]] == [
        ("hot", "takes SensorChange and its filter matched", True),
        ("all", "takes SensorChange", None),
    ]
    assert [(e["name"], e["why"], e["filter"]) for e in decision["notSent"]] == [
        ("cold", "takes SensorChange but its filter did not match", "$body.Value < 0"),
    ]
    assert [(e["name"], e["why"]) for e in decision["otherTypes"]] == [
        ("raw", "does not take SensorChange (takes DeviceMessages)"),
    ]

    text = table("test", "--event", str(event))
    assert text.exit_code == 0, text.output
    assert "filter of 'cold' did not match: $body.Value < 0" in text.output
    assert "filter of 'hot' matched: $body.Value > 20" in text.output
    assert "raw" in text.output and "$body.t" not in text.output  # other types' filters are not the point


def test_the_dry_run_says_which_filters_left_an_event_unrouted(table: Table, tmp_path: Path) -> None:
    assert (
        table(
            "add", "cold", *HUB, "--path", "cold", "--event-types", "SensorChange", "--filter", "$body.Value < 0"
        ).exit_code
        == 0
    )
    event = tmp_path / "e.json"
    event.write_text(json.dumps({"body": DATA, "properties": {"Type": "SensorChange"}}))
    [decision] = table.json("test", "--event", str(event), exit_code=1)  # unrouted: exit 1, for scripts
    assert decision["result"] == "unrouted"
    assert decision["reason"] == "the filters of 'cold' did not match"


def test_the_cli_refuses_a_bad_filter_and_update_can_change_or_remove_one(table: Table) -> None:
    bad = table("add", "hot", *HUB, "--path", "hot", "--event-types", "SensorChange", "--filter", "$body.Value > 20)")
    assert bad.exit_code == 2
    assert "field 'filter': unexpected ')' at position 17" in bad.output
    assert table.json("list") == []
    assert table("add", "hot", *HUB, "--path", "hot", "--event-types", "SensorChange").exit_code == 0
    assert table.json("update", "hot", "--filter", "subject = 'x'")["filter"] == "subject = 'x'"
    assert table.json("show", "hot")["filter"] == "subject = 'x'"
    assert "filter" not in table.json("update", "hot", "--filter", "")
    assert "filter" not in table.json("show", "hot")
