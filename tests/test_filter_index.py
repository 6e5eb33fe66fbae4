"""Route tables look filtered endpoints up by value: a filter `path = 'literal' AND ...` is indexed by
its path, so an event tests only the endpoints it could reach, and the answer is the same as testing
every filter (checked against the plain scan on generated tables and events)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing.routes.filters
from routing.ingest.classify import classify
from routing.model import Event
from routing.routes.filters import compile_filter
from routing.routes.iothub_queries import compile_iot_hub_query
from routing.routes.table import matching, parse_routes
from tests.conftest import telemetry


@pytest.mark.parametrize(
    ("text", "path", "key"),
    [
        ("$system['iothub-connection-device-id'] = 'device-7'", "$system['iothub-connection-device-id']", "device-7"),
        ("$body.t > 3 AND $properties.site = 'a'", "$properties.site", "a"),
        ("'a' = subject AND type = 'DeviceMessages'", "subject", "a"),  # literal first; the first equality
        ("$body.Floor = -2", "$body.Floor", -2),
        ("$body.x = 1.5 AND NOT $body.y = 2", "$body.x", 1.5),
    ],
)
def test_a_top_level_equality_with_a_literal_is_what_the_index_uses(text: str, path: str, key: Any) -> None:
    index = compile_filter(text).index
    assert index is not None and (index.path, index.op, index.key) == (path, "=", key)


@pytest.mark.parametrize(
    ("text", "path", "op", "key"),
    [
        ("$body.co2 > 1100", "$body.co2", ">", 1100),
        ("3 <= $body.n AND $body.x != 1", "$body.n", ">=", 3),  # written the other way round
        ("$body.t < 'm' AND STARTS_WITH(subject, 'Sensor')", "subject", "starts_with", "Sensor"),  # prefix first
        ("$body.t >= 2 AND $properties.site = 'a'", "$properties.site", "=", "a"),  # equality first
    ],
)
def test_ranges_and_prefixes_are_indexed_when_there_is_no_equality(text: str, path: str, op: str, key: Any) -> None:
    index = compile_filter(text).index
    assert index is not None and (index.path, index.op, index.key) == (path, op, key)


@pytest.mark.parametrize(
    "text",
    [
        "subject = 'a' OR subject = 'b'",  # either may hold
        "NOT subject = 'a'",
        "(subject = 'a' OR $body.x = 1) AND $body.y = 2 OR true",
        "ANY($body.r, r, r = 1)",
        "subject = null",
        "$body.alarm = true",
        "$body.x = $body.y",
        "STARTS_WITH(subject, $body.x)",
        "ENDS_WITH(subject, 'a')",
        "$body.x != 'a'",
    ],
)
def test_filters_an_index_cannot_decide_are_tested_one_by_one(text: str) -> None:
    assert compile_filter(text).index is None


def hub(name: str, filter_: str | None) -> dict[str, Any]:
    raw: dict[str, Any] = {"name": name, "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "C"}
    raw["path"] = name
    if filter_ is not None:
        raw["filter"] = filter_
    return raw


def event_of(device: str, body: bytes, **props: Any) -> Event:
    [event] = classify(telemetry(device, body, seq=1, **props))
    assert isinstance(event, Event)
    return event


def test_a_thousand_per_device_routes_cost_one_comparison_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    routes = [hub(f"d{i}", f"$system['iothub-connection-device-id'] = 'device-{i}'") for i in range(1000)]
    table = parse_routes([*routes, hub("everything", None)])
    comparisons: list[tuple[Any, Any]] = []
    real = routing.routes.filters._compare

    def counted(op: str, left: Any, right: Any) -> bool:
        comparisons.append((left, right))
        return real(op, left, right)

    monkeypatch.setattr(routing.routes.filters, "_compare", counted)
    event = event_of("device-637", b"{}")
    assert [e.name for e in table.targets(event)] == ["d637", "everything"]
    assert comparisons == [("device-637", "device-637")]  # the matched endpoint's own filter, once
    comparisons.clear()
    assert [e.name for e in table.targets(event_of("device-x", b"{}"))] == ["everything"]
    assert comparisons == []


def test_an_indexed_filter_still_checks_the_rest_of_its_conditions_and_keeps_table_order() -> None:
    table = parse_routes(
        [
            hub("late", "$body.n > 5"),
            hub("site-a-hot", "$properties.site = 'a' AND $body.n > 5"),
            hub("site-a", "$properties.site = 'a'"),
            hub("number", "$body.n = 7"),
            hub("site-b", "$properties.site = 'b'"),
        ]
    )
    names = [e.name for e in table.targets(event_of("d", b'{"n": 7.0}', site="a"))]
    assert names == ["late", "site-a-hot", "site-a", "number"]  # 7.0 equals the literal 7
    assert [e.name for e in table.targets(event_of("d", b'{"n": 1}', site="a"))] == ["site-a"]
    assert [e.name for e in table.targets(event_of("d", b"not json", site="a"))] == ["site-a"]
    assert [e.name for e in table.targets(event_of("d", b'{"n": true}', SITE=1))] == []


VALUES = st.sampled_from(["'a'", "'b'", "'ab'", "''", "1", "2", "1.0", "-1", "2.5"])
PATHS = st.sampled_from(["$properties.site", "$body.n", "$body.s", "subject", "$system['iothub-connection-device-id']"])
COMPARISONS = st.builds(
    lambda p, v, op, flip: f"{v} {op} {p}" if flip else f"{p} {op} {v}",
    PATHS,
    VALUES,
    st.sampled_from(["=", "=", "!=", ">", ">=", "<", "<="]),
    st.booleans(),
)
PREFIXES = st.builds(lambda p, v: f"STARTS_WITH({p}, {v})", PATHS, st.sampled_from(["'a'", "'ab'", "''", "'b'", "1"]))
CONDITIONS = st.one_of(COMPARISONS, PREFIXES)
FILTERS = st.one_of(
    st.none(),
    CONDITIONS,
    st.builds(lambda a, b: f"{a} AND {b}", CONDITIONS, CONDITIONS),
    st.builds(lambda a, b: f"{a} OR {b}", CONDITIONS, CONDITIONS),
    st.builds(lambda a, b: f"NOT ({a}) AND {b}", CONDITIONS, CONDITIONS),
)
JSON_VALUES = st.one_of(st.sampled_from(["a", "b", "ab", "abc", "", 1, 2, 1.0, 1.5, -1, 3, True, None]), st.just([1]))


@settings(max_examples=300, deadline=None)
@given(
    filters=st.lists(FILTERS, min_size=1, max_size=12),
    site=JSON_VALUES,
    n=JSON_VALUES,
    s=JSON_VALUES,
    device=st.sampled_from(["a", "b", "ab", "1"]),
)
def test_the_index_chooses_exactly_what_testing_every_filter_chooses(
    filters: list[str | None], site: Any, n: Any, s: Any, device: str
) -> None:
    import orjson  # noqa: PLC0415

    table = parse_routes([hub(f"e{i}", f) for i, f in enumerate(filters)])
    event = event_of(device, orjson.dumps({"n": n, "s": s}), site=site)
    expected = matching(event, table.for_type(event.event_type))
    assert table.targets(event) == expected


def test_endpoints_with_the_same_filter_text_test_it_once_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    table = parse_routes([hub(f"e{i}", "$body.co2 > 1000" if i % 2 else "$body.co2 > 500") for i in range(100)])
    comparisons: list[str] = []
    real = routing.routes.filters._compare

    def counted(op: str, left: Any, right: Any) -> bool:
        comparisons.append(op)
        return real(op, left, right)

    monkeypatch.setattr(routing.routes.filters, "_compare", counted)
    chosen = table.targets(event_of("d", b'{"co2": 700}'))
    assert [e.name for e in chosen] == [f"e{i}" for i in range(0, 100, 2)]
    # 700 is below every `> 1000` literal (never candidates); the 50 `> 500` filters are one text, tested once.
    assert len(comparisons) == 1

    comparisons.clear()
    unindexed = parse_routes([hub(f"e{i}", "$body.co2 != 1" if i % 2 else "$body.co2 != 2") for i in range(100)])
    assert len(unindexed.targets(event_of("d", b'{"co2": 700}'))) == 100
    assert len(comparisons) == 2  # two distinct texts


# IoT Hub routing queries are indexed the same way, their paths apart from Digital Twins' (the same
# `$body.n` reads a body IoT Hub would not read in one language and not the other).
IOT_HUB_PATHS = st.sampled_from(["site", "$body.n", "$body.s", "$connectionDeviceId", "$iothub-connection-device-id"])
IOT_HUB_CONDITIONS = st.one_of(
    st.builds(
        lambda p, v, op, flip: f"{v} {op} {p}" if flip else f"{p} {op} {v}",
        IOT_HUB_PATHS,
        VALUES,
        st.sampled_from(["=", "=", "!=", ">", ">=", "<", "<="]),
        st.booleans(),
    ),
    st.builds(lambda p, v: f"STARTS_WITH({p}, {v})", IOT_HUB_PATHS, st.sampled_from(["'a'", "'ab'", "''", "1"])),
)
IOT_HUB_QUERIES = st.one_of(
    IOT_HUB_CONDITIONS,
    st.builds(lambda a, b: f"{a} AND {b}", IOT_HUB_CONDITIONS, IOT_HUB_CONDITIONS),
    st.builds(lambda a, b: f"{a} OR {b}", IOT_HUB_CONDITIONS, IOT_HUB_CONDITIONS),
    st.builds(lambda a, b: f"NOT ({a}) AND {b}", IOT_HUB_CONDITIONS, IOT_HUB_CONDITIONS),
)


def test_iot_hub_queries_are_indexed_by_their_top_level_conjuncts() -> None:
    index = compile_iot_hub_query("$body.t > 3 AND $connectionDeviceId = 'device-7'").index
    assert index is not None and (index.path, index.op, index.key) == ("$connectionDeviceId", "=", "device-7")
    prefix = compile_iot_hub_query("STARTS_WITH($connectionDeviceId, 'plant7-')").index
    assert prefix is not None and (prefix.op, prefix.key) == ("starts_with", "plant7-")
    assert compile_iot_hub_query("$enqueuedTime > '2022-06-06T22:56:06Z'").index is None  # times compare as times
    assert compile_iot_hub_query("x = 1 OR y = 2").index is None


@settings(max_examples=300, deadline=None)
@given(
    filters=st.lists(
        st.one_of(st.none(), FILTERS.map(lambda f: ("digitaltwins", f)), IOT_HUB_QUERIES.map(lambda f: ("iothub", f))),
        min_size=1,
        max_size=12,
    ),
    site=JSON_VALUES,
    n=JSON_VALUES,
    s=JSON_VALUES,
    device=st.sampled_from(["a", "b", "ab", "1"]),
    declared=st.booleans(),
)
def test_the_index_chooses_exactly_what_testing_every_filter_chooses_in_both_languages(
    filters: list[tuple[str, str | None] | None], site: Any, n: Any, s: Any, *, device: str, declared: bool
) -> None:
    import orjson  # noqa: PLC0415

    routes = []
    for i, item in enumerate(filters):
        language, text = item if item is not None else ("digitaltwins", None)
        routes.append({**hub(f"e{i}", text), "filterLanguage": language})
    table = parse_routes(routes)
    system = {"content-type": "application/json", "content-encoding": "utf-8"} if declared else {}
    msg = telemetry(device, orjson.dumps({"n": n, "s": s}), seq=1, site=site)
    [event] = classify(msgspec.structs.replace(msg, system_properties={**msg.system_properties, **system}))
    assert isinstance(event, Event)
    expected = matching(event, table.for_type(event.event_type))
    assert table.targets(event) == expected
