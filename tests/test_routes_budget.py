"""The routes table's time budget, against a real Azurite behind a loopback proxy that black-holes,
refuses or resets: a table that hangs costs one bounded refresh per interval, paid by one invocation,
while the others keep routing on the last good table; the next refresh is due one interval after the
failed one ended. Times here are generous bounds (a loaded machine passes); timings are in bench/."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from routing.connections import Connection
from routing.routes.table import RouteTable
from routing.routes.tables import (
    RETRIES,
    RouteRows,
    RoutesUnavailableError,
    TableRoutes,
    table_client,
)
from tests.azurite import Azurite
from tests.blackhole import Mode, Proxy, proxy
from tests.test_table_routes import Clock, endpoint

REFRESH = 30.0
# What "promptly" and "bounded" mean here: far above what the code needs, far below what it took before
# (a failed refresh cost 69-83 s, a queued invocation 152-166 s).
PROMPT_SECONDS = 5.0
# Absolute, not from the code's constants, so raising those (main's 3 retries of 20 s) fails the test.
BOUND_SECONDS = 40.0


@dataclass
class Guarded:
    """A routes table reached through a proxy; every request the store's client sends is counted."""

    proxy: Proxy
    connection_string: str
    name: str
    requests: list[str] = field(default_factory=list)
    on_request: Any = None

    def store(self, clock: Clock) -> TableRoutes:
        def hook(request: Any) -> None:
            self.requests.append(request.http_request.url)
            if self.on_request is not None:
                self.on_request()

        # The production client options (timeouts, retries): only the hook is added.
        client = table_client(
            Connection(setting="test", secret=self.connection_string), self.name, raw_request_hook=hook
        )
        return TableRoutes(client, refresh_seconds=REFRESH, clock=clock)


@pytest.fixture
def guarded(azurite: Azurite) -> Iterator[Guarded]:
    name = f"routes{uuid.uuid4().hex[:16]}"
    direct = Connection(setting="test", secret=azurite.connection_string)
    RouteRows(table_client(direct, name)).add(endpoint("alerts", "SensorChange"))
    port = azurite.table_endpoint.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
    with proxy(int(port)) as p:
        yield Guarded(p, azurite.connection_string.replace(f":{port}/", f":{p.port}/"), name)


def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_a_black_holed_table_costs_one_bounded_refresh_and_the_others_route_on_the_last_good_table(
    guarded: Guarded,
) -> None:
    clock = Clock()
    store = guarded.store(clock)
    good = store.current()
    assert [e.name for e in good.endpoints] == ["alerts"]
    guarded.proxy.set(Mode.BLACK_HOLE)
    clock.advance(REFRESH)

    refreshed: dict[str, tuple[RouteTable, float]] = {}
    refresher = threading.Thread(target=lambda: refreshed.setdefault("first", timed(store.current)))
    refresher.start()
    while not guarded.requests[1:]:  # the refresh's request is out, and will not be answered
        time.sleep(0.01)
    # A second invocation meanwhile: the last good table at once, not a place in the queue.
    table, waited = timed(store.current)
    assert refresher.is_alive(), "the second invocation returned only after the refresh ended"
    assert table is good and waited < PROMPT_SECONDS

    refresher.join(timeout=BOUND_SECONDS)
    assert not refresher.is_alive(), f"the refresh did not give up within {BOUND_SECONDS:g} s"
    table, took = refreshed["first"]
    assert table is good and took < BOUND_SECONDS
    assert len(guarded.requests) == 1 + (1 + RETRIES)  # the load, then one refresh: its tries, no more
    assert store.last_error is not None and "timed out" in store.last_error.lower()

    # Until the next interval, no batch tries again.
    for _ in range(5):
        assert store.current() is good
    assert len(guarded.requests) == 1 + (1 + RETRIES)


def test_the_next_refresh_is_due_one_interval_after_the_failed_one_ended(guarded: Guarded) -> None:
    clock = Clock()
    store = guarded.store(clock)
    good = store.current()
    guarded.proxy.set(Mode.REFUSE)
    clock.advance(REFRESH)
    # Each try takes 20 s of the store's clock: the failed refresh ends 20 * (1 + RETRIES) s after it began.
    guarded.on_request = lambda: clock.advance(20.0)
    assert store.current() is good
    failed_at = len(guarded.requests)
    guarded.on_request = None
    guarded.proxy.set(Mode.FORWARD)

    clock.advance(REFRESH - 0.5)  # an interval after the refresh began, not after it ended: not due
    assert store.current() is good
    assert len(guarded.requests) == failed_at
    clock.advance(0.5)
    assert store.current() is not good  # due, and read again
    assert len(guarded.requests) == failed_at + 1 and store.last_error is None


def test_a_table_that_resets_connections_fails_fast_and_keeps_the_last_good_table(guarded: Guarded) -> None:
    clock = Clock()
    store = guarded.store(clock)
    good = store.current()
    guarded.proxy.set(Mode.RESET)
    clock.advance(REFRESH)
    table, took = timed(store.current)
    assert table is good and took < PROMPT_SECONDS
    assert store.last_error is not None


def test_at_a_cold_start_a_second_invocation_waits_for_the_first_read_and_shares_its_failure(
    guarded: Guarded,
) -> None:
    guarded.proxy.set(Mode.BLACK_HOLE)
    store = guarded.store(Clock())
    errors: dict[str, tuple[BaseException, float]] = {}

    def invoke(tag: str) -> None:
        started = time.monotonic()
        try:
            store.current()
        except RoutesUnavailableError as exc:
            errors[tag] = (exc, time.monotonic() - started)

    first = threading.Thread(target=invoke, args=("first",))
    first.start()
    while not guarded.requests:
        time.sleep(0.01)
    second = threading.Thread(target=invoke, args=("second",))
    second.start()
    first.join(timeout=BOUND_SECONDS)
    second.join(timeout=PROMPT_SECONDS)
    assert not first.is_alive() and not second.is_alive()
    # Nothing to route with: both raise (the retry policy holds the checkpoint), within one read's budget,
    # and the second did not start a read of its own behind the first.
    assert set(errors) == {"first", "second"}
    assert errors["second"][0] is errors["first"][0]
    assert errors["second"][1] < BOUND_SECONDS
    assert len(guarded.requests) == 1 + RETRIES
