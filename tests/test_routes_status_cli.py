"""`python -m routing routes status` against a real Azurite: each endpoint of the route table and each
with a health record or parked messages, its state (healthy without a record), last success and error
(one line, no secrets), next probe, parked keys and messages (each once), the oldest one's age and the
time to live; endpoints gone from the table or disabled say so; `--check` fails on an open circuit or
anything parked; a missing container or storage is a one-line error (exit 2).

The outage is a real one: the Router with the real parking and breaker over the container, the endpoint
the in-project fake wire failing transiently (tests/test_parking.py does the same)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from typer.testing import CliRunner

from routing.cli import status as status_module
from routing.cli.main import app
from routing.deadletters import client_options
from routing.health import PROBE_INITIAL_SECONDS, BlobHealth, Breaker, Health, State
from routing.model import IngressMessage, message_id
from routing.parking import PARKED_FOLDER, BlobParking, Parking
from routing.pipeline import Router, StaticRoutes
from routing.routes.table import DEFAULT_TIME_TO_LIVE_MINUTES, parse_routes
from tests.azurite import Azurite
from tests.conftest import telemetry
from tests.fakes import FakeSenders, FakeWire, MemoryDeadLetters

cli = CliRunner()
WHEN = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
# `status` runs two hours after the outage began.
LATER = WHEN + timedelta(hours=2)
SETTINGS = ("DEADLETTER_STORAGE", "DEADLETTER_CONTAINER", "ROUTES_STORAGE", "ROUTES_TABLE")


def endpoint(name: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "X", "path": name, **more}


# What the router routed with: `gone` was in the table then, and is not in the table `status` reads.
ROUTED_WITH = [endpoint("hub", timeToLiveMinutes=180), endpoint("other"), endpoint("gone"), endpoint("off")]
NOW_TABLE = [endpoint("hub", timeToLiveMinutes=180), endpoint("other"), endpoint("off", enabled=False), endpoint("new")]


def batch(*pairs: tuple[str, int]) -> list[IngressMessage]:
    return [telemetry(device, f'{{"n":{seq}}}'.encode(), seq=seq) for device, seq in pairs]


def mid(device: str, seq: int) -> str:
    return message_id(telemetry(device, b"", seq=seq), 0)


class Outage:
    """A dead-letter container after a real outage: half an hour after a batch that every endpoint took,
    `hub`, `gone` and `off` failed dev-1's next message transiently every try, so it and dev-1's next
    one are parked for each and each circuit is open; dev-2 went on; `other` delivered everything (no
    record: healthy)."""

    def __init__(self, connection_string: str, container: ContainerClient) -> None:
        self.connection_string = connection_string
        self.container = container
        wire = FakeWire(mixed=True, batch_size=1)
        for name in ("hub", "gone", "off"):
            wire.faults[f"{name}/{mid('dev-1', 1)}"] = ["transient"] * 3  # outlasts the three tries
        self.clock = clock = [WHEN - timedelta(minutes=30)]
        self.router = router = Router(
            routes=StaticRoutes(parse_routes(ROUTED_WITH)),
            senders=FakeSenders(wire),
            dead_letters=MemoryDeadLetters(),
            parking=Parking(BlobParking(container), clock=lambda: clock[0]),
            breaker=Breaker(BlobHealth(container), clock=lambda: clock[0]),
        )
        assert not router.route(batch(("dev-1", 0))).parked
        clock[0] = WHEN
        report = router.route(batch(("dev-1", 1), ("dev-2", 2), ("dev-1", 3)))
        assert report.parked == {"hub": 2, "gone": 2, "off": 2}

    def __call__(self, *args: str, connect: bool = True) -> Any:
        target = ["--connection-string", self.connection_string, "--container", self.container.container_name]
        return cli.invoke(app, ["routes", "status", *args, *(target if connect else [])])

    def json(self, *args: str, exit_code: int = 0) -> list[dict[str, Any]]:
        result = self(*args, "-o", "json")
        assert result.exit_code == exit_code, result.output
        return list(json.loads(result.stdout))

    def by_endpoint(self, *args: str) -> dict[str, dict[str, Any]]:
        return {item["endpoint"]: item for item in self.json(*args)}


@pytest.fixture
def container(azurite: Azurite) -> Iterator[ContainerClient]:
    client = ContainerClient.from_connection_string(
        azurite.connection_string, f"status{uuid.uuid4().hex[:12]}", **client_options()
    )
    client.create_container()
    yield client
    client.delete_container()


@pytest.fixture
def outage(azurite: Azurite, container: ContainerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Outage:
    # No settings from the developer's shell, and no local.settings.json of theirs, may leak in.
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(status_module, "now", lambda: LATER)
    (tmp_path / "routes.json").write_text(json.dumps(NOW_TABLE))
    return Outage(azurite.connection_string, container)


def cells(lines: list[str], name: str) -> list[str]:
    """The cells of an endpoint's row: columns are two spaces apart or more, a cell never holds two."""
    (row,) = [line for line in lines if line.startswith(f"{name} ")]
    return re.split(r"\s{2,}", row.strip())


