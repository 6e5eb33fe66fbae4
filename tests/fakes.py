"""Small in-project fakes for what cannot run here under test control: an endpoint whose faults a test
scripts, and an in-memory dead-letter store that can be taken down.

The fake endpoint plugs into the real `ClientSender`, so packing, retries, failover and stop-the-line are the
production code; only the wire is fake.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from routing.deadletters import Delivered, blob_name, blob_record
from routing.deliver.senders import TRY_THREAD_SUFFIX, ClientSender, Prepared, RetryOptions
from routing.model import DeadLetter, Outgoing
from routing.routes.table import Endpoint


class TransientFault(Exception):
    pass


class PermanentFault(Exception):
    pass


class Refused(Exception):
    pass


@dataclass
class FakeWire:
    """What every fake endpoint received, and the faults still to inject, per message id.

    `batch_size` messages fit a batch; `mixed` says whether a batch may carry several keys (like a Service
    Bus queue, an Event Hubs partition or an Event Grid topic) or one key only (a partitioned entity).
    A batch with a message whose fault script says so fails whole, as a real batch does.
    """

    delivered: dict[str, list[Outgoing]] = field(default_factory=lambda: defaultdict(list))
    # "<endpoint>/<message id>" -> faults to raise, one per attempt, in order ("transient", "permanent")
    faults: dict[str, list[str]] = field(default_factory=dict)
    refused_settings: set[str] = field(default_factory=set)
    batch_size: int = 3
    mixed: bool = False
    # "<endpoint>/<message id>" of messages too large for any batch.
    too_large: set[str] = field(default_factory=set)
    # Endpoints that are down (an outage): every send to one of them fails, transiently, whatever it carries.
    down: set[str] = field(default_factory=set)
    batches: list[list[Outgoing]] = field(default_factory=list)  # every batch that arrived, in order
    # "<endpoint>/<message id>" of every message a try refused for good, in any invocation.
    refused: set[str] = field(default_factory=set)
    threads: list[str] = field(default_factory=list)  # the thread that sent each batch (or try)
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

    def _route(self, client: FakeClient, key: str) -> Hashable:
        return None if self.wire.mixed else key

    def _open(self, client: FakeClient, route: Hashable) -> list[Outgoing]:
        if client.setting in self.wire.refused_settings:
            raise Refused(f"{client.setting} refused")
        return []

    def _add(self, batch: list[Outgoing], message: Outgoing) -> bool:
        if f"{self.endpoint.name}/{message.message_id}" in self.wire.too_large or len(batch) >= self.wire.batch_size:
            return False
        batch.append(message)
        return True

    def _too_large(self, message: Outgoing, batch: list[Outgoing]) -> str:
        return "message too large"

    def _packs_offline(self, client: FakeClient) -> bool:
        # Packing asks nothing of the endpoint: the first round is packed on the calling thread
        # (`ClientSender.prepare`), as the SDK senders' is once connected.
        return True

    def _transmit(self, client: FakeClient, prepared: Prepared, timeout: float) -> None:
        with self.wire.lock:
            # The lane's thread: each try runs on a thread of its own named for it (ClientSender._bounded).
            self.wire.threads.append(threading.current_thread().name.removesuffix(TRY_THREAD_SUFFIX))
            if client.setting in self.wire.refused_settings:
                raise Refused(f"{client.setting} refused")
            if self.endpoint.name in self.wire.down:
                raise TransientFault("endpoint unavailable")
            for message in prepared.payload:
                script = self.wire.faults.get(f"{self.endpoint.name}/{message.message_id}")
                if script:
                    fault = script.pop(0)
                    if fault == "transient":
                        raise TransientFault("server busy")
                    self.wire.refused.add(f"{self.endpoint.name}/{message.message_id}")
                    raise PermanentFault("message rejected")
            self.wire.delivered[self.endpoint.name].extend(prepared.payload)
            self.wire.batches.append(list(prepared.payload))

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

    def write(self, letters: Sequence[DeadLetter], *, delivered: Delivered = ()) -> None:
        if self.down and letters:
            raise StoreDown("dead-letter store unavailable")
        when = datetime(2026, 11, 26, 9, tzinfo=UTC)
        for letter in letters:
            self.blobs[blob_name(letter)] = blob_record(letter, when)

    def delete(self, name: str) -> None:
        del self.blobs[name]

    def close(self) -> None:
        pass
