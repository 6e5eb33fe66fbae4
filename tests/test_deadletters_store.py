"""The Blob dead-letter store against a real Azurite, behind a loopback proxy that can refuse, black-hole
or reset (tests/blackhole.py): a store that cannot keep letters fails the write within its budget
(seconds, not the SDK's minutes) with an error naming the store; a container deleted under a running
process is made again; and a letter a failed try left for a message the host's retry then delivered does
not survive (deleted by the retry in the same process, or kept out of a replay by its write's marker)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from typer.testing import CliRunner

from routing.cli.main import app as cli_app
from routing.deadletters import (
    PENDING_FOLDER,
    WRITE_FAILURE_BUDGET_SECONDS,
    BlobDeadLetters,
    DeadLetterStoreError,
)
from routing.model import DeadLetter, IngressMessage
from routing.pipeline import Router, StaticRoutes
from routing.routes.table import parse_routes
from tests.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from tests.blackhole import Mode, Proxy, proxy
from tests.conftest import telemetry
from tests.fakes import FakeSenders, FakeWire

# The budget is a few tens of seconds at worst; the SDK's defaults took 84 s (refused) to 165 s
# (black-holed) for the same write. A loaded machine may be slow, so the margin is wide; the times
# themselves are measured, not asserted, elsewhere.
LIMIT_SECONDS = WRITE_FAILURE_BUDGET_SECONDS + 10
ROUTES = [{"name": "raw", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "RAW", "path": "hub"}]
cli = CliRunner()


def unclassified(count: int, *, start: int = 0) -> list[DeadLetter]:
    return [
        DeadLetter(
            code="not-json",
            reason="not JSON",
            ingress=IngressMessage(
                body=b"\x00" * 200,
                properties={},
                system_properties={},
                source="twins",
                partition="1",
                sequence_number=seq,
                enqueued_time="2026-11-26T09:00:00Z",
            ),
        )
        for seq in range(start, start + count)
    ]


def via(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )


@pytest.fixture
def front(azurite: Azurite) -> Iterator[Proxy]:
    """A proxy in front of the session's Azurite Blob service."""
    port = int(azurite.blob_endpoint.rsplit(":", 1)[1].split("/", 1)[0])
    with proxy(port) as p:
        yield p


@pytest.fixture
def name() -> str:
    return f"dl{uuid.uuid4().hex[:16]}"


def store_via(front: Proxy, container: str) -> BlobDeadLetters:
    """The store as the functions build it (the production client options), through the proxy."""
    return BlobDeadLetters.from_settings("DEADLETTER_STORAGE", container, {"DEADLETTER_STORAGE": via(front.port)})


def blobs(azurite: Azurite, container: str) -> list[str]:
    direct = ContainerClient.from_connection_string(azurite.connection_string, container)
    return sorted(b.name for b in direct.list_blobs())


def switch_after(front: Proxy, azurite: Azurite, container: str, letters: int, mode: Mode) -> threading.Thread:
    """Switch the proxy to `mode` once `letters` blobs are in the container (seen directly, not via it)."""

    def watch() -> None:
        deadline = time.monotonic() + 30
        while len(blobs(azurite, container)) < letters and time.monotonic() < deadline:
            time.sleep(0.005)
        front.set(mode)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def fails_within_budget(store: BlobDeadLetters, letters: list[DeadLetter]) -> DeadLetterStoreError:
    started = time.monotonic()
    with pytest.raises(DeadLetterStoreError) as caught:
        store.write(letters)
    elapsed = time.monotonic() - started
    assert elapsed < LIMIT_SECONDS, f"the write gave up after {elapsed:.0f} s, over its budget"
    return caught.value


@pytest.mark.parametrize("mode", [Mode.REFUSE, Mode.BLACK_HOLE])
def test_a_store_that_refuses_or_never_answers_fails_the_write_within_its_budget(
    front: Proxy, name: str, mode: Mode
) -> None:
    store = store_via(front, name)
    front.set(mode)
    error = fails_within_budget(store, unclassified(20))
    assert f"container '{name}' at http://127.0.0.1:{front.port}/{ACCOUNT}" in str(error)
    assert "could not keep the batch's dead letters" in str(error) and "of 20 tried" in str(error)


