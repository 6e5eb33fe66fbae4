"""`python -m routing deadletters ...` against a real Azurite (and, for `replay`, the local AMQP peer the
real SDKs send to): letters listed, filtered and shown; replay in order per key, deleting only what was
delivered, keeping what fails with why; a dry run that sends and deletes nothing; and clear errors
(exit 2) for missing or unreachable storage, a missing route table or a missing connection setting."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from typer.testing import CliRunner

from routing.cli.main import app
from routing.deadletters import UNCLASSIFIED_FOLDER, BlobDeadLetters
from routing.pipeline import Router, StaticRoutes
from routing.routes.table import parse_routes
from tests.azurite import Azurite
from tests.conftest import sensor_data, telemetry, twin_event
from tests.fakes import FakeSenders, FakeWire
from tests.peers.amqp import AmqpPeer

cli = CliRunner()
RAW_HUB, ALERTS = "raw-hub", "alerts"
ROUTES = [
    {"name": "Raw", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "RAW", "path": RAW_HUB},
    {"name": "bus", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "BUS", "path": ALERTS},
]
WHEN = datetime(2026, 11, 26, 9, tzinfo=UTC)
SETTINGS = ("DEADLETTER_STORAGE", "DEADLETTER_CONTAINER", "ROUTES_STORAGE", "ROUTES_TABLE", "RAW", "BUS")


class Letters:
    """A container of real dead letters: both endpoints refused every send."""

    def __init__(self, connection_string: str) -> None:
        self.connection_string = connection_string
        self.name = f"dl{uuid.uuid4().hex[:16]}"
        self.container = ContainerClient.from_connection_string(connection_string, self.name)
        messages = [
            telemetry("dev-0", b'{"n":0}', seq=0),
            telemetry("dev-1", b'{"n":1}', seq=1),
            telemetry("dev-0", b'{"n":2}', seq=2),
            twin_event(sensor_data("s-0"), seq=3, properties={"Type": "SensorChange"}),
            twin_event(None, seq=4, raw=b"not json"),
        ]
        wire = FakeWire(refused_settings={"RAW", "BUS"})
        store = BlobDeadLetters(self.container, clock=lambda: WHEN)
        Router(routes=StaticRoutes(parse_routes(ROUTES)), senders=FakeSenders(wire), dead_letters=store).route(messages)

    def __call__(self, *args: str, connect: bool = True) -> Any:
        target = ["--connection-string", self.connection_string, "--container", self.name] if connect else []
        return cli.invoke(app, ["deadletters", *args, *target])

    def json(self, *args: str) -> Any:
        result = self(*args, "-o", "json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def names(self) -> list[str]:
        return sorted(b.name for b in self.container.list_blobs())


@pytest.fixture
def letters(azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Letters:
    # No settings from the developer's shell, and no local.settings.json of theirs, may leak in.
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "routes.json").write_text(json.dumps(ROUTES))
    return Letters(azurite.connection_string)


@pytest.fixture(scope="module")
def amqp() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities={RAW_HUB, ALERTS}) as peer:
        yield peer


@pytest.fixture
def peer(amqp: AmqpPeer) -> Iterator[AmqpPeer]:
    amqp.clear()
    yield amqp
    amqp.clear()


# --- list and show ---------------------------------------------------------------------------------------


def test_list_shows_each_letter_with_endpoint_code_type_key_time_and_reason(letters: Letters) -> None:
    rows = letters.json("list")
    assert sorted((r["endpoint"] or "", r["code"], r["eventType"] or "", r["orderKey"] or "") for r in rows) == [
        ("", "not-json", "", ""),
        ("Raw", "delivery-failed", "DeviceMessages", "dev-0"),
        ("Raw", "delivery-failed", "DeviceMessages", "dev-1"),
        ("Raw", "held-behind", "DeviceMessages", "dev-0"),
        ("bus", "delivery-failed", "SensorChange", "s-0"),
    ]
    assert [r["name"] for r in rows] == letters.names()  # by endpoint folder, then hour
    assert all(r["time"] == "2026-11-26T09:00:00Z" and r["reason"] for r in rows)
    raw = next(r for r in rows if r["endpoint"] == "Raw")
    assert "unauthorized with RAW" in raw["reason"] and raw["attempts"] == 1

    table = letters("list")
    assert table.exit_code == 0, table.output
    for text in ("Raw", "bus", "held-behind", "not-json", "dev-1", "5 dead letters"):
        assert text in table.stdout


def test_list_filters_by_endpoint_case_insensitively_and_by_code(letters: Letters) -> None:
    assert {r["orderKey"] for r in letters.json("list", "--endpoint", "raw")} == {"dev-0", "dev-1"}
    assert [r["code"] for r in letters.json("list", "--endpoint", UNCLASSIFIED_FOLDER)] == ["not-json"]
    assert [r["endpoint"] for r in letters.json("list", "--code", "not-json")] == [None]
    assert letters.json("list", "--endpoint", "nowhere") == []


def test_show_prints_the_whole_record_and_an_unknown_name_is_a_clear_error(letters: Letters) -> None:
    [name] = [n for n in letters.names() if n.startswith("bus/")]
    result = letters("show", name)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["orderKey"] == "s-0" and record["original"]["sequenceNumber"] == 3
    assert record["attempts"] and record["envelope"]["bodyBase64"]

    missing = letters("show", "bus/2026/11/26/09/nope.json")
    assert missing.exit_code == 2
    assert "no dead letter 'bus/2026/11/26/09/nope.json'" in missing.stderr and "deadletters list" in missing.stderr


# --- where the storage comes from ------------------------------------------------------------------------


def test_the_storage_comes_from_the_environment_or_local_settings_json(
    letters: Letters, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nothing = letters("list", connect=False)
    assert nothing.exit_code == 2
    assert "no dead-letter storage" in nothing.stderr and "DEADLETTER_STORAGE" in nothing.stderr

    settings = {"Values": {"DEADLETTER_STORAGE": letters.connection_string, "DEADLETTER_CONTAINER": letters.name}}
    (tmp_path / "local.settings.json").write_text(json.dumps(settings))
    from_file = letters("list", "-o", "json", connect=False)
    assert from_file.exit_code == 0, from_file.output
    assert len(json.loads(from_file.stdout)) == 5

    # The environment comes before the file.
    monkeypatch.setenv("DEADLETTER_CONTAINER", "emptycontainer")
    assert letters("list", "-o", "json", connect=False).stdout.strip() == "[]"


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_store_is_one_clear_line_and_exit_code_2(letters: Letters) -> None:
    port = dead_port()
    nowhere = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )
    result = cli.invoke(app, ["deadletters", "list", "--connection-string", nowhere])
    assert result.exit_code == 2
    assert f"cannot reach container 'deadletters' at http://127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.output


# --- replay ----------------------------------------------------------------------------------------------


def test_a_dry_run_shows_what_would_go_where_in_order_and_changes_nothing(letters: Letters) -> None:
    before = letters.names()
    plan = letters.json("replay", "--dry-run", "--routes", "routes.json")
    sends = [(s["endpoint"], s["orderKey"], s["messageId"]) for s in plan["wouldSend"]]
    ids = {r["orderKey"]: [] for r in letters.json("list")}  # type: ignore[var-annotated]
    for name in before:
        record = json.loads(letters.container.download_blob(name).readall())
        if record["endpoint"]:
            ids[record["orderKey"]].append((record["original"]["sequenceNumber"], record["id"]))
    assert [(e, k) for e, k, _ in sends] == [("Raw", "dev-0"), ("Raw", "dev-0"), ("Raw", "dev-1"), ("bus", "s-0")]
    assert [m for _e, k, m in sends if k == "dev-0"] == [i for _seq, i in sorted(ids["dev-0"])]
    [kept] = plan["kept"]
    assert kept["name"].startswith(f"{UNCLASSIFIED_FOLDER}/") and "still cannot be classified" in kept["reason"]
    assert letters.names() == before


def test_a_broken_blob_is_kept_with_why_and_the_others_still_replay(letters: Letters) -> None:
    for name, content in [("Raw/2026/11/26/09/empty.json", b"{}"), ("Raw/2026/11/26/09/text.json", b"oops")]:
        letters.container.upload_blob(name, content)
    plan = letters.json("replay", "--dry-run", "--routes", "routes.json")
    assert len(plan["wouldSend"]) == 4
    kept = {k["name"]: k["reason"] for k in plan["kept"]}
    assert "unreadable" in kept["Raw/2026/11/26/09/empty.json"]
    assert "not JSON" in kept["Raw/2026/11/26/09/text.json"]


def test_the_routes_table_is_used_when_no_routes_file_is_given(
    letters: Letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = letters("replay")
    assert missing.exit_code == 2 and "no route table to replay with" in missing.stderr

    table = f"routes{uuid.uuid4().hex[:12]}"
    imported = cli.invoke(
        app, ["routes", "import", "routes.json", "--connection-string", letters.connection_string, "--table", table]
    )
    assert imported.exit_code == 0, imported.output
    monkeypatch.setenv("ROUTES_STORAGE", letters.connection_string)
    monkeypatch.setenv("ROUTES_TABLE", table)
    assert len(letters.json("replay", "--dry-run")["wouldSend"]) == 4


def test_a_missing_connection_setting_stops_the_replay_before_anything_is_sent(
    letters: Letters, peer: AmqpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = letters.names()
    monkeypatch.setenv("BUS", peer.connection_string())
    result = letters("replay", "--routes", "routes.json")
    assert result.exit_code == 2
    assert "endpoint 'Raw' needs app setting RAW" in result.stderr
    assert letters.names() == before and peer.received() == []


def test_replay_deletes_only_what_was_delivered_and_exits_1_with_why_for_the_rest(
    letters: Letters, peer: AmqpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer.refuse_auth(key="ROTATED")
    monkeypatch.setenv("RAW", peer.connection_string(key="ROTATED"))
    monkeypatch.setenv("BUS", peer.connection_string())

    only_bus = letters.json("replay", "--routes", "routes.json", "--endpoint", "BUS")
    assert (only_bus["delivered"], only_bus["failed"], only_bus["kept"]) == (1, 0, 0)
    assert [m.session_id for m in peer.received(ALERTS)] == ["s-0"]
    assert not [n for n in letters.names() if n.startswith("bus/")]

    refused = letters("replay", "--routes", "routes.json")
    assert refused.exit_code == 1, refused.output
    assert "0 delivered (and deleted), 3 failed, 1 kept" in refused.stdout
    assert "unauthorized with RAW" in refused.stdout and "still cannot be classified" in refused.stdout
    assert len([n for n in letters.names() if n.startswith("Raw/")]) == 3

    monkeypatch.setenv("RAW", peer.connection_string())
    done = letters.json("replay", "--routes", "routes.json")
    assert (done["delivered"], done["failed"], done["kept"]) == (3, 0, 1)
    received: dict[str | None, list[bytes]] = {}
    for message in peer.received(RAW_HUB):  # keys go over lanes at once: order holds per key
        received.setdefault(message.partition_key, []).append(message.body)
    assert received == {"dev-0": [b'{"n":0}', b'{"n":2}'], "dev-1": [b'{"n":1}']}
    assert [n.split("/")[0] for n in letters.names()] == [UNCLASSIFIED_FOLDER]
