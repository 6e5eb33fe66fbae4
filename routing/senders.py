"""Senders: the one way out to each kind of endpoint.

A sender receives, per endpoint, the messages grouped by order key (each group in order) and reports
per message what was delivered and what failed and why. This module holds the protocol and the file
sender the local runner uses; the Azure senders live beside it and keep the same contract.
"""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from routing.model import EndpointType, Outgoing
from routing.routes import Endpoint


@dataclass(frozen=True, slots=True)
class KeyGroup:
    """One order key's messages for one endpoint, in the order they must arrive."""

    key: str
    messages: tuple[Outgoing, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    message: Outgoing
    reason: str
    permanent: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SendReport:
    delivered: tuple[Outgoing, ...] = ()
    failed: tuple[Failure, ...] = ()


class Sender(Protocol):
    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        """Deliver every group, each in order; never raise for a message the endpoint refuses."""
        ...

    def close(self) -> None: ...


def output_record(endpoint: Endpoint, message: Outgoing) -> dict[str, Any]:
    """The documented line of the local runner's output (a stable format other tools read)."""
    record: dict[str, Any] = {
        "endpoint": endpoint.name,
        "endpointType": endpoint.type.value,
        "eventType": message.event_type.value,
    }
    if endpoint.type is EndpointType.EVENT_HUB:
        record["partitionKey"] = message.order_key
    elif endpoint.type is EndpointType.SERVICE_BUS:
        record["sessionId"] = message.order_key
    record["messageId"] = message.message_id
    record["contentType"] = message.content_type
    record["properties"] = dict(message.properties)
    record["bodyBase64"] = base64.b64encode(message.body).decode("ascii")
    with contextlib.suppress(orjson.JSONDecodeError):
        record["body"] = orjson.loads(message.body)
    return record


class FileSender:
    """Appends each endpoint's messages to `<dir>/<endpoint name>.jsonl`, one line per message sent."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, IO[bytes]] = {}
        self._lock = threading.Lock()

    def _file(self, name: str) -> IO[bytes]:
        handle = self._files.get(name)
        if handle is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle = self._files[name] = (self.directory / f"{name}.jsonl").open("ab")
        return handle

    def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
        lines = [
            orjson.dumps(output_record(endpoint, message)) + b"\n" for group in groups for message in group.messages
        ]
        with self._lock:
            handle = self._file(endpoint.name)
            handle.write(b"".join(lines))
            handle.flush()
        return SendReport(delivered=tuple(m for g in groups for m in g.messages))

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()
