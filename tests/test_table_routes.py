"""Routes in Table Storage, against a real Azurite: the entity schema, the cached store the functions
read (one query per refresh, never per event), a table with an invalid row not used (the last good one
kept), outages ridden out on the last good table, and names with quotes stored and found rather than
injected."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient

from routing import app as wiring
from routing.connections import Connection
from routing.deadletters import FileDeadLetters
from routing.deliver.senders import FileSender
from routing.errors import RoutingError, SettingsError
from routing.model import EventType, IngressMessage
from routing.pipeline import BatchReport, Router
from routing.routes.files import FileRoutes
from routing.routes.table import Endpoint, parse_endpoint
from routing.routes.tables import (
    PARTITION_KEY,
    EndpointNotFoundError,
    RouteRows,
    RoutesUnavailableError,
    TableRoutes,
    parse_row,
    table_client,
    to_entity,
)
from routing.settings import RouterSettings
from tests.azurite import Azurite, running_azurite
from tests.conftest import sensor_data, telemetry, twin_event

REFRESH = 30.0


def endpoint(name: str, *event_types: str, kind: str = "EventHub", **fields: Any) -> Endpoint:
    raw = {"name": name, "type": kind, "eventTypes": list(event_types), "connection": "HUB", "path": "p", **fields}
    parsed = parse_endpoint(raw, "test")
    assert isinstance(parsed, Endpoint), parsed
    return parsed


class Clock:
    """A monotonic clock the test moves by hand: refreshes are driven without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Storage:
    """A fresh routes table, with every HTTP request the store's client sends recorded."""

    connection_string: str
    name: str
    requests: list[tuple[str, str]] = field(default_factory=list)

    def client(self, *, counted: bool = True) -> TableClient:
        hook = {"raw_request_hook": self._record} if counted else {}
        # No SDK retries: a refused connection fails at once (the outage tests would otherwise back off).
        return table_client(Connection(setting="test", secret=self.connection_string), self.name, retry_total=0, **hook)

    def _record(self, request: Any) -> None:
        self.requests.append((request.http_request.method, request.http_request.url))

    def editor(self) -> RouteRows:
        """Another person at the CLI: writes through its own, uncounted client."""
        return RouteRows(self.client(counted=False))


def fresh(connection_string: str) -> Storage:
    storage = Storage(connection_string, f"routes{uuid.uuid4().hex[:16]}")
    storage.client(counted=False).create_table()
    return storage


@pytest.fixture
def storage(azurite: Azurite) -> Storage:
    return fresh(azurite.connection_string)


def router_for(store: TableRoutes, out: Path) -> Router:
    senders = FileSender(out)
    return Router(routes=store, senders=lambda _e: senders, dead_letters=FileDeadLetters(out))


def sensor_batch(count: int, *, start: int = 0) -> list[IngressMessage]:
    return [
        twin_event(sensor_data(f"sensor-{i % 7}"), seq=start + i, properties={"Type": "SensorChange"})
        for i in range(count)
    ]


def delivered_to(report: BatchReport) -> dict[str, int]:
    out: dict[str, int] = {}
    for (name, _event_type), count in report.delivered.items():
        out[name] = out.get(name, 0) + count
    return out


# --- the entity schema --------------------------------------------------------------------------------


def test_an_endpoint_is_one_row_keyed_by_its_lower_cased_name_with_the_display_name_kept(storage: Storage) -> None:
    hub = endpoint(
        "Sensor-Alerts",
        "SensorChange",
        "SpaceChange",
        kind="ServiceBus",
        secondaryConnection="HUB_2",
        format="CloudEventSchemaV1_0",
        enabled=False,
    )
    storage.editor().add(hub)
    [row] = storage.client(counted=False).query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION_KEY})
    assert dict(row) == {
        "PartitionKey": "endpoint",
        "RowKey": "sensor-alerts",
        "Name": "Sensor-Alerts",
        "Type": "ServiceBus",
        "EventTypes": "SensorChange,SpaceChange",
        "Connection": "HUB",
        "SecondaryConnection": "HUB_2",
        "Path": "p",
        "Format": "CloudEventSchemaV1_0",
        "Enabled": False,
        "Position": 0,  # the first row of the table's order
    }
    assert parse_row(row) == hub


