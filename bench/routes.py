"""Route tables for the benchmark: `count` endpoints cycling through the five kinds a deployment has
(telemetry to an event hub, twin events to an event hub, alerts to Service Bus, Event Grid in both
schemas), so the fan-out per event grows with the table as it would in a real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from routing.routes.table import RouteTable, parse_routes

AMQP_SETTING = "BENCH_AMQP_CONNECTION"
GRID_SETTING = "BENCH_GRID_KEY"
# Event Grid endpoints need a topic; the offline stages never send, the end-to-end stage points at the receiver.
DEFAULT_GRID_URL = "http://127.0.0.1:9/api/events"

_TWIN = "Microsoft.DigitalTwins.Twin."
_RELATIONSHIP = "Microsoft.DigitalTwins.Relationship."
_V2_TWIN = [_TWIN + "Create", _TWIN + "Update", _TWIN + "Delete"]
_V2_RELATIONSHIP = [_RELATIONSHIP + "Create", _RELATIONSHIP + "Update", _RELATIONSHIP + "Delete"]
_CLASSIC = ["TopologyOperation", "SpaceChange", "SensorChange", "UdfCustom"]
_KINDS: tuple[tuple[str, list[str], str], ...] = (
    ("EventHub", ["DeviceMessages", "microsoft.iot.telemetry"], "EventGridSchema"),
    ("EventHub", [*_CLASSIC, *_V2_TWIN, *_V2_RELATIONSHIP], "EventGridSchema"),
    ("ServiceBus", ["SensorChange", "SpaceChange", _TWIN + "Update"], "EventGridSchema"),
    ("EventGrid", ["TopologyOperation", "UdfCustom", *_V2_TWIN, *_V2_RELATIONSHIP], "CloudEventSchemaV1_0"),
    ("EventGrid", [*_CLASSIC, _TWIN + "Update"], "EventGridSchema"),
)


def route_dicts(count: int, *, grid_url: str = DEFAULT_GRID_URL) -> list[dict[str, Any]]:
    routes = []
    for i in range(count):
        kind, event_types, envelope_format = _KINDS[i % len(_KINDS)]
        routes.append(
            {
                "name": f"{kind.lower()}-{i:04d}",
                "type": kind,
                "eventTypes": event_types,
                "connection": GRID_SETTING if kind == "EventGrid" else AMQP_SETTING,
                # Each its own destination (endpoints alike in destination get an event once).
                "path": f"{grid_url}?endpoint={i}" if kind == "EventGrid" else f"{kind.lower()}-{i:04d}",
                "format": envelope_format,
            }
        )
    return routes


def route_table(count: int, *, grid_url: str = DEFAULT_GRID_URL) -> RouteTable:
    return parse_routes(route_dicts(count, grid_url=grid_url), "benchmark routes")


def write_routes(path: Path, count: int, *, grid_url: str = DEFAULT_GRID_URL) -> Path:
    path.write_bytes(orjson.dumps(route_dicts(count, grid_url=grid_url), option=orjson.OPT_INDENT_2))
    return path
