"""Nothing lost, order kept, on real servers: the no-loss scenarios of tests/test_no_loss.py once more,
through the unmodified Event Hubs and Service Bus SDKs (to the local AMQP peer) with dead letters in
Azurite's Blob service, then replayed with `python -m routing deadletters replay`; and a dead-letter
store that is down fails the batch (the router, and the function through function_app) rather than
losing what it should have kept."""

from __future__ import annotations

import json
import socket
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from typer.testing import CliRunner

from routing.cli.main import app as cli_app
from routing.deadletters import UNCLASSIFIED_FOLDER, BlobDeadLetters, DeadLetterStoreError
from routing.deliver.pool import SenderPool
from routing.deliver.senders import RetryOptions
from routing.ingest.classify import classify
from routing.model import Event, EventType, IngressMessage
from routing.pipeline import Router, StaticRoutes
from routing.routes.table import RouteTable, parse_routes
from tests.azurite import Azurite, running_azurite
from tests.conftest import WorkerEvent, sensor_data, telemetry, twin_event, worker_batch
from tests.deployment import fresh_router, stored_letters
from tests.peers.amqp import SERVER_BUSY, AmqpPeer, ReceivedMessage

RAW_HUB, ALERTS = "raw-hub", "alerts"
ROUTES = [
    {"name": "raw", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "RAW", "path": RAW_HUB},
    {"name": "bus", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "BUS", "path": ALERTS},
]  # SpaceChange goes nowhere: unrouted
TABLE = parse_routes(ROUTES)
QUICK = RetryOptions(attempts=2, backoff_initial=0.01, backoff_max=0.05)
# The hub advertises this limit, so the sender sees a larger message cannot fit: a permanent fault.
HUB_LIMIT = 4096
cli = CliRunner()


@pytest.fixture(scope="module")
def amqp() -> Iterator[AmqpPeer]:
    with AmqpPeer(entities={RAW_HUB, ALERTS}) as peer:
        yield peer


@pytest.fixture
def peer(amqp: AmqpPeer) -> Iterator[AmqpPeer]:
    amqp.clear()
    yield amqp
    amqp.clear()
    amqp.max_message_size = 1024 * 1024


@dataclass(frozen=True)
class Store:
    connection_string: str
    container: ContainerClient


