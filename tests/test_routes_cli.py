"""`python -m routing routes ...` against a real Azurite: edits validated before they are written,
concurrent edits refused rather than lost, imports all or nothing, exports that import back, the
dry-run `test`, and the storage found from the option, the environment or local.settings.json."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient
from typer.testing import CliRunner

from routing.cli.main import app
from routing.ingest.classify import classify
from routing.ingest.ingress import parse_line
from routing.model import Event
from routing.routes.table import parse_routes
from routing.routes.tables import PARTITION_KEY, RouteRows, Row
from tests.azurite import Azurite

cli = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


class Routes:
    """The CLI pointed at one fresh table, plus direct SDK access for what the CLI would refuse."""

    def __init__(self, connection_string: str) -> None:
        self.connection_string = connection_string
        self.table = f"routes{uuid.uuid4().hex[:16]}"

    def __call__(self, *args: str, connect: bool = True, env: dict[str, str] | None = None) -> Any:
        target = ["--connection-string", self.connection_string, "--table", self.table] if connect else []
        return cli.invoke(app, ["routes", *args, *target], env=env)

    def json(self, *args: str, exit_code: int = 0) -> Any:
        result = self(*args, "-o", "json")
        assert result.exit_code == exit_code, result.output
        return json.loads(result.stdout)

    @property
    def client(self) -> TableClient:
        return TableClient.from_connection_string(self.connection_string, table_name=self.table)

    def rows(self) -> list[dict[str, Any]]:
        try:
            query = self.client.query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION_KEY})
            return [dict(e) for e in query]
        except ResourceNotFoundError:  # nothing was ever written: no table
            return []

    def someone_else_sets(self, name: str, **properties: Any) -> None:
        """A colleague's edit, straight through the SDK (as another CLI or Storage Explorer would)."""
        entity = self.client.get_entity(PARTITION_KEY, name.lower())
        self.client.update_entity({**entity, **properties})