# --- what it shows -------------------------------------------------------------------------------------


def test_status_gives_each_endpoint_its_state_last_error_next_probe_and_what_is_parked(outage: Outage) -> None:
    items = outage.json("--routes", "routes.json")
    # The table's endpoints in table order, then those only the container knows.
    assert [i["endpoint"] for i in items] == ["hub", "other", "off", "new", "gone"]
    hub = items[0]
    assert hub["state"] == "unhealthy"
    assert hub["since"] == "2026-12-02T09:00:00Z"
    assert hub["lastSuccess"] == "2026-12-02T08:30:00Z"
    assert hub["lastError"] and "\n" not in hub["lastError"]
    assert hub["lastErrorAt"] == "2026-12-02T09:00:00Z"
    assert hub["nextProbe"] == (WHEN + timedelta(seconds=PROBE_INITIAL_SECONDS)).isoformat().replace("+00:00", "Z")
    # dev-1's two messages, behind one key.
    assert (hub["parkedKeys"], hub["parkedMessages"]) == (1, 2)
    assert hub["oldestParked"] == "2026-12-02T09:00:00Z"
    assert hub["oldestParkedSeconds"] == 2 * 3600
    assert hub["timeToLiveMinutes"] == 180  # the table's, not the default
    assert (hub["inTable"], hub["enabled"], hub["note"]) == (True, True, None)


def test_an_endpoint_without_a_record_is_healthy_with_nothing_parked(outage: Outage) -> None:
    other = outage.by_endpoint("--routes", "routes.json")["other"]
    assert other == {
        "endpoint": "other",
        "state": "healthy",
        "since": None,
        "lastSuccess": None,
        "lastError": None,
        "lastErrorAt": None,
        "nextProbe": None,
        "parkedKeys": 0,
        "parkedMessages": 0,
        "oldestParked": None,
        "oldestParkedSeconds": None,
        "timeToLiveMinutes": DEFAULT_TIME_TO_LIVE_MINUTES,
        "inTable": True,
        "enabled": True,
        "note": None,
    }


def test_an_endpoint_gone_from_the_table_or_disabled_says_what_its_parked_messages_wait_for(outage: Outage) -> None:
    items = outage.by_endpoint("--routes", "routes.json")
    gone, off = items["gone"], items["off"]
    assert (gone["inTable"], gone["enabled"], gone["parkedMessages"]) == (False, None, 2)
    assert gone["note"] == (
        "no longer in the route table: its 2 parked messages wait until their time to live, then become dead "
        "letters (expired)"
    )
    # The redelivery counts the default time to live for an endpoint no longer in the table.
    assert gone["timeToLiveMinutes"] == DEFAULT_TIME_TO_LIVE_MINUTES
    assert (off["inTable"], off["enabled"]) == (True, False)
    assert off["note"] == "disabled: its 2 parked messages wait until it is enabled, or their time to live"
    assert items["new"]["note"] is None

    text = outage("--routes", "routes.json").stdout
    assert "  gone: no longer in the route table: its 2 parked messages wait" in text
    assert "  off: disabled: its 2 parked messages wait until it is enabled" in text


def test_the_table_shows_states_and_ages_and_each_last_error_on_a_line_below(outage: Outage) -> None:
    result = outage("--routes", "routes.json")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == f"Endpoint health in container '{outage.container.container_name}' at "
        + (outage.container.url.rsplit("/", 1)[0])
    )
    # Endpoint, State, Since, Last success, Next probe, Parked keys, Parked messages, Oldest parked, TTL.
    assert cells(lines, "hub") == ["hub", "unhealthy", "2h", "2h 30m", "due", "1", "2", "2h", "3h"]
    assert cells(lines, "other") == ["other", "healthy", "-", "-", "-", "0", "0", "-", "1d"]
    assert "  hub: last error (2h ago): server busy" in lines
    # The table fits 80 columns; the address above it and the lines below it are read whole.
    assert all(len(line) <= 80 for line in lines[1 : lines.index("  hub: last error (2h ago): server busy")])