def test_a_hand_written_row_with_spaces_in_its_event_types_still_parses() -> None:
    row = {
        "PartitionKey": "endpoint",
        "RowKey": "hub",
        "Name": "hub",
        "Type": "eventhub",
        "EventTypes": " SensorChange , DeviceMessage,",
        "Connection": "HUB",
        "Path": "p",
    }
    parsed = parse_row(row)
    assert isinstance(parsed, Endpoint)
    assert parsed.event_types == (EventType.SENSOR_CHANGE, EventType.DEVICE_MESSAGES)
    assert parsed.enabled


def test_a_row_whose_key_is_not_its_lower_cased_name_is_invalid() -> None:
    # Otherwise a row written around the CLI could give a second endpoint the same name.
    row = {**to_entity(endpoint("hub", "SensorChange")), "RowKey": "other"}
    problems = parse_row(row)
    assert isinstance(problems, list)
    assert "RowKey" in str(problems[0]) and "'hub'" in str(problems[0])


def test_a_misspelt_property_makes_the_row_invalid_rather_than_ignored() -> None:
    row = {**to_entity(endpoint("hub", "SensorChange")), "Enabeld": False}
    problems = parse_row(row)
    assert isinstance(problems, list)
    assert "enabeld" in str(problems[0]) and "did you mean 'enabled'" in str(problems[0])


# --- the store the functions read ---------------------------------------------------------------------


