"""The local AMQP peer and Event Grid receiver of `tests/peers`, run in a child process so that their
work (decoding every frame, validating every event) is not on this process's CPU or its GIL.

The child (`python -m bench.peers`) starts both, prints their addresses, then answers requests, one JSON
line each over its standard input and output: counters, a
digest of what arrived (to check that two senders sent the same messages), and forgetting what arrived
between rounds (the peer keeps every message; its counters are carried over, so connections are counted
since the start). The benchmark and the router reach them over loopback, as they would reach Azure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson

PARTITIONS = 4


@dataclass(frozen=True, slots=True)
class Addresses:
    amqp_connection: str  # a connection string without an entity (one namespace for every endpoint)
    grid_url: str
    grid_key: str


@dataclass(frozen=True, slots=True)
class Counts:
    """What arrived since the last `forget()`, and connections since the start."""

    connections: int
    amqp_transfers: int  # accepted sends (a batch is one)
    amqp_messages: int
    grid_requests: int
    grid_events: int


@dataclass(frozen=True, slots=True)
class Digest:
    """What arrived since the last `forget()`, as counts per destination and one hash per message, so that
    two senders can be checked to have sent the same messages (the same transfers need not match)."""

    per_destination: dict[str, int]
    messages: tuple[str, ...]  # sorted


def _canonical(value: object) -> object:
    if isinstance(value, Mapping):
        return sorted((repr(k), _canonical(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _event(event: Mapping[str, object]) -> dict[str, object]:
    """An Event Grid event as compared: a CloudEvent's `time` as the instant it names (the SDK's `send`
    rewrites `2026-11-26T09:00:00Z` as `2026-11-26T09:00:00.000Z`)."""
    out = dict(event)
    time = out.get("time")
    if isinstance(time, str):
        out["time"] = datetime.fromisoformat(time.replace("Z", "+00:00").replace("z", "+00:00")).isoformat()
    return out


def _hash(*parts: object) -> str:
    return hashlib.sha1(repr(_canonical(parts)).encode()).hexdigest()


def _answer(peer: Any, grid: Any, request: str, carried: int) -> tuple[Any, int]:
    """The answer to one request, and the connections carried over from before the last forget."""
    if request == "counts":
        stats = peer.stats()
        requests = grid.requests()
        return {
            "connections": carried + stats.connections,
            "amqp_transfers": len(stats.accepted_transfers),
            "amqp_messages": sum(n for _entity, _partition, n in stats.accepted_transfers),
            "grid_requests": len(requests),
            "grid_events": sum(len(r.events) for r in requests),
        }, carried
    if request == "forget":
        carried += peer.stats().connections
        peer.clear()
        grid.clear()
        return None, carried
    if request == "digest":
        per: Counter[str] = Counter()
        hashes = []
        for m in peer.received():
            per[m.entity] += 1
            hashes.append(
                _hash(
                    m.entity,
                    m.partition_id,
                    m.body,
                    m.application_properties,
                    m.message_annotations,
                    m.message_id,
                    m.content_type,
                    m.group_id,
                )
            )
        for r in grid.requests():
            per[f"{r.path}?{r.query}"] += len(r.events)
            hashes.extend(_hash(r.query, r.content_type.split(";")[0], _event(e)) for e in r.events)
        return {"per_destination": dict(per), "messages": sorted(hashes)}, carried
    raise ValueError(f"unknown request {request!r}")


def serve(partition_count: int = PARTITIONS) -> None:
    """The child: start both, print their addresses, then answer one JSON line per request line."""
    from tests.peers import AmqpPeer, EventGridReceiver  # noqa: PLC0415 - only the child needs them

    with AmqpPeer(partition_count=partition_count) as peer, EventGridReceiver() as grid:
        out = sys.stdout.buffer
        out.write(orjson.dumps({"amqp": peer.connection_string(), "grid": grid.endpoint, "key": grid.key}) + b"\n")
        out.flush()
        carried = 0
        for line in sys.stdin.buffer:
            request = line.decode().strip()
            if request == "stop":
                break
            try:
                answer, carried = _answer(peer, grid, request, carried)
                reply: dict[str, Any] = {"ok": answer}
            except Exception as error:  # told to the parent, which raises it
                reply = {"error": f"{type(error).__name__}: {error}"}
            out.write(orjson.dumps(reply) + b"\n")
            out.flush()


class PeersProcess:
    """`AmqpPeer(partition_count=4)` and `EventGridReceiver()` in a child process (`python -m bench.peers`:
    a fresh interpreter, so nothing of this process's threads or state is copied into it)."""

    def __init__(self, *, partition_count: int = PARTITIONS) -> None:
        self._partition_count = partition_count
        self._process: subprocess.Popen[bytes] | None = None
        self.addresses: Addresses | None = None

    def start(self) -> Self:
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.peers", str(self._partition_count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=root,
            env=env,
        )
        line = self._read_line()
        first = orjson.loads(line)
        self.addresses = Addresses(first["amqp"], first["grid"], first["key"])
        return self

    def _read_line(self) -> bytes:
        assert self._process is not None and self._process.stdout is not None, "the peers' process is not running"
        line = self._process.stdout.readline()
        if not line:
            code = self._process.poll()
            self.stop()
            raise RuntimeError(f"the peers' process ended (exit {code})")
        return line

    def _ask(self, request: str) -> Any:
        assert self._process is not None and self._process.stdin is not None, "the peers' process is not running"
        self._process.stdin.write(request.encode() + b"\n")
        self._process.stdin.flush()
        reply = orjson.loads(self._read_line())
        if "error" in reply:
            raise RuntimeError(f"the peers' process could not answer {request!r}: {reply['error']}")
        return reply["ok"]

    def counts(self) -> Counts:
        return Counts(**self._ask("counts"))

    def digest(self) -> Digest:
        answer = self._ask("digest")
        return Digest(answer["per_destination"], tuple(answer["messages"]))

    def forget(self) -> None:
        """Forget what arrived (connections stay counted)."""
        self._ask("forget")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.write(b"stop\n")
                process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else PARTITIONS)
