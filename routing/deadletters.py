"""Dead letters: where messages that cannot be routed or delivered are kept, with a reason.

The protocol every dead-letter store keeps, and the file store the local runner uses
(`<dir>/deadletter.jsonl`, one `{"reason", "code", "original", ...}` line per dead letter).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from routing.ingress import to_line
from routing.model import DeadLetter

FILE_NAME = "deadletter.jsonl"


class DeadLetterStore(Protocol):
    def write(self, letters: Sequence[DeadLetter]) -> None:
        """Keep every letter, or raise: the caller must not checkpoint what was not kept."""
        ...

    def close(self) -> None: ...


def record(letter: DeadLetter) -> dict[str, Any]:
    out: dict[str, Any] = {"reason": letter.reason, "code": letter.code}
    if letter.endpoint is not None:
        out["endpoint"] = letter.endpoint
    if letter.ingress is not None:
        out["index"] = letter.index
        out["original"] = to_line(letter.ingress)
    else:
        out["original"] = letter.raw_line
    return out


class FileDeadLetters:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self._handle: IO[bytes] | None = None
        self._lock = threading.Lock()

    def write(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        data = b"".join(orjson.dumps(record(letter)) + b"\n" for letter in letters)
        with self._lock:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = self.path.open("ab")
            self._handle.write(data)
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