def test_an_invalid_row_written_around_the_cli_refuses_the_table_and_the_last_good_one_keeps_routing(
    storage: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage.editor().add(endpoint("alerts", "SensorChange"))
    storage.editor().add(endpoint("raw", "DeviceMessages"))
    clock = Clock()
    store = TableRoutes(storage.client(), refresh_seconds=REFRESH, clock=clock)
    router = router_for(store, tmp_path)
    assert delivered_to(router.route(sensor_batch(2))) == {"alerts": 2}
    # Written directly with the SDK, as someone in Storage Explorer might: a secret where a setting name
    # belongs, and an event type that does not exist.
    bad = {
        **to_entity(endpoint("leaky", "SensorChange")),
        "Connection": "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKey=abc",
        "EventTypes": "SensorChange,Weather",
    }
    storage.client(counted=False).create_entity(bad)

    clock.advance(REFRESH)
    with caplog.at_level(logging.WARNING, logger="routing.routes.tables"):
        report = router.route([*sensor_batch(3, start=2), telemetry("dev-1", b"{}", seq=99)])

    assert delivered_to(report) == {"alerts": 3, "raw": 1}  # the last good table, whole
    assert store.invalid_rows == 1
    assert {p.where for p in store.problems} == {
        "endpoint 'leaky', field 'connection'",
        "endpoint 'leaky', field 'eventTypes'",
    }
    assert store.last_error is not None and "row 'leaky'" in store.last_error
    messages = [r.getMessage() for r in caplog.records if r.name == "routing.routes.tables"]
    [row_record] = [m for m in messages if "row 'leaky' is invalid" in m]
    assert "Weather" in row_record and "NAME of an app setting" in row_record
    assert "SharedAccessKey" not in "\n".join(messages)  # the secret typed into the row is not logged
    assert any("last good table" in m for m in messages)

    # A cold start meets the same table: nothing to route with, so the invocation fails (the checkpoint holds).
    cold = TableRoutes(storage.client(), refresh_seconds=REFRESH, clock=Clock())
    with pytest.raises(RoutesUnavailableError, match=r"1 invalid row.*routes validate.*row 'leaky'"):
        router_for(cold, tmp_path / "cold").route(sensor_batch(1))
    assert not (tmp_path / "cold").exists()


def test_an_edit_is_picked_up_after_the_refresh_interval_with_one_query_per_refresh_and_none_per_event(
    storage: Storage, tmp_path: Path
) -> None:
    editor = storage.editor()
    editor.add(endpoint("alerts", "SensorChange"))
    clock = Clock()
    store = TableRoutes(storage.client(), refresh_seconds=REFRESH, clock=clock)
    router = router_for(store, tmp_path)

    first = router.route(sensor_batch(250))
    second = router.route(sensor_batch(250, start=250))
    assert delivered_to(first) == delivered_to(second) == {"alerts": 250}
    [(method, url)] = storage.requests  # 500 events, one request: the load
    assert method == "GET" and "PartitionKey%20eq%20%27endpoint%27" in url

    editor.add(endpoint("audit", "SensorChange"))
    editor.edit("alerts", lambda raw: {**raw, "enabled": False})
    clock.advance(REFRESH - 0.001)
    assert delivered_to(router.route(sensor_batch(100, start=500))) == {"alerts": 100}  # not due yet
    assert len(storage.requests) == 1

    clock.advance(0.001)
    assert delivered_to(router.route(sensor_batch(100, start=600))) == {"audit": 100}
    assert delivered_to(router.route(sensor_batch(100, start=700))) == {"audit": 100}
    assert len(storage.requests) == 2  # exactly one more query for the refresh, none for 200 events


def test_a_storage_outage_after_the_first_load_keeps_routing_on_the_last_good_table(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    with running_azurite(tmp_path / "azurite") as own:  # its own server, so it can be stopped
        storage = fresh(own.connection_string)
        storage.editor().add(endpoint("alerts", "SensorChange"))
        store = TableRoutes(storage.client(), refresh_seconds=REFRESH, clock=clock)
        router = router_for(store, tmp_path / "out")
        assert delivered_to(router.route(sensor_batch(5))) == {"alerts": 5}
    # Azurite is stopped now.
    clock.advance(REFRESH)
    with caplog.at_level(logging.ERROR, logger="routing.routes.tables"):
        assert delivered_to(router.route(sensor_batch(5, start=5))) == {"alerts": 5}
    assert store.last_error is not None
    assert len(storage.requests) == 2
    assert any("last good table" in r.getMessage() for r in caplog.records if r.name == "routing.routes.tables")

    # The next attempt waits for the next interval: an outage costs one failed read per interval.
    assert delivered_to(router.route(sensor_batch(5, start=10))) == {"alerts": 5}
    assert len(storage.requests) == 2
    clock.advance(REFRESH)
    router.route(sensor_batch(1, start=15))
    assert len(storage.requests) == 3


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_store_that_never_loaded_raises_so_the_batch_is_retried(tmp_path: Path) -> None:
    port = dead_port()
    nowhere = Storage(
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;",
        "routes",
    )
    store = TableRoutes(nowhere.client(), refresh_seconds=REFRESH, clock=Clock())
    with pytest.raises(RoutesUnavailableError) as raised:
        router_for(store, tmp_path).route(sensor_batch(1))
    assert isinstance(raised.value, RoutingError)
    assert "routes table 'routes'" in str(raised.value) and f"127.0.0.1:{port}" in str(raised.value)
    assert "ROUTES_STORAGE" in str(raised.value)
    assert not (tmp_path / "deadletter.jsonl").exists()  # nothing routed, nothing dead-lettered


def test_a_missing_table_raises_until_it_exists_then_routes_at_once(azurite: Azurite, tmp_path: Path) -> None:
    storage = Storage(azurite.connection_string, f"routes{uuid.uuid4().hex[:16]}")
    clock = Clock()
    store = TableRoutes(storage.client(), refresh_seconds=REFRESH, clock=clock)
    with pytest.raises(RoutesUnavailableError, match="does not exist"):
        store.current()
    storage.editor().add(endpoint("alerts", "SensorChange"))  # creates the table
    # No waiting for an interval: the function's retry comes back and must find the routes.
    assert delivered_to(router_for(store, tmp_path).route(sensor_batch(2))) == {"alerts": 2}


# --- names are values, never query text -----------------------------------------------------------------


def test_a_name_with_a_quote_is_stored_and_found_not_injected(storage: Storage, tmp_path: Path) -> None:
    editor = storage.editor()
    editor.add(endpoint("it's-mine", "SensorChange"))
    editor.add(endpoint("other", "SensorChange"))

    row = editor.get("IT'S-MINE")
    assert row.entity["Name"] == "it's-mine" and row.entity["RowKey"] == "it's-mine"
    editor.edit("it's-mine", lambda raw: {**raw, "path": "changed"})
    assert editor.get("it's-mine").entity["Path"] == "changed"
    # Were the name pasted into a filter or key unescaped, these would match rows or fail as bad requests.
    for attack in ("x' or RowKey ne 'x", "other' or 'a' eq 'a", "it''s-mine"):
        with pytest.raises(EndpointNotFoundError):
            editor.get(attack)

    store = TableRoutes(storage.client(), refresh_seconds=REFRESH, clock=Clock())
    assert {e.name for e in store.current().endpoints} == {"it's-mine", "other"}
    editor.delete("it's-mine")
    assert [e["RowKey"] for e in editor.entities()] == ["other"]


# --- the function app wiring ------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("ROUTES_STORAGE", "ROUTES_STORAGE__tableServiceUri", "ROUTES_TABLE", "ROUTES_REFRESH_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    wiring.reset()
    yield monkeypatch
    wiring.reset()


def test_the_function_app_routes_from_the_table_when_routes_storage_is_set(
    storage: Storage, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    storage.editor().add(endpoint("alerts", "SensorChange"))
    clean_env.setenv("ROUTES_STORAGE", storage.connection_string)
    clean_env.setenv("ROUTES_TABLE", storage.name)
    clean_env.setenv("ROUTER_OUTPUT_DIR", str(tmp_path))
    clean_env.delenv("ROUTES_FILE", raising=False)  # not needed with the table

    router = wiring.get_router()
    assert isinstance(router.routes, TableRoutes)
    assert router.routes.refresh_seconds == 30.0
    assert delivered_to(router.route(sensor_batch(4))) == {"alerts": 4}


def test_the_function_app_uses_a_managed_identity_from_table_service_uri(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("ROUTES_STORAGE__tableServiceUri", "https://acct.table.core.windows.net")
    clean_env.setenv("ROUTES_STORAGE__clientId", "00000000-0000-0000-0000-000000000001")
    clean_env.setenv("ROUTES_REFRESH_SECONDS", "5")
    clean_env.setenv("ROUTER_OUTPUT_DIR", str(tmp_path))
    settings = RouterSettings.from_env()
    assert settings.routes_storage and settings.routes_file is None and settings.routes_refresh_seconds == 5
    router = wiring.build_router(settings)
    assert isinstance(router.routes, TableRoutes)
    assert router.routes.client.url.startswith("https://acct.table.core.windows.net")
    assert router.routes.refresh_seconds == 5


def test_without_routes_storage_the_function_app_keeps_the_routes_file(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    env = {"ROUTES_FILE": "samples/routes.json", "ROUTER_OUTPUT_DIR": str(tmp_path), "ROUTES_STORAGE": " "}
    settings = RouterSettings.from_env(env, root=Path(__file__).resolve().parent.parent)
    assert not settings.routes_storage
    assert isinstance(wiring.build_router(settings).routes, FileRoutes)


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("ROUTES_REFRESH_SECONDS", "soon", "ROUTES_REFRESH_SECONDS must be a positive number"),
        ("ROUTES_REFRESH_SECONDS", "0", "ROUTES_REFRESH_SECONDS must be a positive number"),
        ("ROUTES_REFRESH_SECONDS", "nan", "ROUTES_REFRESH_SECONDS must be a positive number"),
        ("ROUTES_TABLE", "my-routes", "ROUTES_TABLE: 'my-routes' is not a valid table name"),
    ],
)
def test_bad_routes_settings_are_refused_naming_the_setting(name: str, value: str, words: str) -> None:
    env = {"ROUTES_STORAGE": "UseDevelopmentStorage=true", "ROUTER_OUTPUT_DIR": "out", name: value}
    with pytest.raises(SettingsError, match=words):
        RouterSettings.from_env(env)