@pytest.fixture
def store(azurite: Azurite) -> Store:
    """A fresh dead-letter container per test, on the session's Azurite."""
    name = f"dl{uuid.uuid4().hex[:16]}"
    return Store(azurite.connection_string, ContainerClient.from_connection_string(azurite.connection_string, name))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the routes file, and no settings of the developer's shell or folder leaking in."""
    for name in ("DEADLETTER_STORAGE", "DEADLETTER_CONTAINER", "ROUTES_STORAGE", "ROUTER_OUTPUT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "routes.json").write_text(json.dumps(ROUTES))
    return tmp_path


def batch() -> list[IngressMessage]:
    """Four devices and two sensors interleaved, an unroutable SpaceChange and a message nobody can read.

    dev-1's third message is too large for the hub; everything else fits.
    """
    plan = [
        ("telemetry", "dev-0"), ("telemetry", "dev-1"), ("sensor", "s-0"), ("telemetry", "dev-2"),
        ("telemetry", "dev-1"), ("garbage", ""), ("telemetry", "dev-0"), ("sensor", "s-1"),
        ("telemetry", "dev-1"), ("space", "sp-0"), ("telemetry", "dev-2"), ("telemetry", "dev-1"),
        ("sensor", "s-0"), ("telemetry", "dev-0"), ("telemetry", "dev-3"), ("sensor", "s-1"),
    ]  # fmt: skip
    out = []
    for seq, (kind, key) in enumerate(plan):
        if kind == "telemetry":
            size = 5000 if (key, seq) == ("dev-1", 8) else 20
            out.append(telemetry(key, b'{"seq":%d,"pad":"%s"}' % (seq, b"x" * size), seq=seq, n=seq))
        elif kind == "sensor":
            out.append(twin_event(sensor_data(key, str(seq)), seq=seq, properties={"Type": "SensorChange"}))
        elif kind == "space":
            out.append(twin_event({"Id": key, "Type": "Space"}, seq=seq, properties={"Type": "SpaceChange"}))
        else:
            out.append(twin_event(None, seq=seq, raw=b"\x00 not an event"))
    return out


def expected(messages: list[IngressMessage], table: RouteTable) -> dict[tuple[str, str], list[str]]:
    """Per (endpoint, key): the message ids the endpoint must end up with, in input order."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for message in messages:
        for result in classify(message):
            if isinstance(result, Event):
                for endpoint in table.for_type(result.event_type):
                    out[(endpoint.name, result.order_key)].append(result.message_id)
    return out


def on_the_wire(peer: AmqpPeer) -> dict[tuple[str, str], list[str]]:
    """Per (endpoint, key): the message ids the peer accepted, in arrival order (duplicates kept)."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)

    def add(endpoint: str, key: str | None, message: ReceivedMessage) -> None:
        out[(endpoint, str(key))].append(str(message.message_id))

    for message in peer.received(RAW_HUB):
        add("raw", message.partition_key, message)
    for message in peer.received(ALERTS):
        add("bus", message.session_id, message)
    return out


def stored(container: ContainerClient) -> dict[str, dict[str, Any]]:
    return stored_letters(container)


def pool(peer: AmqpPeer) -> SenderPool:
    return SenderPool(retry=QUICK, env={"RAW": peer.connection_string(), "BUS": peer.connection_string()})


def test_faults_leave_delivered_prefixes_and_blob_tails_that_replay_completes_in_order(
    peer: AmqpPeer, store: Store, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = batch()
    want = expected(messages, TABLE)
    peer.max_message_size = HUB_LIMIT  # permanent: dev-1's large message can never fit
    peer.server_busy(1, entity=RAW_HUB)  # transient, recovers on the sender's retry
    peer.server_busy(100, entity=ALERTS)  # an outage that outlasts every retry
    senders = pool(peer)
    try:
        report = Router(
            routes=StaticRoutes(TABLE), senders=senders, dead_letters=BlobDeadLetters(store.container)
        ).route(messages)
    finally:
        senders.close()

    got = on_the_wire(peer)
    blobs = stored(store.container)
    tails: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in blobs.values():
        if record["endpoint"]:
            tails[(record["endpoint"], record["orderKey"])].append(record)
    for pair, ids in want.items():
        sent = got.get(pair, [])
        tail = sorted(tails.get(pair, []), key=lambda r: r["original"]["sequenceNumber"])
        # Delivered once each and in order; what was not is in Blob, in order, each with its attempts.
        assert sent == [i for i in ids if i not in {r["id"] for r in tail}], f"{pair}: out of order, lost or twice"
        assert sorted(sent + [r["id"] for r in tail]) == sorted(ids), f"{pair}: not accounted for exactly"
        if tail:
            assert tail[0]["code"] == "delivery-failed" and tail[0]["attempts"], f"{pair}: no attempts kept"
    # The transient fault cost nothing; the permanent one costs dev-1 its large message alone (dev-1 goes
    # on after it); the outage holds every sensor, each with every attempt kept.
    assert got[("raw", "dev-0")] == want[("raw", "dev-0")] and got[("raw", "dev-2")] == want[("raw", "dev-2")]
    [large] = tails[("raw", "dev-1")]
    assert large["original"]["sequenceNumber"] == 8 and large["code"] == "delivery-failed"
    assert got[("raw", "dev-1")] == [i for i in want[("raw", "dev-1")] if i != large["id"]]
    assert len(large["attempts"]) == 1 and "larger" in large["reason"]
    assert not got.get(("bus", "s-0")) and not got.get(("bus", "s-1"))
    for record in tails[("bus", "s-0")] + tails[("bus", "s-1")]:
        if record["code"] == "delivery-failed":
            assert len(record["attempts"]) == QUICK.attempts
            assert all("busy" in attempt["error"].lower() for attempt in record["attempts"])
    assert SERVER_BUSY in peer.stats().deliveries_rejected
    [garbage] = [name for name in blobs if name.startswith(f"{UNCLASSIFIED_FOLDER}/")]
    assert blobs[garbage]["code"] == "not-json"
    assert report.unrouted == {EventType.SPACE_CHANGE: 1}

    # The endpoints are healthy again: replay from the command line, as an operator would.
    peer.reset_faults()
    peer.max_message_size = 1024 * 1024
    monkeypatch.setenv("RAW", peer.connection_string())
    monkeypatch.setenv("BUS", peer.connection_string())
    monkeypatch.setenv("DEADLETTER_STORAGE", store.connection_string)
    result = cli.invoke(
        cli_app,
        [
            "deadletters",
            "replay",
            "--routes",
            "routes.json",
            "--container",
            store.container.container_name,
            "-o",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert (outcome["delivered"], outcome["failed"], outcome["kept"]) == (len(blobs) - 1, 0, 1)
    assert outcome["keptLetters"][0]["name"] == garbage
    assert "still cannot be classified" in outcome["keptLetters"][0]["reason"]

    # Every message once, in order per key; except that dev-1's refused message, replayed now, arrives after
    # the messages that went on past it (the price of never stopping a device for a message that cannot go).
    wire = on_the_wire(peer)
    reordered = [i for i in want[("raw", "dev-1")] if i != large["id"]] + [large["id"]]
    assert wire == {**want, ("raw", "dev-1"): reordered}, "delivered then replayed is not every message once"
    assert list(stored(store.container)) == [garbage]


def test_a_dead_letter_store_that_is_down_makes_the_batch_fail(peer: AmqpPeer, tmp_path: Path) -> None:
    sensor = twin_event(sensor_data("s-0"), seq=1, properties={"Type": "SensorChange"})
    garbage = twin_event(None, seq=2, raw=b"not json")
    senders = pool(peer)
    try:
        with running_azurite(tmp_path / "azurite") as own:  # its own server, so it can be stopped
            service = BlobServiceClient.from_connection_string(own.connection_string, retry_total=0)
            container = service.get_container_client("deadletters")
            router = Router(routes=StaticRoutes(TABLE), senders=senders, dead_letters=BlobDeadLetters(container))
            router.route([garbage])
            assert [b.name.split("/")[0] for b in container.list_blobs()] == [UNCLASSIFIED_FOLDER]
        # Azurite is stopped now.
        with pytest.raises(DeadLetterStoreError):
            router.route([sensor, garbage])
        # A batch with nothing to keep does not need the store.
        assert sum(router.route([sensor]).delivered.values()) == 1
    finally:
        senders.close()
    # The failed batch was delivered before its letter could not be kept: delivery is at least once, and
    # the second delivery carries the same message id, so consumers can tell.
    ids = [m.message_id for m in peer.received(ALERTS)]
    assert len(ids) == 2 and ids[0] == ids[1]


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_function_raises_while_the_dead_letter_store_is_down_and_keeps_the_letter_on_retry(
    functions: dict[str, Any],
    peer: AmqpPeer,
    store: Store,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nowhere = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        f"BlobEndpoint=http://127.0.0.1:{dead_port()}/devstoreaccount1;"
    )
    settings = {
        "ROUTES_FILE": str(workdir / "routes.json"),
        "DEADLETTER_STORAGE": nowhere,
        "DEADLETTER_CONTAINER": store.container.container_name,
        "RAW": peer.connection_string(),
        "BUS": peer.connection_string(),
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("routing.app.SenderPool", lambda: SenderPool(retry=QUICK))
    events = [
        WorkerEvent(
            body=json.dumps(sensor_data("s-0")).encode(), properties={"Type": "SensorChange"}, sequence_number=1
        ),
        WorkerEvent(body=b"\xff not json", sequence_number=2),
    ]
    run = functions["route_twins"].get_user_function()
    fresh_router()
    try:
        with pytest.raises(DeadLetterStoreError):
            run(worker_batch(events))
        # The retry policy runs the same batch again; by then the store is back.
        monkeypatch.setenv("DEADLETTER_STORAGE", store.connection_string)
        fresh_router()
        run(worker_batch(events))
    finally:
        fresh_router()
    [letter] = stored(store.container).values()
    assert (letter["code"], letter["original"]["sequenceNumber"]) == ("not-json", 2)
    delivered = peer.received(ALERTS)
    # The failed try raised before sending: it could not list what is parked (the same store), and sending
    # without knowing could overtake a parked message. The retry delivered it, once.
    assert len(delivered) == 1
