"""Azurite, the real local Table/Blob/Queue server, for tests: started once per session on ports the OS
picks, with its own temporary data folder, and stopped afterwards.

`running_azurite()` starts one more instance for a test that needs to stop its server (an outage);
the `azurite` session fixture is the shared one. Azurite comes from the npm registry (`package.json`,
pinned; `npm ci`, which `make unit` runs). It is started with `--disableTelemetry` because otherwise it
tries to reach the internet, and with port 0 so the OS picks free ports: Azurite prints the ports it
bound, which is race-free where probing for a free port and passing it on is not.
"""

from __future__ import annotations

import queue
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AZURITE = ROOT / "node_modules" / "azurite" / "dist" / "src" / "azurite.js"

# The well-known development account every Azurite has (public, documented by Microsoft; not a secret).
# The key is the one Azurite itself checks (node_modules/azurite, and azure-data-tables' dev string).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# Generous: a cold start is about a second; a loaded CI machine may need many.
START_TIMEOUT_SECONDS = 60.0
_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at (http://\S+)")


@dataclass(frozen=True, slots=True)
class Azurite:
    """One running Azurite: the service endpoints (account path included) and a connection string."""

    blob_endpoint: str
    queue_endpoint: str
    table_endpoint: str
    location: Path

    @property
    def connection_string(self) -> str:
        """For azure-data-tables and azure-storage-blob alike (each reads its own endpoint)."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};"
            f"TableEndpoint={self.table_endpoint};"
        )


@contextmanager
def running_azurite(location: Path) -> Iterator[Azurite]:
    """Start Azurite with its data in `location`; stop it (and wait for it) on exit."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: Azurite needs Node.js 20 or later")
    if not AZURITE.is_file():
        pytest.fail(f"{AZURITE} is missing: run `npm ci --no-audit --no-fund` in {ROOT} (`make unit` does)")
    location.mkdir(parents=True, exist_ok=True)
    command = [node, str(AZURITE), "--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose"]
    command += ["--location", str(location)]
    for service in ("blob", "queue", "table"):
        command += [f"--{service}Host", "127.0.0.1", f"--{service}Port", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        # Keep draining stdout for the server's whole life, so it never blocks on a full pipe.
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, name="azurite-stdout", daemon=True)
    reader.start()
    try:
        endpoints: dict[str, str] = {}
        while len(endpoints) < 3:
            try:
                line = lines.get(timeout=START_TIMEOUT_SECONDS)
            except queue.Empty:
                pytest.fail(f"Azurite did not start within {START_TIMEOUT_SECONDS:.0f} s:\n{''.join(output)}")
            if line is None:
                pytest.fail(f"Azurite exited with code {process.wait()} before listening:\n{''.join(output)}")
            output.append(line)
            if match := _LISTENING.search(line):
                endpoints[match.group(1)] = f"{match.group(2).rstrip('/')}/{ACCOUNT}"
        yield Azurite(
            blob_endpoint=endpoints["Blob"],
            queue_endpoint=endpoints["Queue"],
            table_endpoint=endpoints["Table"],
            location=location,
        )
    finally:
        stop(process)
        reader.join(timeout=10)


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """The session's Azurite (Blob, Queue and Table); tests keep apart by using their own table names."""
    with running_azurite(tmp_path_factory.mktemp("azurite")) as server:
        yield server
