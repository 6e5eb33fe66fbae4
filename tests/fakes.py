"""Small in-project fakes for what cannot run here under test control: an endpoint whose faults a test
scripts, and an in-memory dead-letter store that can be taken down.

The fake endpoint plugs into the real `ClientSender`, so retries, failover and stop-the-line are the
production code; only the wire is fake.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from routing.deadletters import blob_name, blob_record
from routing.model import DeadLetter, Outgoing
from routing.routes import Endpoint
from routing.senders import ClientSender, RetryOptions


class TransientFault(Exception):
    pass


class PermanentFault(Exception):
    pass


class Refused(Exception):
    pass


@dataclass
class FakeWire:
    """What every fake endpoint received, and the faults still to inject, per message id."""

    delivered: dict[str, list[Outgoing]] = field(default_factory=lambda: defaultdict(list))
    # "<endpoint>/<message id>" -> faults to raise, one per attempt, in order ("transient", "permanent")
    faults: dict[str, list[str]] = field(default_factory=dict)
    refused_settings: set[str] = field(default_factory=set)
    batch_size: int = 3
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class FakeClient:
    setting: str
    wire: FakeWire


class FakeEndpointSender(ClientSender[FakeClient]):
    def __init__(self, endpoint: Endpoint, wire: FakeWire) -> None:
        super().__init__(endpoint, retry=RetryOptions(attempts=3, backoff_initial=0, backoff_max=0))
        self.wire = wire

    def _new_client(self, setting: str) -> FakeClient:
        return FakeClient(setting, self.wire)

    def _prepare(self, client: FakeClient, key: str, messages: Sequence[Outgoing]) -> tuple[list[Outgoing], int]:
        if client.setting in self.wire.refused_settings:
            raise Refused(f"{client.setting} refused")
        batch = list(messages[: self.wire.batch_size])
        return batch, len(batch)

    def _transmit(self, client: FakeClient, batch: list[Outgoing]) -> None:
        with self.wire.lock:
            for message in batch:
                script = self.wire.faults.get(f"{self.endpoint.name}/{message.message_id}")
                if script:
                    fault = script.pop(0)
                    if fault == "transient":
                        raise TransientFault("server busy")
                    raise PermanentFault("message rejected")
            self.wire.delivered[self.endpoint.name].extend(batch)

    def _is_refused(self, error: Exception) -> bool:
        return isinstance(error, Refused)

    def _describe(self, error: Exception) -> tuple[str, bool]:
        return str(error), isinstance(error, PermanentFault)


class FakeSenders:
    """A `SenderFor`: one fake sender per endpoint, all on one wire."""

    def __init__(self, wire: FakeWire) -> None:
        self.wire = wire
        self.senders: dict[str, FakeEndpointSender] = {}

    def __call__(self, endpoint: Endpoint) -> FakeEndpointSender:
        if endpoint.name not in self.senders:
            self.senders[endpoint.name] = FakeEndpointSender(endpoint, self.wire)
        return self.senders[endpoint.name]


class StoreDown(Exception):
    pass


@dataclass
class MemoryDeadLetters:
    """Blob-store records in memory, named as the Blob store names them."""

    blobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    down: bool = False

    def write(self, letters: Sequence[DeadLetter]) -> None:
        if self.down and letters:
            raise StoreDown("dead-letter store unavailable")
        when = datetime(2026, 11, 26, 9, tzinfo=UTC)
        for letter in letters:
            self.blobs[blob_name(letter, when)] = blob_record(letter, when)

    def delete(self, name: str) -> None:
        del self.blobs[name]

    def close(self) -> None:
        pass
