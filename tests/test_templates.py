"""Per-endpoint order key templates and enrichments, and sending once to a destination several
endpoints share: compiled when the table loads (errors with positions), applied by the pipeline, read
back from what the file sender wrote."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from routing.deadletters import FileDeadLetters
from routing.deliver.senders import FileSender
from routing.errors import RouteTableError
from routing.model import EventType, IngressMessage
from routing.pipeline import Router, StaticRoutes
from routing.routes.filters import FilterSyntaxError
from routing.routes.table import parse_routes
from routing.routes.tables import parse_row, to_entity
from routing.routes.templates import compile_value
from tests.conftest import sensor_data, telemetry, twin_event
from tests.test_filters import counting_loader


def endpoint(name: str, **fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": name,
        "type": "EventHub",
        "eventTypes": ["DeviceMessages"],
        "connection": "HUB",
        "path": name,
    }
    raw.update(fields)
    return raw


def route(tmp_path: Path, routes: list[dict[str, Any]], messages: list[IngressMessage]) -> Router:
    senders = FileSender(tmp_path)
    router = Router(
        routes=StaticRoutes(parse_routes(routes)), senders=lambda _e: senders, dead_letters=FileDeadLetters(tmp_path)
    )
    router.route(messages)
    return router


def sent(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    path = tmp_path / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def problems_of(raw: dict[str, Any]) -> str:
    with pytest.raises(RouteTableError) as caught:
        parse_routes([raw])
    return str(caught.value)


# --- compiling -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{$body.Floor", "'{' at position 1 is never closed"),
        ("{$subject}/{$bdy.x}", "unknown operand '$bdy' at position 13"),
        ("$body.", "at position 7: expected a name after '.'"),
        ("site }", "unmatched '}' at position 6"),
        ("$subject AND x", "unexpected 'AND' at position 10: expected the end of the path"),
        ("{}", "expected a path at position 2"),
    ],
)
def test_a_malformed_template_names_the_position(text: str, message: str) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        compile_value(text)
    assert message in str(caught.value)


def test_fixed_values_paths_and_templates_are_told_apart() -> None:
    fixed = compile_value("plant-7")
    assert (fixed.fixed, fixed.operand, fixed.parts) == ("plant-7", None, ())
    assert compile_value(3).fixed == 3 and compile_value(True).fixed is True
    assert compile_value("$$5 off").fixed == "$5 off"  # `$$` is a literal dollar
    assert compile_value("{{literal}}").fixed == "{literal}"
    assert compile_value("$body.DeviceId").operand is not None
    assert compile_value("$body.DeviceId").needs_body and not compile_value("$subject").needs_body
    assert compile_value("{$subject}-{$body.x}").needs_body


def test_an_order_key_must_read_the_event() -> None:
    for fixed in ("deviceId", "{{x}}", "$$x"):
        with pytest.raises(ValueError, match="every message would share one key"):
            compile_value(fixed, allow_fixed=False)


def test_the_route_validator_reports_bad_order_keys_and_enrichments_by_field() -> None:
    text = problems_of(endpoint("raw", orderKey="$body.Device Id"))
    assert "field 'orderKey'" in text and "position 14" in text
    assert "field 'orderKey'" in problems_of(endpoint("raw", orderKey=7))
    assert "every message would share one key" in problems_of(endpoint("raw", orderKey="site"))

    text = problems_of(
        endpoint(
            "twins",
            eventTypes=["SensorChange"],
            enrichments={"EventType": "x", "ok": "{$body.Id", "list": [1], "": "x"},
        )
    )
    assert "field 'enrichments.EventType'" in text and "set by the router" in text
    assert "field 'enrichments.ok'" in text and "position 1 is never closed" in text
    assert "field 'enrichments.list'" in text and "must be a string, number or true/false" in text
    assert "field 'enrichments.'" in text and "non-empty string" in text
    assert "must be an object" in problems_of(endpoint("raw", enrichments=["site"]))
    assert "at most 20" in problems_of(endpoint("raw", enrichments={f"p{i}": "x" for i in range(21)}))

    grid = {"type": "EventGrid", "eventTypes": ["SensorChange"], "path": "t.eventgrid.azure.net"}
    assert "Event Grid schema has no place" in problems_of(endpoint("grid", **grid, enrichments={"site": "x"}))
    cloud = problems_of(endpoint("grid", **grid, format="CloudEvents", enrichments={"Site": "x", "source": "y"}))
    assert "field 'enrichments.Site'" in cloud and "field 'enrichments.source'" in cloud
    parse_routes([endpoint("grid", **grid, format="CloudEvents", enrichments={"site7": "x"})])  # accepted


def test_a_row_keeps_its_order_key_and_enrichments_with_their_types() -> None:
    [parsed] = parse_routes(
        [endpoint("raw", orderKey="{$body.Building}/{$body.Floor}", enrichments={"site": "plant-7", "tier": 2})]
    ).endpoints
    row = to_entity(parsed)
    assert row["OrderKey"] == "{$body.Building}/{$body.Floor}"
    assert json.loads(row["Enrichments"]) == {"site": "plant-7", "tier": 2}
    assert parse_row(row) == parsed
    assert parsed.to_dict()["enrichments"] == {"site": "plant-7", "tier": 2}


# --- order keys ------------------------------------------------------------------------------------------


def test_a_gateways_telemetry_is_ordered_per_leaf_device_from_the_body(tmp_path: Path) -> None:
    messages = [
        telemetry("gateway-1", b'{"DeviceId": "leaf-a", "t": 1}', seq=1),
        telemetry("gateway-1", b'{"DeviceId": "leaf-b", "t": 2}', seq=2),
        telemetry("gateway-1", b'{"DeviceId": "leaf-a", "t": 3}', seq=3),
        telemetry("gateway-1", b'{"t": 4}', seq=4),  # no DeviceId: the device's own key
        telemetry("gateway-1", b"not json", seq=5),  # nor here
        telemetry("gateway-1", b'{"DeviceId": 17, "t": 6}', seq=6),  # a number, as JSON writes it
    ]
    route(tmp_path, [endpoint("raw", orderKey="$body.DeviceId"), endpoint("plain")], messages)
    keys = [(r["partitionKey"], r["bodyBase64"]) for r in sent(tmp_path, "raw")]
    assert [k for k, _ in keys] == ["leaf-a", "leaf-a", "leaf-b", "gateway-1", "gateway-1", "17"]
    # Grouped per key, each key's messages in arrival order.
    assert [r.get("body", {}).get("t") for r in sent(tmp_path, "raw")] == [1, 3, 2, 4, None, 6]
    assert {r["partitionKey"] for r in sent(tmp_path, "plain")} == {"gateway-1"}


def test_a_template_orders_twin_events_by_what_the_endpoint_asks(tmp_path: Path) -> None:
    def sensor(sensor_id: str, floor: str | None, seq: int) -> IngressMessage:
        data = sensor_data(sensor_id)
        if floor is not None:
            data["Properties"] = {"Floor": floor}
        return twin_event(data, seq=seq, properties={"Type": "SensorChange"})

    messages = [sensor("s1", "3", 1), sensor("s2", "4", 2), sensor("s3", "3", 3), sensor("s4", None, 4)]
    routes = [
        endpoint(
            "bus",
            type="ServiceBus",
            eventTypes=["SensorChange"],
            orderKey="{$subject}/floor-{$body.Properties.Floor}",
        )
    ]
    route(tmp_path, routes, messages)
    assert [(r["sessionId"], r["body"]["data"]["Id"]) for r in sent(tmp_path, "bus")] == [
        ("SensorChange/floor-3", "s1"),
        ("SensorChange/floor-3", "s3"),
        ("SensorChange/floor-4", "s2"),
        ("s4", "s4"),  # the template cannot be filled: the sensor id orders it
    ]


def test_the_body_is_parsed_once_for_a_filter_an_order_key_and_enrichments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_loader(monkeypatch)
    routes = [
        endpoint("hot", filter="$body.t > 20"),
        endpoint("keyed", orderKey="$body.DeviceId", enrichments={"reading": "$body.t"}),
        endpoint("plain"),
    ]
    route(tmp_path, routes, [telemetry("d", b'{"t": 30, "DeviceId": "x"}', seq=1)])
    assert calls == [b'{"t": 30, "DeviceId": "x"}']
    assert [r["partitionKey"] for r in sent(tmp_path, "keyed")] == ["x"]

    calls.clear()
    route(tmp_path, [endpoint("plain2"), endpoint("fixed", enrichments={"site": "p"})], [telemetry("d", b"{}", seq=2)])
    assert calls == []  # nothing read the body: never parsed


# --- enrichments -----------------------------------------------------------------------------------------


def test_telemetry_gets_fixed_and_event_values_and_an_enrichment_wins_a_clash(tmp_path: Path) -> None:
    enrichments = {
        "site": "plant-7",
        "units": "$properties.unit",
        "reading": "$body.t",
        "label": "{$body.DeviceId}@{$system['iothub-connection-device-id']}",
        "tier": 2,
        "flags": "$body.flags",
    }
    messages = [
        telemetry("gw", b'{"DeviceId": "leaf-a", "t": 30.5, "flags": ["x"]}', seq=1, Unit="C", site="old"),
        telemetry("gw", b'{"t": 10}', seq=2),
    ]
    route(tmp_path, [endpoint("raw", enrichments=enrichments)], messages)
    first, second = sent(tmp_path, "raw")
    assert first["properties"] == {
        "Unit": "C",
        "site": "plant-7",
        "units": "C",  # application property names are matched case-insensitively
        "reading": 30.5,
        "label": "leaf-a@gw",
        "tier": 2,
        "flags": '["x"]',  # an array travels as JSON text
    }
    # What the second message lacks is left out rather than set to something made up.
    assert second["properties"] == {"site": "plant-7", "reading": 10, "tier": 2}
    assert base64.b64decode(first["bodyBase64"]) == messages[0].body  # the body itself is untouched


def test_twin_events_get_properties_on_service_bus_and_extension_attributes_on_event_grid(tmp_path: Path) -> None:
    data = sensor_data("s1") | {"Properties": {"Building": "B7"}}
    message = twin_event(data, seq=1, properties={"Type": "SensorChange"})
    enrichments = {"building": "$body.Properties.Building", "origin": "{$type}:{$id}"}
    routes = [
        endpoint("bus", type="ServiceBus", eventTypes=["SensorChange"], enrichments=enrichments),
        endpoint(
            "cloud",
            type="EventGrid",
            eventTypes=["SensorChange"],
            path="t.eventgrid.azure.net",
            format="CloudEventSchemaV1_0",
            enrichments=enrichments,
        ),
        endpoint("grid", type="EventGrid", eventTypes=["SensorChange"], path="t2.eventgrid.azure.net"),
    ]
    route(tmp_path, routes, [message])
    [bus] = sent(tmp_path, "bus")
    event_id = bus["body"]["id"]
    assert bus["properties"] == {
        "EventType": "SensorChange",
        "Subject": "SensorChange",
        "building": "B7",
        "origin": f"SensorChange:{event_id}",
    }
    [cloud] = sent(tmp_path, "cloud")
    assert cloud["body"]["building"] == "B7" and cloud["body"]["origin"] == f"SensorChange:{event_id}"
    assert cloud["body"]["type"] == "SensorChange" and cloud["body"]["data"]["Id"] == "s1"
    [grid] = sent(tmp_path, "grid")
    assert "building" not in grid["body"]  # another endpoint's enrichments stay with it


# --- sent once -------------------------------------------------------------------------------------------


def test_an_event_matching_endpoints_of_one_destination_is_sent_there_once(tmp_path: Path) -> None:
    shared = {"connection": "HUB", "path": "shared"}
    routes = [
        endpoint("warm", **shared, filter="$body.t > 20"),
        endpoint("cool", **shared, filter="$body.t < 50"),
        endpoint("same", connection="hub", path="SHARED"),  # setting names and paths ignore case
        endpoint("rekeyed", **shared, orderKey="$body.DeviceId"),  # different messages: its own copy
        endpoint("elsewhere", connection="HUB", path="other"),
    ]
    messages = [telemetry("d", f'{{"t": {t}, "DeviceId": "x"}}'.encode(), seq=t) for t in (30, 10, 60)]
    router_report = Router(
        routes=StaticRoutes(parse_routes(routes)),
        senders=lambda _e: FileSender(tmp_path),
        dead_letters=FileDeadLetters(tmp_path),
    ).route(messages)

    def temperatures(name: str) -> list[int]:
        return [r["body"]["t"] for r in sent(tmp_path, name)]

    # 30 matches warm, cool and same: warm (first in the table) sends it; 10 only cool, 60 warm and same.
    assert temperatures("warm") == [30, 60]
    assert temperatures("cool") == [10]
    assert temperatures("same") == []
    assert temperatures("rekeyed") == [30, 10, 60]
    assert temperatures("elsewhere") == [30, 10, 60]
    assert router_report.delivered == {
        ("warm", EventType.DEVICE_MESSAGES): 2,
        ("cool", EventType.DEVICE_MESSAGES): 1,
        ("rekeyed", EventType.DEVICE_MESSAGES): 3,
        ("elsewhere", EventType.DEVICE_MESSAGES): 3,
    }


def test_a_disabled_endpoint_does_not_take_the_place_of_an_enabled_one() -> None:
    table = parse_routes(
        [endpoint("off", path="p", enabled=False), endpoint("on", path="p"), endpoint("again", path="p")]
    )
    assert table.same_as == {"again": "on"}


def test_partitioning_is_an_event_hub_choice_of_two_and_round_trips() -> None:
    [keyed] = parse_routes([endpoint("raw", partitioning="Service")]).endpoints
    assert keyed.partitioning == "service" and keyed.to_dict()["partitioning"] == "service"
    assert parse_row(to_entity(keyed)) == keyed
    [default] = parse_routes([endpoint("raw")]).endpoints
    assert default.partitioning == "router" and "partitioning" not in default.to_dict()
    assert "must be 'router' or 'service'" in problems_of(endpoint("raw", partitioning="hash"))
    bus = endpoint("bus", type="ServiceBus", eventTypes=["SensorChange"], partitioning="service")
    assert "applies to EventHub endpoints only" in problems_of(bus)