@pytest.fixture
def routes(azurite: Azurite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Routes:
    # No ROUTES_* from the developer's shell, and no local.settings.json of theirs, may leak in.
    for name in ("ROUTES_STORAGE", "ROUTES_STORAGE__tableServiceUri", "ROUTES_TABLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return Routes(azurite.connection_string)


ALERTS = ("--type", "ServiceBus", "--event-types", "SensorChange,SpaceChange", "--connection", "BUS", "--path", "q")


def add_alerts(routes: Routes, name: str = "Sensor-Alerts") -> None:
    result = routes("add", name, *ALERTS)
    assert result.exit_code == 0, result.output


# --- edits ---------------------------------------------------------------------------------------------


def test_an_endpoint_is_added_listed_shown_updated_disabled_enabled_and_deleted(routes: Routes) -> None:
    added = routes.json("add", "Sensor-Alerts", *ALERTS, "--secondary-connection", "BUS_2")
    assert added == {
        "name": "Sensor-Alerts",
        "type": "ServiceBus",
        "eventTypes": ["SensorChange", "SpaceChange"],
        "connection": "BUS",
        "secondaryConnection": "BUS_2",
        "path": "q",
        "format": "EventGridSchema",
        "enabled": True,
    }
    assert routes.json("list") == [added]
    assert routes.json("show", "sensor-alerts") == added

    updated = routes.json(
        "update", "SENSOR-ALERTS", "--event-types", "TopologyOperation", "--event-types", "UdfCustom",
        "--secondary-connection", "",
    )  # fmt: skip
    assert updated["eventTypes"] == ["TopologyOperation", "UdfCustom"] and "secondaryConnection" not in updated
    assert updated["name"] == "Sensor-Alerts"  # the display name is kept whatever case was typed
    [row] = routes.rows()
    assert row["EventTypes"] == "TopologyOperation,UdfCustom" and "SecondaryConnection" not in row

    assert routes.json("disable", "sensor-alerts")["enabled"] is False
    assert routes.rows()[0]["Enabled"] is False
    assert routes.json("enable", "sensor-alerts")["enabled"] is True

    assert routes.json("delete", "Sensor-Alerts", "--yes") == {"deleted": "Sensor-Alerts"}
    assert routes.rows() == []
    shown = routes("show", "Sensor-Alerts")
    assert shown.exit_code == 2 and "no endpoint 'Sensor-Alerts'" in shown.output


def test_a_storage_endpoint_is_added_with_its_file_name_format_in_the_row_and_reset_to_the_default(
    routes: Routes,
) -> None:
    names = "{iothub}/{YYYY}/{MM}/{DD}/{HH}/{mm}/{partition}.json"
    archive = ("--type", "Storage", "--event-types", "DeviceMessages,SensorChange", "--connection", "ARCHIVE",
               "--path", "cold", "--file-name-format", names)  # fmt: skip
    added = routes.json("add", "archive", *archive)
    assert added["fileNameFormat"] == names
    [row] = routes.rows()
    assert row["FileNameFormat"] == added["fileNameFormat"] and row["Type"] == "Storage"
    assert "fileNameFormat" not in routes.json("update", "archive", "--file-name-format", "")  # IoT Hub's default
    refused = routes("update", "archive", "--file-name-format", "{iothub}/{YYYY}")
    assert refused.exit_code == 2 and "missing {partition} {MM} {DD} {HH} {mm}" in refused.output


def test_the_list_is_a_table_by_default(routes: Routes) -> None:
    add_alerts(routes)
    result = routes("list")
    assert result.exit_code == 0, result.output
    assert "Sensor-Alerts" in result.output and "ServiceBus" in result.output and "SensorChange" in result.output


def test_adding_an_existing_name_in_any_case_is_refused(routes: Routes) -> None:
    add_alerts(routes)
    result = routes("add", "SENSOR-alerts", *ALERTS)
    assert result.exit_code == 2
    assert "'SENSOR-alerts' already exists" in result.output
    assert [r["Name"] for r in routes.rows()] == ["Sensor-Alerts"]


def test_an_invalid_endpoint_is_refused_with_every_problem_and_nothing_written(routes: Routes) -> None:
    result = routes(
        "add", "leaky", "--type", "ServiceBus", "--event-types", "DeviceMessages,Weather",
        "--connection", "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKey=abc", "--path", "q",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "3 problems" in result.output
    assert "field 'connection'" in result.output and "NAME of an app setting" in result.output
    assert "'Weather'" in result.output and "ServiceBus endpoints cannot take DeviceMessages" in result.output
    assert "SharedAccessKey" not in routes.rows().__repr__()
    assert routes.rows() == []


def test_an_update_that_would_make_the_endpoint_invalid_is_refused_and_the_row_kept(routes: Routes) -> None:
    add_alerts(routes)
    before = routes.rows()
    result = routes("update", "sensor-alerts", "--type", "EventGrd")
    assert result.exit_code == 2
    assert "unknown endpoint type 'EventGrd' (did you mean 'EventGrid'?)" in result.output
    assert routes.rows() == before


def test_an_update_with_nothing_to_change_says_what_can_change(routes: Routes) -> None:
    add_alerts(routes)
    result = routes("update", "sensor-alerts")
    assert result.exit_code == 2 and "nothing to change" in result.output and "--event-types" in result.output


def test_an_update_over_someone_elses_edit_is_refused_not_lost(routes: Routes, monkeypatch: pytest.MonkeyPatch) -> None:
    add_alerts(routes)
    real_get = RouteRows.get

    def read_then_someone_else_edits(self: RouteRows, name: str) -> Row:
        row = real_get(self, name)  # this command has read the row and its ETag ...
        routes.someone_else_sets(name, Path="colleague")  # ... when a colleague changes it
        return row

    monkeypatch.setattr(RouteRows, "get", read_then_someone_else_edits)
    result = routes("update", "sensor-alerts", "--path", "mine")
    assert result.exit_code == 2
    assert "endpoint 'Sensor-Alerts' changed since you read it; run the command again" in result.output
    monkeypatch.undo()
    assert routes.rows()[0]["Path"] == "colleague"


def test_a_delete_over_someone_elses_edit_is_refused(routes: Routes, monkeypatch: pytest.MonkeyPatch) -> None:
    add_alerts(routes)
    real_get = RouteRows.get

    def read_then_someone_else_edits(self: RouteRows, name: str) -> Row:
        row = real_get(self, name)
        routes.someone_else_sets(name, Enabled=False)
        return row

    monkeypatch.setattr(RouteRows, "get", read_then_someone_else_edits)
    result = routes("delete", "sensor-alerts", "--yes")
    assert result.exit_code == 2 and "changed since you read it" in result.output
    monkeypatch.undo()
    assert routes.rows()[0]["Enabled"] is False


def test_a_name_with_a_quote_is_added_and_found_in_any_case(routes: Routes) -> None:
    add_alerts(routes, "it's-mine")
    assert routes.json("show", "IT'S-MINE")["name"] == "it's-mine"
    assert routes.json("disable", "it's-mine")["enabled"] is False
    assert routes("show", "it'").exit_code == 2


# --- validate, import, export -------------------------------------------------------------------------


def write_around_the_cli(routes: Routes) -> None:
    """A row someone wrote in Storage Explorer: an unknown type and a secret in Connection."""
    routes.client.create_entity(
        {
            "PartitionKey": PARTITION_KEY,
            "RowKey": "hand-made",
            "Name": "hand-made",
            "Type": "Kafka",
            "EventTypes": "SensorChange",
            "Connection": "Endpoint=sb://x/;SharedAccessKey=abc",
            "Path": "q",
        }
    )


def test_validate_reports_every_invalid_row_with_its_problems_and_exits_non_zero(routes: Routes) -> None:
    add_alerts(routes)
    write_around_the_cli(routes)
    result = routes("validate", "-o", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] == 1
    [row] = report["invalid"]
    assert row["row"] == "hand-made" and len(row["problems"]) == 2
    assert any("Kafka" in p for p in row["problems"]) and any("field 'connection'" in p for p in row["problems"])

    text = routes("validate")
    assert text.exit_code == 1 and "row 'hand-made'" in text.output and "Kafka" in text.output


def test_validate_passes_a_clean_table(routes: Routes) -> None:
    add_alerts(routes)
    result = routes("validate")
    assert result.exit_code == 0 and "1 valid endpoints, 0 invalid rows" in result.output


def test_list_and_show_name_the_invalid_rows_the_router_skips(routes: Routes) -> None:
    add_alerts(routes)
    write_around_the_cli(routes)
    listed = routes("list", "-o", "json")
    assert [e["name"] for e in json.loads(listed.stdout)] == ["Sensor-Alerts"]
    assert "1 invalid row (the router does not use the table" in listed.stderr and "'hand-made'" in listed.stderr
    shown = routes("show", "hand-made", "-o", "json")
    assert shown.exit_code == 0
    assert any("Kafka" in p for p in json.loads(shown.stdout)["problems"])


def routes_file(path: Path, endpoints: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(endpoints))
    return path


def hub(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "EventHub",
        "eventTypes": ["SensorChange"],
        "connection": "HUB",
        "path": "h",
        **fields,
    }


def test_import_is_all_or_nothing_when_the_file_has_a_problem(routes: Routes, tmp_path: Path) -> None:
    add_alerts(routes)
    before = routes.rows()
    bad = routes_file(tmp_path / "bad.json", [hub("a"), hub("b", eventTypes=["Weather"]), hub("A")])
    result = routes("import", str(bad))
    assert result.exit_code == 2
    assert "nothing imported" in result.output and "'Weather'" in result.output and "duplicate name" in result.output
    assert routes.rows() == before


def test_import_keeps_rows_absent_from_the_file_unless_replace(routes: Routes, tmp_path: Path) -> None:
    add_alerts(routes)
    path = routes_file(tmp_path / "routes.json", [hub("a"), hub("Sensor-Alerts", path="renamed")])
    assert routes.json("import", str(path)) == {
        "added": ["a"],
        "updated": ["Sensor-Alerts"],
        "deleted": [],
        "kept": [],
    }
    write_around_the_cli(routes)
    path = routes_file(tmp_path / "routes.json", [hub("b")])
    # In the table's order: the file's before (a, Sensor-Alerts), then the row written by hand, which has no place.
    assert routes.json("import", str(path))["kept"] == ["a", "sensor-alerts", "hand-made"]
    assert sorted(r["RowKey"] for r in routes.rows()) == ["a", "b", "hand-made", "sensor-alerts"]

    assert routes.json("import", str(path), "--replace", "--yes") == {
        "added": [],
        "updated": ["b"],
        "deleted": ["a", "sensor-alerts", "hand-made"],
        "kept": [],
    }
    assert [r["RowKey"] for r in routes.rows()] == ["b"]


def test_import_dry_run_shows_the_diff_and_writes_nothing(routes: Routes, tmp_path: Path) -> None:
    add_alerts(routes)
    assert routes("add", "same", "--type", "EventHub", "--event-types", "SensorChange", "--connection", "HUB",
                  "--path", "h").exit_code == 0  # fmt: skip
    write_around_the_cli(routes)
    before = routes.rows()
    path = routes_file(tmp_path / "routes.json", [hub("new"), hub("Sensor-Alerts", path="renamed"), hub("same")])
    keep = routes.json("import", str(path), "--dry-run")
    assert keep == {"added": ["new"], "changed": ["Sensor-Alerts"], "unchanged": ["same"], "deleted": [],
                    "kept": ["hand-made"]}  # fmt: skip
    replace = routes.json("import", str(path), "--dry-run", "--replace")
    assert replace["deleted"] == ["hand-made"] and replace["kept"] == []
    assert routes.rows() == before


def test_deleting_asks_first_and_refuses_without_a_terminal_unless_yes(
    routes: Routes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_alerts(routes)
    path = routes_file(tmp_path / "routes.json", [hub("other")])
    refused = routes("import", str(path), "--replace")
    assert refused.exit_code == 2 and "pass --yes" in refused.output
    refused = routes("delete", "sensor-alerts")
    assert refused.exit_code == 2 and "pass --yes" in refused.output
    assert [r["RowKey"] for r in routes.rows()] == ["sensor-alerts"]  # nothing written by either

    monkeypatch.setattr("routing.cli.routes.interactive", lambda: True)
    target = ["--connection-string", routes.connection_string, "--table", routes.table]
    declined = cli.invoke(app, ["routes", "delete", "sensor-alerts", *target], input="n\n")
    assert declined.exit_code == 1 and "Nothing changed" in declined.output
    assert [r["RowKey"] for r in routes.rows()] == ["sensor-alerts"]
    accepted = cli.invoke(app, ["routes", "delete", "sensor-alerts", *target], input="y\n")
    assert accepted.exit_code == 0 and routes.rows() == []


def test_import_of_more_than_one_transaction_writes_every_endpoint(routes: Routes, tmp_path: Path) -> None:
    many = [hub(f"hub-{i:03}") for i in range(250)]  # three transactions of at most 100
    result = routes("import", str(routes_file(tmp_path / "many.json", many)))
    assert result.exit_code == 0, result.output
    assert "250 added" in result.output
    assert len(routes.rows()) == 250


def test_export_writes_a_routes_file_that_imports_back_unchanged(routes: Routes, tmp_path: Path) -> None:
    source = [
        hub("a", secondaryConnection="HUB_2", format="CloudEventSchemaV1_0"),
        hub("B", enabled=False),
        hub("it's-mine"),
    ]
    assert routes("import", str(routes_file(tmp_path / "in.json", source))).exit_code == 0
    out = tmp_path / "out.json"
    result = routes("export", "--file", str(out))
    assert result.exit_code == 0, result.output
    assert parse_routes(json.loads(out.read_text())) == parse_routes(source)
    assert json.loads(routes("export").stdout) == json.loads(out.read_text())
    assert json.loads(routes("export", "-o", "json").stdout) == json.loads(out.read_text())


def test_export_shows_the_table_it_exports_with_o_table_and_still_writes_the_routes_file(
    routes: Routes, tmp_path: Path
) -> None:
    add_alerts(routes)
    shown = routes("export", "-o", "table")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout == routes("list").stdout  # the view `list` gives
    out = tmp_path / "out.json"
    both = routes("export", "--file", str(out), "-o", "table")
    assert both.stdout == shown.stdout and "Wrote 1 endpoints" in both.stderr
    assert [e["name"] for e in json.loads(out.read_text())] == ["Sensor-Alerts"]


def test_a_missing_import_file_is_named(routes: Routes, tmp_path: Path) -> None:
    result = routes("import", str(tmp_path / "nope.json"))
    assert result.exit_code == 2 and "nope.json" in result.output and "does not exist" in result.output


# --- test (dry run) -------------------------------------------------------------------------------------


def event_file(path: Path, line: dict[str, Any]) -> Path:
    path.write_text(json.dumps(line) + "\n")
    return path


SENSOR_LINE = {
    "body": {"Id": "sensor-9", "Type": "Sensor", "Value": "21.5", "MessageType": "SensorChange"},
    "properties": {"Type": "SensorChange"},
    "sequenceNumber": 42,
}


def test_a_dry_run_names_the_event_type_order_key_and_the_endpoints_it_would_reach(
    routes: Routes, tmp_path: Path
) -> None:
    add_alerts(routes)
    routes("add", "muted", *ALERTS, "--disabled")
    routes("add", "raw", "--type", "EventHub", "--event-types", "DeviceMessages", "--connection", "H", "--path", "r")
    [decision] = routes.json("test", "--event", str(event_file(tmp_path / "e.json", SENSOR_LINE)))
    assert decision["result"] == "routed"
    assert decision["eventType"] == "SensorChange" and decision["orderKey"] == "sensor-9"
    assert [e["name"] for e in decision["endpoints"]] == ["Sensor-Alerts"]
    assert decision["endpoints"][0]["why"] == "takes SensorChange"
    assert [(e["name"], e["why"]) for e in decision["notSent"]] == [("muted", "takes SensorChange but is disabled")]

    text = routes("test", "--event", str(tmp_path / "e.json"))
    assert text.exit_code == 0 and "order key sensor-9" in text.output and "Sensor-Alerts" in text.output


def test_a_dry_run_gives_the_rejection_reason_or_says_no_endpoint_takes_the_type(
    routes: Routes, tmp_path: Path
) -> None:
    add_alerts(routes)
    not_json = event_file(tmp_path / "bad.json", {"bodyText": "hello"})
    [decision] = routes.json("test", "--event", str(not_json), exit_code=1)
    assert decision["result"] == "rejected" and decision["code"] == "not-json" and decision["reason"]

    telemetry = event_file(
        tmp_path / "t.json", {"body": {"t": 1}, "systemProperties": {"iothub-connection-device-id": "d"}}
    )
    [decision] = routes.json("test", "--event", str(telemetry), exit_code=1)
    assert decision["result"] == "unrouted" and decision["orderKey"] == "d"
    assert decision["reason"] == "no enabled endpoint takes DeviceMessages"


def test_a_dry_run_takes_the_event_inline_and_shows_the_ids_the_router_assigns(routes: Routes, tmp_path: Path) -> None:
    add_alerts(routes)
    routes("add", "ce", *ALERTS[:-1], "q2", "--format", "CloudEventSchemaV1_0")
    body = json.dumps(SENSOR_LINE["body"])
    [inline] = routes.json("test", "--body", body, "--properties", '{"Type": "SensorChange"}')
    line = event_file(tmp_path / "e.json", {"bodyText": body, "properties": {"Type": "SensorChange"}})
    [from_file] = routes.json("test", "--event", str(line))
    assert inline == from_file
    # What the router would send: route the same line through the twins function's pipeline.
    [event] = list(
        classify(
            parse_line(
                json.dumps({"bodyText": body, "properties": {"Type": "SensorChange"}}), source="twins", line_number=1
            )
        )
    )
    assert isinstance(event, Event) and inline["messageId"] == event.message_id
    sent = {e["name"]: e for e in inline["endpoints"]}
    assert sent["Sensor-Alerts"]["messageId"] == event.message_id  # the default shape keeps the event's id
    assert sent["ce"]["messageId"] != event.message_id and "this endpoint's shape" in sent["ce"]["why"]


def test_a_dry_run_reads_a_routes_file_and_exits_1_when_unrouted(tmp_path: Path) -> None:
    routes_file = tmp_path / "routes.json"
    routes_file.write_text(
        json.dumps(
            [{"name": "raw", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "H", "path": "r"}]
        )
    )
    iot = ["--system-properties", '{"iothub-connection-device-id": "dev-1"}', "--routes", str(routes_file)]
    routed = cli.invoke(app, ["routes", "test", "--body", "21.5", *iot, "-o", "json"])
    assert routed.exit_code == 0, routed.output
    assert json.loads(routed.stdout)[0]["endpoints"][0]["name"] == "raw"
    routes_option = ["--routes", str(routes_file)]
    twin = cli.invoke(
        app,
        ["routes", "test", "--body", '{"Id": "s-1"}', "--properties", '{"Type": "SensorChange"}', *routes_option],
    )
    assert twin.exit_code == 1 and "no enabled endpoint takes SensorChange" in twin.output
    both = cli.invoke(app, ["routes", "test", "--body", "1", "--event", str(routes_file)])
    assert both.exit_code == 2 and "either as --event FILE" in both.output


def test_a_dry_run_refuses_an_event_that_is_not_one_ingress_line(routes: Routes, tmp_path: Path) -> None:
    two = tmp_path / "two.jsonl"
    two.write_text(json.dumps(SENSOR_LINE) + "\n" + json.dumps(SENSOR_LINE) + "\n")
    result = routes("test", "--event", str(two))
    assert result.exit_code == 2 and "must hold one ingress line" in result.output


# --- where the storage comes from ---------------------------------------------------------------------


def test_the_storage_comes_from_the_environment_without_the_option(
    routes: Routes, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_alerts(routes)
    monkeypatch.setenv("ROUTES_STORAGE", routes.connection_string)
    monkeypatch.setenv("ROUTES_TABLE", routes.table)
    result = cli.invoke(app, ["routes", "list", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert [e["name"] for e in json.loads(result.stdout)] == ["Sensor-Alerts"]


def test_the_storage_comes_from_local_settings_json_in_the_current_folder(routes: Routes, tmp_path: Path) -> None:
    add_alerts(routes)
    values = {"ROUTES_STORAGE": routes.connection_string, "ROUTES_TABLE": routes.table}
    (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": values}))
    result = cli.invoke(app, ["routes", "list", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert [e["name"] for e in json.loads(result.stdout)] == ["Sensor-Alerts"]


def test_local_settings_json_is_read_as_core_tools_reads_it(routes: Routes, tmp_path: Path) -> None:
    add_alerts(routes)
    text = (
        '\ufeff{\n  // Azurite, for the router\'s CLI\n  "IsEncrypted": false,\n  /* the routes */ "Values": {\n'
        f'    "ROUTES_STORAGE": "{routes.connection_string}", "ROUTES_TABLE": "{routes.table}"\n  }}\n}}\n'
    )
    (tmp_path / "local.settings.json").write_text(text, encoding="utf-8")
    result = cli.invoke(app, ["routes", "list", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert [e["name"] for e in json.loads(result.stdout)] == ["Sensor-Alerts"]

    (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": True, "Values": {"ROUTES_STORAGE": "x"}}))
    result = cli.invoke(app, ["routes", "list"])
    assert result.exit_code == 2 and "func settings decrypt" in result.output


def test_the_option_wins_over_the_environment_which_wins_over_local_settings(
    routes: Routes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_alerts(routes)
    dead = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;TableEndpoint=http://127.0.0.1:9/x;"
    )
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": {"ROUTES_STORAGE": dead}}))
    monkeypatch.setenv("ROUTES_STORAGE", routes.connection_string)
    assert cli.invoke(app, ["routes", "list", "--table", routes.table]).exit_code == 0
    monkeypatch.setenv("ROUTES_STORAGE", dead)
    assert routes("list").exit_code == 0  # --connection-string


def test_no_storage_anywhere_is_a_clear_error(routes: Routes) -> None:
    result = cli.invoke(app, ["routes", "list"])
    assert result.exit_code == 2
    assert "no routes storage" in result.output and "--connection-string" in result.output
    assert "ROUTES_STORAGE" in result.output and "local.settings.json" in result.output


def test_unreachable_storage_and_bad_table_names_are_clear_errors(routes: Routes, tmp_path: Path) -> None:
    dead = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;TableEndpoint=http://127.0.0.1:9/x;"
    )
    result = cli.invoke(app, ["routes", "list", "--connection-string", dead, "--table", "routes"])
    assert result.exit_code == 2 and "cannot reach routes table 'routes' at http://127.0.0.1:9/x" in result.output
    result = cli.invoke(
        app, ["routes", "list", "--connection-string", routes.connection_string, "--table", "my-routes"]
    )
    assert result.exit_code == 2 and "'my-routes' is not a valid table name" in result.output


@pytest.fixture
def sample_routes() -> Iterator[Path]:
    yield ROOT / "samples" / "routes.json"


def test_the_sample_routes_import_and_validate_clean(routes: Routes, sample_routes: Path) -> None:
    assert routes("import", str(sample_routes)).exit_code == 0
    assert routes("validate").exit_code == 0


def cells(lines: list[str], header: str, column: str) -> list[str]:
    """A column of a borderless table: each line's text under the header's word, up to the next column's."""
    start = header.index(column)
    end = min((header.index(c) for c in re.findall(r"(?<=  )\S+", header) if header.index(c) > start), default=None)
    return [line[start:end].rstrip() for line in lines]


def test_the_list_shows_filters_and_breaks_no_event_type_inside_a_word_at_80_columns(
    routes: Routes, sample_routes: Path
) -> None:
    assert routes("import", str(sample_routes)).exit_code == 0
    result = routes("list", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    table = lines[: next(i for i, line in enumerate(lines) if line.startswith("  filter of"))]
    assert all(len(line) <= 80 for line in table), "wider than the terminal"
    [header] = [line for line in table if line.startswith("Name ")]
    rows = table[table.index(header) + 2 :]
    endpoints = json.loads(sample_routes.read_text())

    # Each type whole on its line, or broken after a dot and continued, indented, on the next.
    shown: list[str] = []
    for piece in cells(rows, header, "Event types"):
        if piece.startswith("  "):
            assert shown[-1].endswith("."), f"{shown[-1]!r} broken inside a word"
            shown[-1] += piece.strip()
        elif piece:
            shown.append(piece)
    expected = parse_routes(endpoints).endpoints
    assert shown == [t.value for e in expected for t in e.event_types]

    names = [n for n in cells(rows, header, "Name") if n]
    filters = [f for n, f in zip(cells(rows, header, "Name"), cells(rows, header, "Filter"), strict=True) if n]
    assert dict(zip(names, filters, strict=True)) == {
        e["name"]: ("iothub" if e.get("filterLanguage") == "iothub" else "yes") if "filter" in e else ""
        for e in endpoints
    }
    # Below the table, each filter whole on a line.
    assert (
        "  filter of 'telemetry-hub': NOT STARTS_WITH($system['iothub-connection-device-id'], 'door-sensor-')" in lines
    )
    assert (
        "  filter of 'thermostat-01-hot' (IoT Hub routing query): "
        "$connectionDeviceId = 'thermostat-01' AND IS_DEFINED(CreationTimeUtc)"
    ) in lines
    assert len(routes.json("list")) == len(json.loads(sample_routes.read_text()))


# --- order keys, enrichments, one destination ------------------------------------------------------------

RAW = ("--type", "EventHub", "--event-types", "DeviceMessages", "--connection", "H", "--path", "r")


def test_order_key_and_enrichments_are_set_merged_and_removed_through_the_cli(routes: Routes) -> None:
    added = routes(
        "add", "raw", *RAW, "--order-key", "$body.DeviceId", "--enrich", "site=plant-7", "--enrich", "reading=$body.t"
    )
    assert added.exit_code == 0, added.output
    [row] = routes.rows()
    assert row["OrderKey"] == "$body.DeviceId"
    assert json.loads(row["Enrichments"]) == {"site": "plant-7", "reading": "$body.t"}

    changed = routes("update", "raw", "--enrich", "site=", "--enrich", "floor={$body.Floor}", "--order-key", "")
    assert changed.exit_code == 0, changed.output
    [row] = routes.rows()
    assert "OrderKey" not in row or row["OrderKey"] is None
    assert json.loads(row["Enrichments"]) == {"reading": "$body.t", "floor": "{$body.Floor}"}
    assert routes.json("show", "raw")["enrichments"] == {"reading": "$body.t", "floor": "{$body.Floor}"}


def test_a_bad_order_key_or_enrichment_is_refused_with_its_position_and_nothing_is_written(routes: Routes) -> None:
    bad_key = routes("add", "raw", *RAW, "--order-key", "$bdy.DeviceId")
    assert bad_key.exit_code != 0 and "orderKey" in bad_key.output and "position 1" in bad_key.output
    bad_pair = routes("add", "raw", *RAW, "--enrich", "site")
    assert bad_pair.exit_code != 0 and "NAME=VALUE" in bad_pair.output
    bad_template = routes("add", "raw", *RAW, "--enrich", "floor={$body.Floor")
    assert bad_template.exit_code != 0 and "never closed" in bad_template.output
    assert routes.rows() == []


def test_a_dry_run_shows_the_order_key_the_enrichments_and_what_one_destination_takes_once(
    routes: Routes, tmp_path: Path
) -> None:
    twins = ("--type", "EventHub", "--event-types", "SensorChange", "--connection", "H", "--path", "twins")
    routes("add", "first", *twins, "--order-key", "{$subject}/{$body.Type}", "--enrich", "kind=$body.Type")
    routes("add", "second", *twins, "--order-key", "{$subject}/{$body.Type}", "--enrich", "kind=$body.Type")
    [decision] = routes.json("test", "--event", str(event_file(tmp_path / "e.json", SENSOR_LINE)))
    [first] = decision["endpoints"]
    assert first["name"] == "first" and first["orderKey"] == "SensorChange/Sensor"
    assert first["enrichments"] == {"kind": "Sensor"}
    [second] = decision["notSent"]
    assert second["name"] == "second" and "'first' is the same destination: sent there once" in second["why"]


def test_show_prints_enrichments_as_json(routes: Routes) -> None:
    routes("add", "raw", *RAW, "--enrich", "site=plant-7", "--order-key", "$body.DeviceId")
    shown = routes("show", "raw")
    assert shown.exit_code == 0, shown.output
    assert '{"site":"plant-7"}' in shown.output.replace(" ", "").replace("\n", "")
    assert "$body.DeviceId" in shown.output


def test_update_repairs_a_row_with_a_property_the_router_does_not_know(routes: Routes) -> None:
    add_alerts(routes)
    routes.someone_else_sets("Sensor-Alerts", Enabeld=False)  # misspelt in Storage Explorer: the row is invalid
    refused = routes("update", "Sensor-Alerts", "--path", "q2")
    assert refused.exit_code == 2
    assert "unknown field (did you mean 'enabled'?)" in refused.output
    assert "routing routes update Sensor-Alerts --remove-property enabeld" in refused.output
    repaired = routes.json("update", "Sensor-Alerts", "--remove-property", "Enabeld", "--disabled")
    assert repaired["enabled"] is False
    [row] = routes.rows()
    assert "Enabeld" not in row and row["Enabled"] is False
    assert routes("validate").exit_code == 0
    # Only properties the router does not know, and only ones the row has.
    known = routes("update", "Sensor-Alerts", "--remove-property", "Path")
    assert known.exit_code == 2 and "a field the router knows" in known.output
    absent = routes("update", "Sensor-Alerts", "--remove-property", "Nope")
    assert absent.exit_code == 2 and "has no property nope to remove" in absent.output


def test_add_warns_when_a_connection_setting_is_defined_nowhere_here(
    routes: Routes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BUS", raising=False)
    result = routes("add", "a", *ALERTS)
    assert result.exit_code == 0
    assert "app setting BUS is not defined in this shell or in local.settings.json" in result.stderr
    assert "BUS__fullyQualifiedNamespace" in result.stderr
    # Defined in local.settings.json (as Core Tools reads it), or as identity settings: no warning.
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": {"BUS__fullyQualifiedNamespace": "x"}}))
    assert "not defined" not in routes("add", "b", *ALERTS).stderr


def test_import_and_validate_warn_once_per_connection_setting_defined_nowhere_here(
    routes: Routes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BUS", raising=False)
    file = tmp_path / "routes.json"
    both = [
        {"name": "a", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "BUS", "path": "q"},
        {"name": "b", "type": "ServiceBus", "eventTypes": ["SpaceChange"], "connection": "BUS", "path": "q"},
    ]
    file.write_text(json.dumps(both))
    for result in (routes("import", str(file)), routes("validate")):
        assert result.exit_code == 0, result.output
        [line] = [line for line in result.stderr.splitlines() if "not defined" in line]
        assert line.startswith("warning: endpoints 'a', 'b': app setting BUS is not defined in this shell"), line
    monkeypatch.setenv("BUS", "Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=v")
    assert "not defined" not in routes("validate").stderr
