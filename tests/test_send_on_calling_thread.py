"""A warm client whose send opens nothing sends from the calling thread (no hand-off to a try thread), and
that try is still bounded: the watchdog breaks its connections when it runs past its time, the batch
fails as timed out (transient), and the next try goes through a try thread on a new client."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from routing.deliver.eventhubs import EventHubSender
from routing.deliver.senders import ClientSender, KeyGroup, Prepared, RetryOptions
from routing.deliver.servicebus import ServiceBusEndpointSender
from routing.ingest.classify import classify
from routing.model import Event, IngressMessage, Outgoing
from routing.routes.table import Endpoint, parse_routes
from tests.peers.amqp import AmqpPeer

ENDPOINT: Endpoint = parse_routes(
    [{"name": "hub", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "A", "path": "h"}]
).endpoints[0]


@dataclass
class Wire:
    """A connection per client: `hang` makes the next try wait for an answer that never comes."""

    client: socket.socket
    far: socket.socket
    hang: bool = False
    tries: list[tuple[str, bool]] = field(default_factory=list)  # (thread, on the calling thread?)


class WireSender(ClientSender[Wire]):
    def __init__(self, retry: RetryOptions) -> None:
        super().__init__(ENDPOINT, retry=retry, lanes=1)
        self.caller = threading.current_thread()
        self.wires: list[Wire] = []

    def _new_client(self, setting: str) -> Wire:
        near, far = socket.socketpair()
        self.wires.append(Wire(near, far))
        return self.wires[-1]

    def _open(self, client: Wire, route: object) -> list[Outgoing]:
        return []

    def _add(self, batch: list[Outgoing], message: Outgoing) -> bool:
        batch.append(message)
        return True

    def _too_large(self, message: Outgoing, batch: list[Outgoing]) -> str:
        return "too large"

    def _packs_offline(self, client: Wire) -> bool:
        return True

    def _opens_nothing(self, client: Wire, prepared: Prepared) -> bool:
        return True

    def _transmit(self, client: Wire, prepared: Prepared, timeout: float) -> None:
        here = threading.current_thread() is self.caller
        client.tries.append((threading.current_thread().name, here))
        # No timeout of its own when it hangs: only the sender's bound can end it (a broken connection reads b"").
        if client.hang and not client.client.recv(1):
            raise ConnectionResetError("connection broken")

    def _is_refused(self, error: Exception) -> bool:
        return False

    def _describe(self, error: Exception) -> tuple[str, bool]:
        return str(error), False


def telemetry(key: str, seq: int) -> KeyGroup:
    ingress = IngressMessage(
        body=b"{}",
        properties={},
        system_properties={"iothub-connection-device-id": key},
        source="in",
        partition="0",
        sequence_number=seq,
    )
    event = next(r for r in classify(ingress) if isinstance(r, Event))
    message = Outgoing(
        endpoint="hub",
        event=event,
        body=b"{}",
        content_type="application/json",
        properties={},
        order_key=key,
        message_id=event.message_id,
    )
    return KeyGroup(key=key, messages=(message,))


def test_a_warm_client_sends_from_the_calling_thread_and_a_cold_one_through_a_try_thread() -> None:
    sender = WireSender(RetryOptions(attempts=1, timeout=1.0, budget=3.0))
    try:
        first = sender.send(ENDPOINT, [telemetry("a", 0)])
        second = sender.send(ENDPOINT, [telemetry("a", 1)])
    finally:
        sender.close()

    assert len(first.delivered) == len(second.delivered) == 1
    [wire] = sender.wires
    # The first try of a new client goes through a try thread; once it has succeeded, the calling thread.
    assert [here for _thread, here in wire.tries] == [False, True]


def test_a_try_on_the_calling_thread_that_hangs_is_broken_off_and_retried_on_a_new_client() -> None:
    sender = WireSender(RetryOptions(attempts=2, backoff_initial=0.0, backoff_max=0.0, timeout=0.3, budget=5.0))
    try:
        sender.send(ENDPOINT, [telemetry("a", 0)])  # warm
        sender.wires[0].hang = True
        started = time.monotonic()
        report = sender.send(ENDPOINT, [telemetry("a", 1)])
        took = time.monotonic() - started
    finally:
        sender.close()

    # The hung try on the calling thread was ended (its connection broken) within its time and the grace;
    # the retry went on a new client, through a try thread, and was delivered.
    assert len(report.delivered) == 1 and not report.failed
    assert took < 3.0
    hung, fresh = sender.wires
    assert [here for _thread, here in hung.tries] == [False, True]
    assert [here for _thread, here in fresh.tries] == [False]
    assert sender.timeouts == 1 and sender.retries == 1


class Recorded:
    """Wraps a sender's `_transmit` to record whether each try ran on the calling thread."""

    def __init__(self, sender: ClientSender[Any]) -> None:
        self.here: list[bool] = []
        caller = threading.current_thread()
        transmit = sender._transmit

        def recorded(client: Any, prepared: Prepared, timeout: float) -> None:
            self.here.append(threading.current_thread() is caller)
            transmit(client, prepared, timeout)

        sender._transmit = recorded  # type: ignore[method-assign]


def test_the_sdk_senders_send_from_the_calling_thread_once_their_link_is_open() -> None:
    # If this fails after an SDK upgrade, `_opens_nothing` no longer reads the SDK's state (a producer's
    # `running`, the client's `_producers`; a Service Bus sender's `_running` and `_handler`): the senders
    # stay correct, every try on a try thread, only dearer.
    with AmqpPeer(entities={"hub", "queue"}, partition_count=4) as peer:
        env = {"AMQP": peer.connection_string()}
        hub = parse_routes(
            [{"name": "hub", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "AMQP", "path": "hub"}]
        ).endpoints[0]
        queue = parse_routes(
            [{"name": "q", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "AMQP",
              "path": "queue"}]
        ).endpoints[0]  # fmt: skip
        retry = RetryOptions(attempts=1, timeout=5.0, budget=10.0)
        senders: list[ClientSender[Any]] = [
            EventHubSender(hub, retry=retry, env=env, lanes=1),
            ServiceBusEndpointSender(queue, retry=retry, env=env, lanes=1),
        ]
        try:
            for sender in senders:
                recorded = Recorded(sender)
                for seq in range(3):
                    report = sender.send(sender.endpoint, [telemetry("device-1", seq)])
                    assert len(report.delivered) == 1 and not report.failed
                # The first send opens the link on a try thread; the next ones go from here.
                assert recorded.here == [False, True, True], sender.endpoint.name
        finally:
            for sender in senders:
                sender.close()
        assert len(peer.received("hub")) == len(peer.received("queue")) == 3
