"""Dead letters: where messages that cannot be routed or delivered are kept, with a reason.

The protocol every dead-letter store keeps; the file store the local runner uses
(`<dir>/deadletter.jsonl`, one `{"reason", "code", "original", ...}` line per dead letter); and the
Blob Storage store deployments use (one blob per letter, `<endpoint>/<yyyy>/<mm>/<dd>/<hh>/<id>.json`,
the hour the message was enqueued on its ingress hub, so that a retried write lands on the same name).
"""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import orjson
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings

from routing.connections import resolve
from routing.ingest.ingress import to_line
from routing.model import DeadLetter, IngressMessage, message_id

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


# Folder of the messages that never reached an endpoint (unclassifiable); no endpoint may take the name.
UNCLASSIFIED_FOLDER = "_unclassified"
# Hour folder of a message whose enqueued time is missing or unreadable: still one fixed name per letter.
# It sorts after every dated hour ("u" > digits), so such letters list last in their endpoint's folder.
UNDATED_FOLDER = "undated"


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 time as UTC, or None if there is none or it cannot be read. A time without an offset
    is UTC: the Functions host sends `EnqueuedTimeUtc` that way (`2026-11-26T09:00:00.15`)."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def rfc3339(moment: datetime) -> str:
    """`2026-11-26T09:00:00Z`: always with an offset (a naive time is UTC)."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _rfc3339_text(value: str) -> str:
    # A time we cannot read is kept as it was: the record must not lose what the sender reported.
    moment = parse_time(value)
    return rfc3339(moment) if moment is not None else value


def hour_folder(ingress: IngressMessage | None) -> str:
    """`<yyyy>/<mm>/<dd>/<hh>` of the message's enqueued time (UTC), else `undated`. Taken from the
    message, never the clock: a batch retried after the hour turns must overwrite its letters."""
    enqueued = parse_time(ingress.enqueued_time) if ingress is not None else None
    return f"{enqueued:%Y/%m/%d/%H}" if enqueued is not None else UNDATED_FOLDER


def blob_name(letter: DeadLetter) -> str:
    """`<endpoint>/<yyyy>/<mm>/<dd>/<hh>/<message-id>.json`: browsable by endpoint and enqueued hour, and
    the same for the same letter however often and whenever it is written."""
    folder = letter.endpoint or UNCLASSIFIED_FOLDER
    return f"{folder}/{hour_folder(letter.ingress)}/{letter_id(letter)}.json"


def letter_id(letter: DeadLetter) -> str:
    if letter.message is not None:
        return letter.message.message_id
    if letter.ingress is not None:
        return message_id(letter.ingress, letter.index)
    raise ValueError("a dead letter without a message")


def blob_record(letter: DeadLetter, when: datetime) -> dict[str, Any]:
    """Everything needed to understand and replay a dead letter, bodies exact (base64)."""
    assert letter.ingress is not None, "events-file lines never reach the blob store"
    ingress = letter.ingress
    out: dict[str, Any] = {
        "id": letter_id(letter),
        "code": letter.code,
        "reason": letter.reason,
        "endpoint": letter.endpoint,
        "deadLetteredAt": rfc3339(when),
        "index": letter.index,
        "original": {
            "source": ingress.source,
            "bodyBase64": base64.b64encode(ingress.body).decode("ascii"),
            "properties": dict(ingress.properties),
            "systemProperties": dict(ingress.system_properties),
            "partition": ingress.partition,
            "sequenceNumber": ingress.sequence_number,
            "offset": ingress.offset,
            # As the ingress gave it, not normalised: message ids of partitionless messages derive from it,
            # and a replay must reproduce them (routing/ingest/ingress.py gives it an offset).
            "enqueuedTime": ingress.enqueued_time,
        },
        "attempts": [{"time": _rfc3339_text(a.time), "error": a.error} for a in letter.attempts],
    }
    if letter.message is not None:
        message = letter.message
        out["eventType"] = message.event_type.value
        out["orderKey"] = message.order_key
        out["envelope"] = {
            "contentType": message.content_type,
            "properties": dict(message.properties),
            "bodyBase64": base64.b64encode(message.body).decode("ascii"),
        }
    return out


def ingress_of(record: Mapping[str, Any]) -> IngressMessage:
    """The original ingress message of a blob record, exactly as it arrived (ids derive from it)."""
    original = record["original"]
    return IngressMessage(
        body=base64.b64decode(original["bodyBase64"]),
        properties=original.get("properties") or {},
        system_properties=original.get("systemProperties") or {},
        source=original["source"],
        partition=original.get("partition"),
        sequence_number=original.get("sequenceNumber"),
        offset=original.get("offset"),
        enqueued_time=original.get("enqueuedTime"),
    )


# A store that cannot keep letters must fail the batch within the batch's time (the retry policy then
# holds the checkpoint), not after the SDK's default ten retries and 300 s timeouts.
CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 3,
    "retry_backoff_factor": 0.5,
    "connection_timeout": 5,
    "read_timeout": 20,
}
# Letters of one batch written at once (a down endpoint can dead-letter a whole batch per endpoint).
WRITE_CONCURRENCY = 8


class BlobDeadLetters:
    """Dead letters in Azure Blob Storage, one blob per letter. Writing raises on any failure, so the
    function fails and the batch is retried rather than checkpointed with letters lost."""

    def __init__(self, container: ContainerClient, *, clock: Callable[[], datetime] | None = None) -> None:
        self.container = container
        self.clock = clock or (lambda: datetime.now(UTC))
        self._checked = False

    @classmethod
    def from_settings(cls, setting: str, container: str, env: Mapping[str, str] | None = None) -> BlobDeadLetters:
        connection = resolve(setting, "blobServiceUri", env)
        if connection.secret:
            service = BlobServiceClient.from_connection_string(connection.secret, **CLIENT_OPTIONS)
        else:
            assert connection.address is not None
            service = BlobServiceClient(connection.address, credential=connection.credential(), **CLIENT_OPTIONS)
        return cls(service.get_container_client(container))

    def _ensure_container(self) -> None:
        if not self._checked:
            with contextlib.suppress(ResourceExistsError):
                self.container.create_container()
            self._checked = True

    def write(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        self._ensure_container()
        when = self.clock()

        def upload(letter: DeadLetter) -> None:
            # Same letter, same name (message id and enqueued hour, not the clock): a batch retried after
            # a partial write, or after the hour turned, overwrites rather than duplicates.
            self.container.upload_blob(
                blob_name(letter),
                orjson.dumps(blob_record(letter, when), option=orjson.OPT_INDENT_2),
                overwrite=True,
                content_settings=ContentSettings(content_type="application/json"),
            )

        if len(letters) == 1:
            upload(letters[0])
            return
        with ThreadPoolExecutor(min(WRITE_CONCURRENCY, len(letters)), thread_name_prefix="deadletter") as pool:
            # list() waits for every upload and raises the first failure: then the batch is retried whole.
            list(pool.map(upload, letters))

    def names(self, prefix: str | None = None) -> Iterator[str]:
        """Blob names, oldest enqueued hour first within each endpoint folder (the names sort by time),
        undated letters last."""
        try:
            yield from sorted(b.name for b in self.container.list_blobs(name_starts_with=prefix))
        except ResourceNotFoundError:
            return  # no container yet: nothing was ever dead-lettered

    def read(self, name: str) -> dict[str, Any]:
        record: dict[str, Any] = orjson.loads(self.container.download_blob(name).readall())
        return record

    def delete(self, name: str) -> None:
        self.container.delete_blob(name)

    def close(self) -> None:
        self.container.close()