def test_a_store_that_fails_mid_write_stops_at_once_and_fails_within_its_budget(
    front: Proxy, azurite: Azurite, name: str
) -> None:
    store = store_via(front, name)
    store.write(unclassified(1))  # the container exists and connections are open
    watcher = switch_after(front, azurite, name, 10, Mode.BLACK_HOLE)
    fails_within_budget(store, unclassified(200, start=1))
    watcher.join()
    written = [n for n in blobs(azurite, name) if not n.startswith(f"{PENDING_FOLDER}/")]
    assert 10 <= len(written) < 201, "the fault did not come mid-write"


def test_a_dead_letter_container_deleted_between_two_writes_is_made_again(azurite: Azurite, name: str) -> None:
    store = BlobDeadLetters.from_settings("S", name, {"S": azurite.connection_string})
    store.write(unclassified(2))
    ContainerClient.from_connection_string(azurite.connection_string, name).delete_container()
    store.write(unclassified(3, start=2))
    assert len(blobs(azurite, name)) == 3


def route_twice(front: Proxy, azurite: Azurite, name: str, *, same_process: bool, delivers: bool = True) -> list[str]:
    """Try 1: the endpoint refuses every send, and the store fails after some of the 30 letters. Try 2 (the
    host's retry, in the same process or another): everything is delivered (or, if not `delivers`, fails
    again and is dead-lettered whole). Returns what is left in the container."""
    messages = [telemetry(f"dev-{n % 3}", b'{"n":%d}' % n, seq=n) for n in range(30)]
    wire = FakeWire(refused_settings={"RAW"})
    table = StaticRoutes(parse_routes(ROUTES))
    store = store_via(front, name)
    store.write(unclassified(1, start=1000))  # a letter of an earlier batch, which must stay
    watcher = switch_after(front, azurite, name, 6, Mode.RESET)
    with pytest.raises(DeadLetterStoreError):
        Router(routes=table, senders=FakeSenders(wire), dead_letters=store).route(messages)
    watcher.join()
    front.set(Mode.FORWARD)
    left = blobs(azurite, name)
    assert any(n.startswith("raw/") for n in left), "try 1 wrote no letter: nothing to test"
    if delivers:
        wire.refused_settings.clear()
    retry_store = store if same_process else store_via(front, name)
    Router(routes=table, senders=FakeSenders(wire), dead_letters=retry_store).route(messages)
    assert len(wire.delivered["raw"]) == (30 if delivers else 0)
    return blobs(azurite, name)


def replay_plan(azurite: Azurite, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What `deadletters replay --dry-run` would send and keep, as an operator runs it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "routes.json").write_text(json.dumps(ROUTES))
    where = ["--connection-string", azurite.connection_string, "--container", name]
    result = cli.invoke(
        cli_app, ["deadletters", "replay", "--dry-run", "--routes", "routes.json", "-o", "json", *where]
    )
    assert result.exit_code == 0, result.output
    plan: dict[str, Any] = json.loads(result.stdout)
    return plan


def test_letters_a_failed_try_left_for_messages_its_retry_delivered_are_deleted(
    front: Proxy, azurite: Azurite, name: str
) -> None:
    left = route_twice(front, azurite, name, same_process=True)
    assert [n.split("/")[0] for n in left] == ["_unclassified"], "a stale letter (or its write's marker) survived"


def test_a_replay_keeps_letters_of_a_failed_write_whose_retry_ran_in_another_process(
    front: Proxy, azurite: Azurite, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    left = route_twice(front, azurite, name, same_process=False)
    stale = [n for n in left if n.startswith("raw/")]
    assert stale and any(n.startswith(f"{PENDING_FOLDER}/") for n in left)
    plan = replay_plan(azurite, name, tmp_path, monkeypatch)
    assert plan["wouldSend"] == [], "a replay would deliver messages the retry already delivered"
    kept = {k["name"]: k["reason"] for k in plan["kept"]}
    assert set(stale) <= set(kept)
    assert all("a try of its batch that failed" in kept[n] for n in stale)


def test_a_retry_that_dead_letters_the_batch_again_leaves_every_letter_replayable(
    front: Proxy, azurite: Azurite, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    left = route_twice(front, azurite, name, same_process=True, delivers=False)
    assert not [n for n in left if n.startswith(f"{PENDING_FOLDER}/")], "the failed write's marker stayed"
    assert len([n for n in left if n.startswith("raw/")]) == 30
    assert len(replay_plan(azurite, name, tmp_path, monkeypatch)["wouldSend"]) == 30
