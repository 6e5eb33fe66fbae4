"""A routes table means the same in a file and in Table Storage: the table's order is the file's (the first
of several endpoints alike is the one that delivers), kept through edits, additions and imports, against a
real Azurite. And what a user writes for "every event type" (`*`, `all`), and a file with a BOM."""

from __future__ import annotations

import codecs
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from routing.connections import Connection
from routing.errors import RouteTableError
from routing.model import EndpointType, EventType
from routing.routes.files import load_routes_file
from routing.routes.table import parse_routes
from routing.routes.tables import PARTITION_KEY, RouteRows, table_client
from tests.azurite import Azurite


def hub(name: str, *event_types: str, path: str = "h") -> dict[str, Any]:
    return {"name": name, "type": "EventHub", "eventTypes": list(event_types) or ["SensorChange"],
            "connection": "HUB", "path": path}  # fmt: skip


@pytest.fixture
def rows(azurite: Azurite) -> RouteRows:
    name = f"routes{uuid.uuid4().hex[:10]}"
    return RouteRows(table_client(Connection(setting="test", secret=azurite.connection_string), name))


def names(rows: RouteRows) -> list[str]:
    return [e.name for e in rows.load().table.endpoints]


def test_a_table_keeps_the_files_order_not_the_alphabet(rows: RouteRows) -> None:
    # Two endpoints alike (one destination): the first in the table delivers, as in the file.
    file = parse_routes([hub("zeta"), hub("alpha"), hub("mid", path="other")])
    rows.import_table(file, replace=True)
    loaded = rows.load().table
    assert [e.name for e in loaded.endpoints] == ["zeta", "alpha", "mid"]
    assert [e.to_dict() for e in loaded.endpoints] == [e.to_dict() for e in file.endpoints]
    [first] = [e for e in loaded.for_type(EventType.SENSOR_CHANGE) if e.path == "h"][:1]
    assert first.name == "zeta"


def test_an_added_endpoint_goes_last_and_an_edit_keeps_its_place(rows: RouteRows) -> None:
    rows.import_table(parse_routes([hub("zeta"), hub("alpha")]), replace=True)
    [beta] = parse_routes([hub("beta")]).endpoints
    rows.add(beta)
    assert names(rows) == ["zeta", "alpha", "beta"]
    rows.edit("zeta", lambda raw: {**raw, "path": "elsewhere"})
    assert names(rows) == ["zeta", "alpha", "beta"]


def test_an_import_without_replace_puts_the_file_first_and_keeps_the_rest_in_their_order(rows: RouteRows) -> None:
    rows.import_table(parse_routes([hub("c"), hub("a"), hub("b")]), replace=True)
    result = rows.import_table(parse_routes([hub("b"), hub("new")]), replace=False)
    assert names(rows) == ["b", "new", "c", "a"]
    assert result.kept == ("c", "a")


def test_a_row_without_a_position_comes_after_those_with_one(rows: RouteRows) -> None:
    rows.import_table(parse_routes([hub("z"), hub("y")]), replace=True)
    # A row written around the CLI (Storage Explorer) has no Position.
    rows.client.create_entity({"PartitionKey": PARTITION_KEY, "RowKey": "a", "Name": "a", "Type": "EventHub",
                               "EventTypes": "SensorChange", "Connection": "HUB", "Path": "h"})  # fmt: skip
    assert names(rows) == ["z", "y", "a"]


@pytest.mark.parametrize("every", ["*", "all", "ALL"])
@pytest.mark.parametrize("kind", list(EndpointType))
def test_every_event_type_means_what_that_kind_of_endpoint_takes(every: str, kind: EndpointType) -> None:
    paths = {EndpointType.EVENT_GRID: "https://t.example.net", EndpointType.STORAGE: "cold"}
    raw = {**hub("x", every), "type": kind.value, "path": paths.get(kind, "h")}
    if kind is EndpointType.EVENT_GRID:
        raw["format"] = "CloudEventSchemaV1_0"
    [endpoint] = parse_routes([raw]).endpoints
    assert set(endpoint.event_types) == set(kind.accepts)
    assert list(endpoint.event_types) == [t for t in EventType if t in kind.accepts]  # in a stable order


def test_every_event_type_in_the_event_grid_schema_is_every_type_that_schema_carries() -> None:
    raw = {**hub("x", "*"), "type": "EventGrid", "path": "https://t.example.net"}
    [endpoint] = parse_routes([raw]).endpoints
    assert set(endpoint.event_types) == set(EndpointType.EVENT_GRID.accepts) - {EventType.TWIN_TELEMETRY}
    # Named, it is still refused with what to change.
    with pytest.raises(RouteTableError, match="set format CloudEventSchemaV1_0"):
        parse_routes([{**raw, "eventTypes": ["microsoft.iot.telemetry"]}])


def test_every_event_type_with_named_ones_lists_each_once_and_needs_a_known_endpoint_type() -> None:
    [endpoint] = parse_routes([hub("x", "SensorChange", "*")]).endpoints
    assert endpoint.event_types.count(EventType.SENSOR_CHANGE) == 1
    with pytest.raises(RouteTableError) as refused:
        parse_routes([{**hub("x", "*"), "type": "EventHubb"}])
    assert "'*' means every event type the endpoint's type takes" in str(refused.value)


def test_a_routes_file_with_a_bom_loads(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_bytes(codecs.BOM_UTF8 + json.dumps([hub("x")]).encode())
    assert [e.name for e in load_routes_file(path).endpoints] == ["x"]
