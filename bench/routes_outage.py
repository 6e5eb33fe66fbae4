"""What a routes table that stops answering costs the invocations: `python -m bench.routes_outage
[black-hole|refuse|reset]`. A real Azurite behind a loopback proxy (tests/blackhole.py); after the
first load the proxy turns to the given mode and the refresh falls due. Prints how long the invocation
that refreshes waits, how long a second one arriving meanwhile waits, and how long the next batch
after the failed refresh waits (tests/test_routes_budget.py pins the behaviour with generous bounds).
Measured here: before (3 retries of a 20 s read timeout, next refresh scheduled from before the
failed one, every invocation behind the lock) black-hole 69-83 s / 152 s / 83 s; after 10 s / 0 s / 0 s.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from routing.connections import Connection
from routing.routes.table import Endpoint, parse_endpoint
from routing.routes.tables import RouteRows, TableRoutes, table_client
from tests.azurite import running_azurite
from tests.blackhole import Mode, proxy


class _Clock:
    """Real time, plus what the benchmark moves it by to make a refresh due."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def measure(mode: Mode) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder, running_azurite(Path(folder)) as azurite:
        port = int(azurite.table_endpoint.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        with proxy(port) as gate:
            name = f"routes{uuid.uuid4().hex[:8]}"
            raw = {"name": "a", "type": "EventHub", "eventTypes": ["SensorChange"], "connection": "HUB", "path": "p"}
            endpoint = parse_endpoint(raw, "bench")
            assert isinstance(endpoint, Endpoint)
            RouteRows(table_client(Connection(setting="bench", secret=azurite.connection_string), name)).add(endpoint)
            proxied = azurite.connection_string.replace(f":{port}/", f":{gate.port}/")
            clock = _Clock()
            store = TableRoutes(table_client(Connection(setting="bench", secret=proxied), name), clock=clock)
            store.current()
            gate.set(mode)
            clock.offset += store.refresh_seconds
            waited: dict[str, float] = {}

            def invoke(label: str) -> None:
                started = time.monotonic()
                store.current()
                waited[label] = time.monotonic() - started

            first = threading.Thread(target=invoke, args=("refreshing invocation",))
            first.start()
            time.sleep(0.2)
            second = threading.Thread(target=invoke, args=("concurrent invocation",))
            second.start()
            first.join()
            second.join()
            invoke("next batch")
            return waited


def main() -> None:
    mode = Mode(sys.argv[1]) if len(sys.argv) > 1 else Mode.BLACK_HOLE
    for label, seconds in measure(mode).items():
        print(f"{mode.value}: {label} waited {seconds:.1f} s")


if __name__ == "__main__":
    main()
