"""Packing on the thread that routes, sends at once on others (issue #15): the pipeline packs every
endpoint's first round on its own thread (CPU alone, where it asks nothing of the service) and hands only
the sends to the endpoints' threads, which still go out at the same time; where packing here cannot be
done (the client not connected yet, lane 0 busy with another invocation's send, an error), the send
packs it as it always has; and a send's budget starts when the send does."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

from routing.deliver.senders import ClientSender, KeyGroup, Prepared, RetryOptions
from routing.ingest.classify import classify
from routing.model import Event, Outgoing
from routing.pipeline import Router, StaticRoutes
from routing.routes.table import Endpoint, parse_routes
from tests.conftest import telemetry
from tests.fakes import MemoryDeadLetters

NAMES = ("a", "b", "c")
ROUTES = parse_routes(
    [
        {"name": name, "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "X", "path": name}
        for name in NAMES
    ]
)


@dataclass
class Log:
    adds: list[tuple[str, threading.Thread]] = field(default_factory=list)
    sends: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Recording(ClientSender[object]):
    """Records the thread of each message packed; each send waits at `barrier`, so the endpoints' sends
    pass only if they are under way at the same time."""

    def __init__(
        self, endpoint: Endpoint, log: Log, barrier: threading.Barrier | None = None, *, offline: bool = True
    ) -> None:
        super().__init__(endpoint, retry=RetryOptions(attempts=1, timeout=5.0, budget=10.0), lanes=1)
        self.log = log
        self.barrier = barrier
        self.offline = offline
        self.broken: Exception | None = None

    def _new_client(self, setting: str) -> object:
        return object()

    def _route(self, client: object, key: str) -> Hashable:
        return None

    def _open(self, client: object, route: Hashable) -> list[Outgoing]:
        return []

    def _add(self, batch: list[Outgoing], message: Outgoing) -> bool:
        if self.broken is not None:
            raise self.broken
        with self.log.lock:
            self.log.adds.append((self.endpoint.name, threading.current_thread()))
        batch.append(message)
        return True

    def _too_large(self, message: Outgoing, batch: list[Outgoing]) -> str:
        return "too large"

    def _packs_offline(self, client: object) -> bool:
        return self.offline

    def _transmit(self, client: object, prepared: Prepared, timeout: float) -> None:
        if self.barrier is not None:
            self.barrier.wait(timeout=5.0)
        with self.log.lock:
            self.log.sends.append(self.endpoint.name)

    def _is_refused(self, error: Exception) -> bool:
        return False

    def _describe(self, error: Exception) -> tuple[str, bool]:
        return str(error), True


def groups(count: int) -> list[KeyGroup]:
    messages = []
    for seq in range(count):
        event = next(r for r in classify(telemetry(f"d{seq % 2}", b"{}", seq=seq)) if isinstance(r, Event))
        messages.append(
            Outgoing(
                endpoint="a",
                event=event,
                body=b"{}",
                content_type="application/json",
                properties={},
                order_key=event.order_key,
                message_id=event.message_id,
            )
        )
    return [KeyGroup(key, tuple(m for m in messages if m.order_key == key)) for key in ("d0", "d1")]


def test_the_router_packs_every_endpoint_on_its_own_thread_and_sends_them_at_the_same_time() -> None:
    log = Log()
    barrier = threading.Barrier(len(NAMES))
    senders = {e.name: Recording(e, log, barrier) for e in ROUTES.endpoints}
    router = Router(routes=StaticRoutes(ROUTES), senders=lambda e: senders[e.name], dead_letters=MemoryDeadLetters())
    batch = [telemetry(f"d{seq % 2}", b"{}", seq=seq) for seq in range(6)]
    try:
        report = router.route(batch)
    finally:
        for sender in senders.values():
            sender.close()

    # Every endpoint got the whole batch, its three sends met at the barrier (at once, not one by one).
    assert {name: count for (name, _type), count in report.delivered.items()} == dict.fromkeys(NAMES, 6)
    assert sorted(log.sends) == sorted(NAMES)
    # Each message was packed once, for every endpoint, on the thread that routed the batch.
    assert len(log.adds) == 6 * len(NAMES)
    assert {thread for _name, thread in log.adds} == {threading.current_thread()}


def test_with_lane_0_busy_prepare_does_not_wait_and_the_send_packs() -> None:
    log = Log()
    sender = Recording(ROUTES.endpoints[0], log)
    lane = sender._lane_locks[0]
    lane.acquire()  # another invocation's send holds it
    prepared: list[object] = []
    preparing = threading.Thread(target=lambda: prepared.append(sender.prepare(sender.endpoint, groups(4))))
    preparing.start()
    preparing.join(timeout=3.0)
    try:
        assert not preparing.is_alive(), "prepare waited for the lane"
        assert log.adds == []  # nothing packed yet
    finally:
        lane.release()
    [send] = prepared
    report = send()  # type: ignore[operator]
    sender.close()
    assert len(report.delivered) == 4 and not report.failed
    assert len(log.adds) == 4


def test_a_client_that_must_ask_the_service_packs_in_the_send() -> None:
    log = Log()
    sender = Recording(ROUTES.endpoints[0], log, offline=False)
    send = sender.prepare(sender.endpoint, groups(4))
    assert log.adds == []
    report = send()
    sender.close()
    assert len(report.delivered) == 4 and not report.failed
    assert len(log.adds) == 4


def test_an_error_while_packing_is_reported_by_the_send_as_it_is_without_prepare() -> None:
    reports = []
    for prepare_first in (True, False):
        sender = Recording(ROUTES.endpoints[0], Log())
        sender.broken = RuntimeError("the SDK broke while packing")
        if prepare_first:
            send = sender.prepare(sender.endpoint, groups(4))  # does not raise
            reports.append(send())
        else:
            reports.append(sender.send(sender.endpoint, groups(4)))
        sender.close()
    prepared, plain = reports
    assert not prepared.delivered and not plain.delivered
    assert [(f.message.message_id, f.reason, f.permanent) for f in prepared.failed] == [
        (f.message.message_id, f.reason, f.permanent) for f in plain.failed
    ]
    assert len(prepared.failed) == 4 and "the SDK broke while packing" in prepared.failed[0].reason


def test_the_sends_budget_starts_when_the_send_starts_not_when_it_was_packed() -> None:
    # A send that waits for an endpoint thread (behind others' sends) keeps its whole budget, as before
    # packing moved to `prepare`.
    sender = Recording(ROUTES.endpoints[0], Log())
    sender.retry = RetryOptions(attempts=1, timeout=0.2, budget=0.3)
    send = sender.prepare(sender.endpoint, groups(4))
    time.sleep(0.4)  # longer than the budget
    report = send()
    sender.close()
    assert len(report.delivered) == 4 and not report.failed