def test_the_last_error_is_one_line_without_secrets(outage: Outage) -> None:
    secret = "c2VjcmV0LXNpZ25hdHVyZQ"
    BlobHealth(outage.container).write(
        Health(
            endpoint="hub",
            state=State.UNHEALTHY,
            since=WHEN,
            last_error=f"ServiceRequestError: cannot reach https://x.blob.core.windows.net/c?sv=1&sig={secret}\n"
            "Traceback (most recent call last): ...",
            last_error_at=WHEN,
        )
    )
    hub = outage.by_endpoint("--routes", "routes.json")["hub"]
    assert hub["lastError"] == "ServiceRequestError: cannot reach https://x.blob.core.windows.net/c?sv=1&sig=***"
    text = outage("--routes", "routes.json").stdout
    assert secret not in text and "Traceback" not in text
    assert f"  hub: last error (2h ago): {hub['lastError']}\n" in text


def test_the_oldest_parked_is_the_first_message_parked_not_the_latest(outage: Outage) -> None:
    outage.clock[0] = WHEN + timedelta(hours=1)
    assert outage.router.route(batch(("dev-1", 4))).parked == {"hub": 1, "gone": 1, "off": 1}  # behind its key
    hub = outage.by_endpoint("--routes", "routes.json")["hub"]
    assert (hub["parkedKeys"], hub["parkedMessages"]) == (1, 3)
    assert (hub["oldestParked"], hub["oldestParkedSeconds"]) == ("2026-12-02T09:00:00Z", 2 * 3600)


def test_a_message_held_in_two_parked_blobs_counts_once(outage: Outage) -> None:
    # A batch the host retried after a gap writes its messages under another name: the redelivery sends
    # each once, and status counts each once.
    (name,) = [b.name for b in outage.container.list_blobs(name_starts_with=f"{PARKED_FOLDER}/") if "/hub/" in b.name]
    data = outage.container.download_blob(name).readall()
    outage.container.upload_blob(name.replace(".json", "-again.json"), data)
    hub = outage.by_endpoint("--routes", "routes.json")["hub"]
    assert (hub["parkedKeys"], hub["parkedMessages"]) == (1, 2)


def test_a_blob_that_is_not_a_parked_blob_is_named_and_the_rest_shown(outage: Outage) -> None:
    outage.container.upload_blob(f"{PARKED_FOLDER}/telemetry/0/hub/broken.json", b"{not json")
    result = outage("--routes", "routes.json", "-o", "json")
    assert result.exit_code == 0, result.output
    assert f"{PARKED_FOLDER}/telemetry/0/hub/broken.json: not a parked blob" in result.stderr
    assert {i["endpoint"]: i["parkedMessages"] for i in json.loads(result.stdout)}["hub"] == 2


# --- where the routes come from ------------------------------------------------------------------------


