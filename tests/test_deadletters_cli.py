"""`python -m routing deadletters ...` against a real Azurite (and, for `replay`, the local AMQP peer the
real SDKs send to): letters summarised, listed in replay order with what held letters wait for, filtered
and shown with their bodies decoded; replay in order per key, deleting only what was delivered, keeping
what fails with why and the try added to its attempts; a dry run that sends and deletes nothing;
delete and purge after asking; the folders that hold no letters left alone; a local run's folder
(`--dir`) with the same records and names; and clear one-line errors (exit 2) for a missing container,
missing or unreachable storage, refused credentials, a missing route table or a missing setting."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import pytest
from azure.storage.blob import AccountSasPermissions, ContainerClient, ResourceTypes, generate_account_sas
from typer.testing import CliRunner

from routing.cli.main import app
from routing.deadletters import (
    UNCLASSIFIED_FOLDER,
    BlobDeadLetters,
    FileDeadLetters,
    blob_name,
    public_url,
    record_name,
    redact,
)
from routing.errors import RouteTableError
from routing.model import DeadLetter, IngressMessage, message_id
from routing.pipeline import Router, StaticRoutes
from routing.routes.table import parse_routes
from tests.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
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


def fixture_messages() -> list[IngressMessage]:
    return [
        telemetry("dev-0", b'{"n":0}', seq=0),
        telemetry("dev-1", b'{"n":1}', seq=1),
        telemetry("dev-0", b'{"n":2}', seq=2),
        twin_event(sensor_data("s-0"), seq=3, properties={"Type": "SensorChange"}),
        twin_event(None, seq=4, raw=b"not json"),
    ]


def failing_wire(messages: list[IngressMessage]) -> FakeWire:
    """`Raw` refuses dev-1's message for good and fails dev-0's first one transiently, every try; `bus`
    refuses every send (its credentials)."""
    wire = FakeWire(refused_settings={"BUS"}, batch_size=1)
    wire.faults[f"Raw/{message_id(messages[0], 0)}"] = ["transient"] * 3
    wire.faults[f"Raw/{message_id(messages[1], 0)}"] = ["permanent"]
    return wire


class Letters:
    """A container of real dead letters: `Raw` refused dev-1's message for good and failed dev-0's first one
    transiently (no parking here, as in a local run: its second is held behind it); `bus` refused every send."""

    def __init__(self, connection_string: str) -> None:
        self.connection_string = connection_string
        self.name = f"dl{uuid.uuid4().hex[:16]}"
        self.container = ContainerClient.from_connection_string(connection_string, self.name)
        messages = fixture_messages()
        wire = failing_wire(messages)
        store = BlobDeadLetters(self.container, clock=lambda: WHEN)
        Router(routes=StaticRoutes(parse_routes(ROUTES)), senders=FakeSenders(wire), dead_letters=store).route(messages)

    def __call__(self, *args: str, connect: bool = True, input: str | None = None) -> Any:
        target = ["--connection-string", self.connection_string, "--container", self.name] if connect else []
        return cli.invoke(app, ["deadletters", *args, *target], input=input)

    def json(self, *args: str) -> Any:
        return self.json_exit(0, *args)

    def json_exit(self, code: int, *args: str) -> Any:
        result = self(*args, "-o", "json")
        assert result.exit_code == code, result.output
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


def test_list_json_gives_each_letter_with_endpoint_code_type_key_time_and_reason(letters: Letters) -> None:
    rows = letters.json("list")
    assert sorted((r["endpoint"] or "", r["code"], r["eventType"] or "", r["orderKey"] or "") for r in rows) == [
        ("", "not-json", "", ""),
        ("Raw", "delivery-failed", "DeviceMessages", "dev-0"),
        ("Raw", "delivery-failed", "DeviceMessages", "dev-1"),
        ("Raw", "held-behind", "DeviceMessages", "dev-0"),
        ("bus", "delivery-failed", "SensorChange", "s-0"),
    ]
    assert sorted(r["name"] for r in rows) == letters.names()
    assert all(r["time"] == "2026-11-26T09:00:00Z" and r["reason"] for r in rows)
    refused = next(r for r in rows if r["orderKey"] == "dev-1")
    assert "message rejected" in refused["reason"] and refused["attempts"] == 1
    busy = next(r for r in rows if r["orderKey"] == "dev-0" and r["code"] == "delivery-failed")
    assert "server busy" in busy["reason"] and busy["attempts"] == 3
    bus = next(r for r in rows if r["endpoint"] == "bus")
    assert "unauthorized with BUS" in bus["reason"] and bus["attempts"] == 1
    bus = next(r for r in rows if r["endpoint"] == "bus")
    assert bus["enqueuedTime"] == "2026-11-26T09:00:00Z"


def test_list_summarises_letters_per_endpoint_and_code_with_their_enqueued_hours(letters: Letters) -> None:
    table = letters("list")
    assert table.exit_code == 0, table.output
    lines = [" ".join(line.replace("│", " ").split()) for line in table.stdout.splitlines()]
    assert "Raw delivery-failed 2 undated undated" in lines  # telemetry of the tests has no enqueued time
    assert "Raw held-behind 1 undated undated" in lines
    assert "bus delivery-failed 1 2026-11-26T09Z 2026-11-26T09Z" in lines
    assert "5 dead letters; `deadletters list --all` lists each" in table.stdout
    assert not [n for n in letters.names() if n in table.stdout]  # a summary, not a row per letter


def test_list_all_gives_each_letter_whole_in_original_order_per_key_and_what_a_held_letter_waits_for(
    letters: Letters,
) -> None:
    rows = letters.json("list", "--all")
    dev0 = [r for r in rows if r["orderKey"] == "dev-0"]
    assert [r["code"] for r in dev0] == ["delivery-failed", "held-behind"]  # sequence 0, then 2
    assert dev0[1]["waitsFor"] == dev0[0]["name"] and "waitsFor" not in dev0[0]

    listing = letters("list", "--all")
    assert listing.exit_code == 0, listing.output
    lines = listing.stdout.splitlines()
    for name in letters.names():  # on one line, never folded: `show` and `delete` take it
        assert any(line.strip() == name for line in lines), listing.stdout
    assert f"    waits for {dev0[0]['name']}" in lines
    shown = [line.strip() for line in lines if line.strip() in letters.names()]
    assert shown.index(dev0[0]["name"]) == shown.index(dev0[1]["name"]) - 1


def test_list_since_and_limit_choose_letters_by_enqueued_time_and_count(
    letters: Letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert {r["endpoint"] for r in letters.json("list", "--since", "2026-11-26T09:00Z")} == {"bus", None}
    assert letters.json("list", "--since", "2026-11-26T09:00:01+00:00") == []
    assert letters.json("list", "--since", "1h") == []  # enqueued in 2026-11, long before the last hour
    assert len(letters.json("list", "--since", "3650d")) == 2  # undated letters have no time to compare
    assert len(letters.json("list", "--limit", "2")) == 2
    limited = letters("list", "--limit", "2")
    assert limited.exit_code == 0 and "2 dead letters of 5 (--limit)" in limited.stdout, limited.output
    bad = letters("list", "--since", "yesterday")
    assert bad.exit_code == 2 and "--since 'yesterday' is neither a time" in bad.stderr and "2h" in bad.stderr


def test_list_filters_by_endpoint_case_insensitively_and_by_code(letters: Letters) -> None:
    assert {r["orderKey"] for r in letters.json("list", "--endpoint", "raw")} == {"dev-0", "dev-1"}
    assert [r["code"] for r in letters.json("list", "--endpoint", UNCLASSIFIED_FOLDER)] == ["not-json"]
    assert [r["endpoint"] for r in letters.json("list", "--code", "not-json")] == [None]
    assert letters.json("list", "--endpoint", "nowhere") == []


def test_show_prints_the_record_with_its_bodies_decoded_and_json_gives_it_as_stored(letters: Letters) -> None:
    [name] = [n for n in letters.names() if n.startswith("bus/")]
    result = letters("show", name, "-o", "json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record == json.loads(letters.container.download_blob(name).readall())
    assert record["orderKey"] == "s-0" and record["original"]["sequenceNumber"] == 3
    assert record["attempts"] and record["envelope"]["bodyBase64"]

    shown = letters("show", name)
    assert shown.exit_code == 0, shown.output
    assert name in shown.stdout.splitlines()[0]
    assert "Original message (JSON" in shown.stdout and '"Id": "s-0"' in shown.stdout  # decoded, pretty
    assert "Envelope sent (JSON" in shown.stdout and '"eventType": "SensorChange"' in shown.stdout
    assert "unauthorized with BUS" in shown.stdout and record["original"]["bodyBase64"] not in shown.stdout

    [text] = [n for n in letters.names() if n.startswith(f"{UNCLASSIFIED_FOLDER}/")]
    assert "Original message (text, 8 bytes)\nnot json" in letters("show", text).stdout


def test_show_says_what_a_binary_body_is_and_keeps_control_characters_off_the_terminal(letters: Letters) -> None:
    store = BlobDeadLetters(letters.container, clock=lambda: WHEN)
    binary = DeadLetter(code="not-json", reason="binary", ingress=twin_event(None, seq=20, raw=b"\xff\x00\x01"))
    escape_sequence = DeadLetter(code="not-json", reason="ansi", ingress=twin_event(None, seq=21, raw=b"\x1b[2Jhi"))
    store.write([binary, escape_sequence])
    assert "3 bytes, not UTF-8 text (bodyBase64 in -o json)" in letters("show", blob_name(binary)).stdout
    shown = letters("show", blob_name(escape_sequence))
    assert "\x1b" not in shown.stdout and "\\x1b[2Jhi" in shown.stdout


def test_an_unknown_name_is_a_clear_error(letters: Letters) -> None:
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
    assert "container 'emptycontainer' does not exist" in letters("list", connect=False).stderr


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


# --- one letter never aborts a replay ----------------------------------------------------------------------


def deep_sensor_letter(letters: Letters, depth: int = 300) -> str:
    """A SensorChange whose data nests deeper than JSON can be written back (orjson writes 255 levels,
    reads 1,024): it classifies, but its envelope cannot be built. Kept as the pipeline keeps a message it
    cannot build (no endpoint: replay routes it again)."""
    data = sensor_data("s-deep")
    nested: Any = "bottom"
    for _ in range(depth):
        nested = [nested]
    data["Properties"] = {"deep": nested}
    message = twin_event(data, seq=10, properties={"Type": "SensorChange"})
    store = BlobDeadLetters(letters.container, clock=lambda: WHEN)
    letter = DeadLetter(code="internal-error", reason="internal error while building the envelope", ingress=message)
    store.write([letter])
    return blob_name(letter)


def test_a_letter_whose_message_cannot_be_built_is_kept_with_why_and_the_replay_goes_on(
    letters: Letters, peer: AmqpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = deep_sensor_letter(letters)
    plan = letters.json("replay", "--dry-run", "--routes", "routes.json")
    assert len(plan["wouldSend"]) == 4
    kept = {k["name"]: k["reason"] for k in plan["kept"]}
    # Classification now refuses such an event (too-deep), so replay keeps it with that reason; were it to
    # classify, building its message would fail and `_plan_one` would keep it the same way.
    assert "deeper than 253 levels" in kept[deep], kept

    def unbuildable(event: Any, endpoint: Any, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("cannot write this one")

    with monkeypatch.context() as patch:  # a letter that classifies but whose message cannot be built
        patch.setattr("routing.deliver.envelope.build", unbuildable)
        plan = letters.json("replay", "--dry-run", "--routes", "routes.json")
    assert not plan["wouldSend"] and plan["kept"]
    assert all("failed" in k["reason"] or "cannot be classified" in k["reason"] for k in plan["kept"]), plan
    assert any("building its message for" in k["reason"] for k in plan["kept"]), plan

    monkeypatch.setenv("RAW", peer.connection_string())
    monkeypatch.setenv("BUS", peer.connection_string())
    done = letters("replay", "--routes", "routes.json")
    assert done.exit_code == 0, done.output
    assert "4 delivered (and deleted), 0 failed, 2 kept" in done.stdout
    assert "Traceback" not in done.output
    assert deep in letters.names()


# --- no secret in any output, no name outside the container ------------------------------------------------


def sas_connection(blob_endpoint: str) -> tuple[str, str]:
    """A connection string with an account SAS (as the portal gives one), and its signature."""
    sas = generate_account_sas(
        ACCOUNT,
        ACCOUNT_KEY,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, write=True, delete=True, list=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    signature = parse_qs(sas)["sig"][0]
    return f"BlobEndpoint={blob_endpoint};SharedAccessSignature={sas}", signature


def assert_secret_free(result: Any, signature: str) -> None:
    # Without whitespace: Rich folds a long line, and a folded signature is still printed.
    output = "".join((result.stdout + result.stderr).split())
    for form in {signature, quote(signature, safe=""), quote(signature)}:
        assert form not in output, f"the SAS signature is printed:\n{output}"


def test_no_command_prints_the_sas_token(letters: Letters, peer: AmqpPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = letters.container.primary_endpoint.rsplit("/", 1)[0]
    connection, signature = sas_connection(endpoint)
    assert signature and signature not in connection.replace(signature, "")  # it is there to leak

    def run(*args: str, container: str = letters.name, conn: str = connection) -> Any:
        return cli.invoke(app, ["deadletters", *args, "--connection-string", conn, "--container", container])

    listed = run("list")
    assert listed.exit_code == 0 and "5 dead letters" in listed.stdout, listed.output
    assert f"container '{letters.name}' at {endpoint}" in " ".join(listed.stdout.split())
    assert_secret_free(listed, signature)
    assert_secret_free(run("show", "bus/2026/11/26/09/nope.json"), signature)
    assert_secret_free(run("list", container="nosuchcontainer"), signature)
    unreachable, unreachable_signature = sas_connection(f"http://127.0.0.1:{dead_port()}/{ACCOUNT}")
    refused = run("list", conn=unreachable)
    assert refused.exit_code == 2 and "cannot reach" in refused.stderr, refused.output
    assert_secret_free(refused, unreachable_signature)
    assert_secret_free(run("replay", "--dry-run", "--routes", "routes.json"), signature)
    monkeypatch.setenv("RAW", peer.connection_string())
    monkeypatch.setenv("BUS", peer.connection_string())
    replayed = run("replay", "--routes", "routes.json")
    assert replayed.exit_code == 0 and "Replayed from" in replayed.stdout, replayed.output
    assert_secret_free(replayed, signature)


@pytest.mark.parametrize(
    "name",
    [
        "../other/x.json",
        "bus/../../other/x.json",
        "/other/x.json",
        "..\\other\\x.json",
        "bus\\..\\..\\other\\x.json",
        "%2e%2e/other/x.json",
        "bus/%2E%2E%2F%2E%2E%2Fother%2Fx.json",
        "bus/./x.json",
        "bus//x.json",
        "bus/x.json?comp=list",
        "bus/x.json#frag",
        "bus/\x00x.json",
        "",
    ],
)
def test_show_refuses_a_name_that_could_leave_the_container(letters: Letters, name: str) -> None:
    other = letters.container._get_blob_service_client().get_container_client(f"other{uuid.uuid4().hex[:8]}")
    other.create_container()
    other.upload_blob("x.json", b'{"secret": "of another container"}')
    endpoint = letters.container.primary_endpoint.rsplit("/", 1)[0]
    connection, _signature = sas_connection(endpoint)
    result = cli.invoke(
        app, ["deadletters", "show", name, "--connection-string", connection, "--container", letters.name]
    )
    assert result.exit_code == 2, result.output
    assert "is not a dead letter's name" in result.stderr and "deadletters list" in result.stderr
    assert "of another container" not in result.output


@pytest.mark.parametrize("container", ["../other", "a/b", "UPPER", "x", "dl%2f..", "a--b"])
def test_a_container_name_azure_would_not_take_is_refused_before_any_request(letters: Letters, container: str) -> None:
    out = cli.invoke(
        app, ["deadletters", "list", "--connection-string", letters.connection_string, "--container", container]
    )
    assert out.exit_code == 2 and "is not a container name" in out.stderr, out.output


def test_secrets_are_redacted_from_sdk_messages_and_urls() -> None:
    # What urllib3 says when it gives up (azure-core 1.41 shortens it, older versions and other paths
    # do not): the request URL, query string and all.
    text = (
        "HTTPConnectionPool(host='acct.blob.core.windows.net', port=443): Max retries exceeded with url: "
        "/deadletters?restype=container&comp=list&sv=2022-11-02&ss=b&sig=s3cr3t%2Bsig%3D (Caused by ...); "
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5c2VjcmV0==;EndpointSuffix=core.windows.net"
    )
    cleaned = redact(text)
    assert "s3cr3t" not in cleaned and "a2V5c2VjcmV0" not in cleaned
    assert "sig=***" in cleaned and "AccountKey=***" in cleaned and "comp=list" in cleaned
    assert (
        public_url("https://acct.blob.core.windows.net/dl?sv=1&sig=s3cr3t") == "https://acct.blob.core.windows.net/dl"
    )
    assert public_url("https://user:pw@acct.blob.core.windows.net:443/") == "https://acct.blob.core.windows.net:443"


# --- a container that is not there, errors in one line -------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["show", "bus/2026/11/26/09/x.json"],
        ["replay", "--dry-run", "--routes", "routes.json"],
        ["delete", "bus/2026/11/26/09/x.json", "--yes"],
        ["purge", "--yes"],
    ],
)
def test_a_container_that_does_not_exist_is_an_error_naming_it(letters: Letters, command: list[str]) -> None:
    result = cli.invoke(
        app, ["deadletters", *command, "--connection-string", letters.connection_string, "--container", "nosuchdl"]
    )
    assert result.exit_code == 2, result.output
    endpoint = letters.container.primary_endpoint.rsplit("/", 1)[0]
    assert result.stderr == (
        f"error: container 'nosuchdl' does not exist at {endpoint} "
        "(nothing was ever dead-lettered there, or wrong --container)\n"
    )


def bad_key(connection_string: str) -> str:
    return connection_string.replace(ACCOUNT_KEY, "d3Jvbmcga2V5IG9mIHRoZSByaWdodCBsZW5ndGg=")


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["show", "bus/2026/11/26/09/x.json"],
        ["replay", "--dry-run", "--routes", "routes.json"],
        ["delete", "bus/2026/11/26/09/x.json", "--yes"],
        ["purge", "--yes"],
    ],
)
@pytest.mark.parametrize("failure", ["refused", "wrong key"])
def test_storage_errors_are_one_line_without_secrets(letters: Letters, command: list[str], failure: str) -> None:
    if failure == "refused":
        connection = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{dead_port()}/{ACCOUNT};"
        )
        expected = "cannot reach container"
    else:
        connection, expected = bad_key(letters.connection_string), "refused the credentials"
    result = cli.invoke(app, ["deadletters", *command, "--connection-string", connection, "--container", letters.name])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == "", result.output
    for secret in (ACCOUNT_KEY, "d3Jvbmcga2V5", "AccountKey", "sig="):
        assert secret not in result.output


# --- delete and purge --------------------------------------------------------------------------------------


def test_delete_asks_then_deletes_the_named_letters_and_refuses_without_a_terminal(
    letters: Letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    [bus] = [n for n in letters.names() if n.startswith("bus/")]
    no_terminal = letters("delete", bus)
    assert no_terminal.exit_code == 2 and "pass --yes" in no_terminal.stderr and bus in letters.names()

    unknown = letters("delete", bus, "bus/2026/11/26/09/nope.json", "--yes")
    assert unknown.exit_code == 2 and "'bus/2026/11/26/09/nope.json'" in unknown.stderr
    assert "nothing was deleted" in unknown.stderr and bus in letters.names()

    monkeypatch.setattr("routing.cli.routes.interactive", lambda: True)
    declined = letters("delete", bus, input="n\n")
    assert declined.exit_code == 1 and "Delete 1 dead letter from" in declined.output and bus in letters.names()
    accepted = letters("delete", bus, input="y\n")
    assert accepted.exit_code == 0 and "Deleted 1 dead letter from" in accepted.stdout, accepted.output
    assert bus not in letters.names() and len(letters.names()) == 4


@pytest.mark.parametrize("name", ["_pending/abc", "_parked/raw/2026/x.json", "../x.json"])
def test_delete_refuses_names_outside_the_letters(letters: Letters, name: str) -> None:
    letters.container.upload_blob(name.lstrip("./"), b"{}", overwrite=True)
    result = letters("delete", name, "--yes")
    assert result.exit_code == 2 and "is not a dead letter's name" in result.stderr, result.output


def test_purge_shows_what_goes_asks_and_deletes_only_the_filtered_letters(
    letters: Letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("routing.cli.routes.interactive", lambda: True)
    declined = letters("purge", "--endpoint", "raw", "--code", "held-behind", input="n\n")
    assert declined.exit_code == 1 and "Delete these 1 dead letter from" in declined.stderr
    assert "held-behind" in declined.stderr and len(letters.names()) == 5

    held = letters("purge", "--endpoint", "raw", "--code", "held-behind", "--yes", "-o", "json")
    assert held.exit_code == 0, held.output
    [gone] = json.loads(held.stdout)["deleted"]
    assert gone.startswith("Raw/") and gone not in letters.names() and len(letters.names()) == 4

    by_time = letters.json("purge", "--before", "2026-11-26T10:00Z", "--yes")  # the dated ones
    assert sorted(n.split("/")[0] for n in by_time["deleted"]) == [UNCLASSIFIED_FOLDER, "bus"]
    assert letters.json("purge", "--since", "1h", "--yes") == {"deleted": []}
    assert [n.split("/")[0] for n in letters.names()] == ["Raw", "Raw"]


def test_reserved_folders_are_never_listed_shown_replayed_or_purged(letters: Letters) -> None:
    record = json.loads(letters.container.download_blob(letters.names()[0]).readall())
    reserved = ["_pending/0123abcd", "_parked/Raw/2026/11/26/09/p.json", "_health/Raw.json", "_later/x/y.json"]
    for name in reserved:
        letters.container.upload_blob(name, json.dumps(record).encode())
    store = BlobDeadLetters(letters.container)
    assert not [n for n in store.names() if n.startswith("_") and not n.startswith(UNCLASSIFIED_FOLDER)]
    assert len(letters.json("list")) == 5
    assert len(letters.json("replay", "--dry-run", "--routes", "routes.json")["wouldSend"]) == 4
    assert letters("show", "_parked/Raw/2026/11/26/09/p.json").exit_code == 2
    assert len(letters.json("purge", "--yes")["deleted"]) == 5
    assert letters.names() == sorted(reserved)


def test_endpoints_cannot_take_the_names_of_the_reserved_folders() -> None:
    for name in ("_parked", "_health", "_pending", "_unclassified"):
        route = {**ROUTES[0], "name": name}
        with pytest.raises(RouteTableError, match="reserved"):
            parse_routes([route])


# --- a failed replay is an attempt -----------------------------------------------------------------------


def test_a_failed_replay_adds_its_attempt_to_the_letter(
    letters: Letters, peer: AmqpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer.refuse_auth(key="ROTATED")
    monkeypatch.setenv("RAW", peer.connection_string(key="ROTATED"))
    monkeypatch.setenv("BUS", peer.connection_string())
    before = {n: json.loads(letters.container.download_blob(n).readall()) for n in letters.names()}
    refused = letters.json_exit(1, "replay", "--routes", "routes.json")
    assert refused["failed"] == 3
    for item in refused["failedLetters"]:
        record = json.loads(letters.container.download_blob(item["name"]).readall())
        old = before[item["name"]]["attempts"]
        assert record["attempts"][: len(old)] == old and len(record["attempts"]) == len(old) + 1
        assert record["attempts"][-1]["error"] == item["reason"] and record["attempts"][-1]["time"].endswith("Z")
        assert {k: v for k, v in record.items() if k != "attempts"} == {
            k: v for k, v in before[item["name"]].items() if k != "attempts"
        }


# --- a local run's folder (--dir) --------------------------------------------------------------------------


def local_letters(out: Path) -> None:
    """The Letters fixture's messages and failures, into a local folder's deadletter.jsonl, plus a line of
    an events file that could not be read."""
    messages = fixture_messages()
    wire = failing_wire(messages)
    store = FileDeadLetters(out, clock=lambda: WHEN)
    Router(routes=StaticRoutes(parse_routes(ROUTES)), senders=FakeSenders(wire), dead_letters=store).route(messages)
    store.write([DeadLetter(code="bad-line", reason="line 9 is not JSON", ingress=None, raw_line="oops")])
    store.close()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_local_folders_letters_are_the_blob_stores_records_under_the_same_names(
    letters: Letters, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    local_letters(out)
    *records, raw = lines(out / "deadletter.jsonl")
    assert raw == {"code": "bad-line", "reason": "line 9 is not JSON", "endpoint": None, "raw": "oops"}
    blobs = {n: json.loads(letters.container.download_blob(n).readall()) for n in letters.names()}
    for blob in blobs.values():
        blob.pop("write")  # the Blob store's write id (pending markers); a local run writes once
        for attempt in blob["attempts"]:
            attempt.pop("time")
    for record in records:
        for attempt in record["attempts"]:
            attempt.pop("time")
    assert {record_name(r): r for r in records} == blobs

    listed = cli.invoke(app, ["deadletters", "list", "--dir", str(out), "-o", "json"])
    assert listed.exit_code == 0, listed.output
    assert sorted(r["name"] for r in json.loads(listed.stdout)) == letters.names()
    assert "line 6: an events-file line that could not be read (line 9 is not JSON)" in listed.stderr
    [bus] = [n for n in letters.names() if n.startswith("bus/")]
    shown = cli.invoke(app, ["deadletters", "show", bus, "--dir", str(out)])
    assert shown.exit_code == 0 and '"Id": "s-0"' in shown.stdout, shown.output


def test_replay_of_a_local_folder_delivers_into_its_endpoint_files_and_rewrites_its_letters(tmp_path: Path) -> None:
    out = tmp_path / "out"
    local_letters(out)
    before = lines(out / "deadletter.jsonl")
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps(ROUTES))
    result = cli.invoke(app, ["deadletters", "replay", "--dir", str(out), "--routes", str(routes), "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["delivered"], report["failed"]) == (4, 0)
    assert [(x["partitionKey"], x["body"]) for x in lines(out / "Raw.jsonl") if x["partitionKey"] == "dev-0"] == [
        ("dev-0", {"n": 0}),
        ("dev-0", {"n": 2}),
    ]
    assert [x["sessionId"] for x in lines(out / "bus.jsonl")] == ["s-0"]
    # What was delivered is gone; what could not be (still not JSON) and the unreadable events line stay.
    assert lines(out / "deadletter.jsonl") == [x for x in before if x.get("code") in ("not-json", "bad-line")]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # the rewrite left no temporary file


def test_delete_and_purge_of_a_local_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    local_letters(out)
    names = sorted(record_name(r) for r in lines(out / "deadletter.jsonl") if "raw" not in r)
    deleted = cli.invoke(app, ["deadletters", "delete", names[0], "--dir", str(out), "--yes"])
    assert deleted.exit_code == 0 and "Deleted 1 dead letter" in deleted.stdout, deleted.output
    assert sorted(record_name(r) for r in lines(out / "deadletter.jsonl") if "raw" not in r) == names[1:]
    purged = cli.invoke(app, ["deadletters", "purge", "--dir", str(out), "--yes", "-o", "json"])
    assert purged.exit_code == 0 and sorted(json.loads(purged.stdout)["deleted"]) == names[1:], purged.output
    assert [x["raw"] for x in lines(out / "deadletter.jsonl")] == ["oops"]

    nowhere = cli.invoke(app, ["deadletters", "list", "--dir", str(tmp_path / "nope")])
    assert nowhere.exit_code == 2 and f"--dir {tmp_path / 'nope'} does not exist" in nowhere.stderr