def test_without_a_route_table_only_the_endpoints_the_container_knows_are_shown_with_a_note(
    outage: Outage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dead letters' storage from the environment; no --connection-string, no ROUTES_STORAGE, no file.
    monkeypatch.setenv("DEADLETTER_STORAGE", outage.connection_string)
    result = outage("-o", "json", "--container", outage.container.container_name, connect=False)
    assert result.exit_code == 0, result.output
    items = {i["endpoint"]: i for i in json.loads(result.stdout)}
    assert sorted(items) == ["gone", "hub", "off"]  # `other` and `new` have no record and nothing parked
    assert all(i["timeToLiveMinutes"] is None and i["inTable"] is None and i["note"] is None for i in items.values())
    assert "note: no route table (pass --routes FILE, or set ROUTES_STORAGE" in result.stderr
    assert "only the endpoints with a health record or parked messages are shown" in result.stderr
    table = outage("--container", outage.container.container_name, connect=False).stdout.splitlines()
    assert cells(table, "hub")[-1] == "?"


def test_an_empty_or_missing_routes_table_is_not_taken_for_every_endpoint_gone(
    outage: Outage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTES_TABLE", "nosuchtable")
    result = outage("-o", "json")
    assert result.exit_code == 0, result.output
    assert all(i["inTable"] is None and i["note"] is None for i in json.loads(result.stdout))
    assert "note: routes table 'nosuchtable' at http://127.0.0.1:" in result.stderr
    assert "holds no routes (or does not exist; pass --table or --routes FILE)" in result.stderr


def test_the_routes_table_is_found_as_routes_list_finds_it(outage: Outage, monkeypatch: pytest.MonkeyPatch) -> None:
    table = f"routes{uuid.uuid4().hex[:12]}"
    imported = cli.invoke(
        app, ["routes", "import", "routes.json", "--connection-string", outage.connection_string, "--table", table]
    )
    assert imported.exit_code == 0, imported.output
    monkeypatch.setenv("ROUTES_TABLE", table)
    items = outage.by_endpoint()  # --connection-string: the one account holding both, as deployed
    # In the table's order (the file's, kept by `Position`), then the others.
    assert list(items) == [e["name"] for e in NOW_TABLE] + ["gone"]
    assert items["hub"]["timeToLiveMinutes"] == 180
    assert items["gone"]["inTable"] is False


# --- --check and errors --------------------------------------------------------------------------------


def test_check_exits_1_when_an_endpoint_is_unhealthy_or_dead_or_has_parked_messages(outage: Outage) -> None:
    assert outage("--routes", "routes.json").exit_code == 0  # without --check: 0 whatever the state
    result = outage("--routes", "routes.json", "--check")
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (
        "check failed: 'hub' is unhealthy and has 2 parked messages; 'off' is unhealthy and has 2 parked "
        "messages; 'gone' is unhealthy and has 2 parked messages"
    )
    assert outage.json("--routes", "routes.json", "--check", exit_code=1)[0]["endpoint"] == "hub"

    # Back (a probe got through) but not yet drained: its parked messages still fail the check.
    BlobHealth(outage.container).write(Health(endpoint="hub", state=State.DEGRADED, since=LATER, last_success=LATER))
    drained = outage("--routes", "routes.json", "--check")
    assert drained.exit_code == 1 and "check failed: 'hub' has 2 parked messages; 'off' is unhealthy" in drained.stderr


def test_check_passes_when_endpoints_are_healthy_or_degraded_with_nothing_parked(
    azurite: Azurite, container: ContainerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    BlobHealth(container).write(Health(endpoint="hub", state=State.DEGRADED, since=WHEN, last_success=WHEN))
    target = ["--connection-string", azurite.connection_string, "--container", container.container_name]
    result = cli.invoke(app, ["routes", "status", "--check", *target])
    assert result.exit_code == 0, result.output
    assert cells(result.stdout.splitlines(), "hub")[:2] == ["hub", "degraded"]

    BlobHealth(container).write(Health(endpoint="hub", state=State.DEAD, since=WHEN))
    dead = cli.invoke(app, ["routes", "status", "--check", *target])
    assert dead.exit_code == 1 and "check failed: 'hub' is dead" in dead.stderr


def test_check_is_documented_in_help() -> None:
    result = cli.invoke(app, ["routes", "status", "--help"])
    assert result.exit_code == 0
    words = " ".join(result.stdout.split())  # the help wraps at the test runner's 80 columns
    assert "--check" in words and "unhealthy or dead or has parked messages" in words


def test_a_missing_container_is_an_error_not_all_healthy(outage: Outage, azurite: Azurite) -> None:
    result = cli.invoke(
        app,
        ["routes", "status", "--routes", "routes.json", "--connection-string", azurite.connection_string,
         "--container", "nosuchcontainer"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.startswith("error: container 'nosuchcontainer' does not exist at ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_no_dead_letter_storage_is_an_error_naming_the_setting(outage: Outage) -> None:
    result = outage("--routes", "routes.json", connect=False)
    assert result.exit_code == 2
    assert "no dead-letter storage: pass --connection-string, set DEADLETTER_STORAGE" in result.stderr
    assert "AccountKey" not in result.output


def test_an_invalid_routes_file_is_an_error(outage: Outage) -> None:
    Path("bad.json").write_text(json.dumps([{"name": "hub"}]))
    result = outage("--routes", "bad.json")
    assert result.exit_code == 2 and "bad.json" in result.stderr and "type" in result.stderr
