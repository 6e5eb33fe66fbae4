"""Dead letters: where messages that cannot be routed or delivered are kept, with a reason.

The protocol every dead-letter store keeps; the file store the local runner uses
(`<dir>/deadletter.jsonl`, one line per dead letter holding the same record as a blob); the Blob Storage
store deployments use (one blob per letter, `<endpoint>/<yyyy>/<mm>/<dd>/<hh>/<id>.json`, the hour the
message was enqueued on its ingress hub, so that a retried write lands on the same name); and, for the
CLI, a local folder's letters read back by those names (`LocalDeadLetters`). Top-level folders starting
with `_` other than `_unclassified` hold no letters (pending markers, parked messages, endpoint health).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson
from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

from routing.connections import resolve
from routing.errors import RoutingError
from routing.model import Attempt, DeadLetter, IngressMessage, Outgoing, message_id

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

log = logging.getLogger(__name__)

FILE_NAME = "deadletter.jsonl"
# What a batch delivered (every endpoint's messages), read only when an earlier write of this process failed.
Delivered = Iterable[Outgoing]


class DeadLetterStore(Protocol):
    def write(self, letters: Sequence[DeadLetter], *, delivered: Delivered = ()) -> None:
        """Keep every letter, or raise: the caller must not checkpoint what was not kept. `delivered` is
        what the same batch delivered: a store deletes letters an earlier, failed try left for those."""
        ...

    def close(self) -> None: ...


def file_record(letter: DeadLetter, when: datetime) -> dict[str, Any]:
    """A line of `deadletter.jsonl`: the blob record, or, for a line of an events file that could not be
    read as a message at all, the line as it was (`raw`)."""
    if letter.ingress is not None:
        return blob_record(letter, when)
    return {"code": letter.code, "reason": letter.reason, "endpoint": letter.endpoint, "raw": letter.raw_line}


class FileDeadLetters:
    def __init__(self, directory: Path, *, clock: Callable[[], datetime] | None = None) -> None:
        self.path = directory / FILE_NAME
        self.clock = clock or (lambda: datetime.now(UTC))
        self._handle: IO[bytes] | None = None
        self._lock = threading.Lock()

    def write(self, letters: Sequence[DeadLetter], *, delivered: Delivered = ()) -> None:
        # The local runner writes each letter once, in one run: no earlier try can have left one.
        if not letters:
            return
        when = self.clock()
        data = b"".join(orjson.dumps(file_record(letter, when)) + b"\n" for letter in letters)
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


def record_name(record: Mapping[str, Any]) -> str:
    """The blob name of a letter's record (`blob_name` of the letter it was made from): how a local
    folder's letters are named, so that `deadletters show|delete|replay` take the same names everywhere."""
    moment = parse_time((record.get("original") or {}).get("enqueuedTime"))
    hour = f"{moment:%Y/%m/%d/%H}" if moment is not None else UNDATED_FOLDER
    return f"{record.get('endpoint') or UNCLASSIFIED_FOLDER}/{hour}/{record['id']}.json"


def letter_id(letter: DeadLetter) -> str:
    if letter.message is not None:
        return letter.message.message_id
    if letter.ingress is not None:
        return message_id(letter.ingress, letter.index)
    raise ValueError("a dead letter without a message")


@functools.lru_cache(maxsize=2)
def _array_of(body: bytes) -> list[Any] | None:
    """A body's JSON array, parsed once for all the letters of its events (a message's letters are
    written together, so two kept are enough; a 1 MB array parsed is ten times that), or None when it is
    not one."""
    try:
        events = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return events if isinstance(events, list) else None


def element_body(letter: DeadLetter) -> tuple[bytes, dict[str, int] | None]:
    """The original body a letter keeps: the whole message's, except for a letter of one event of a JSON
    array that was routed and then failed (refused for good, unserialisable, expired): that event's own
    JSON, with where it was cut from (`element`: the array's length and bytes; `index` says which).

    An endpoint refusing every event of an array of N would otherwise write N letters, each with the whole
    array: N x its size (a 1 MB array of 10,000 events, 10 GB of letters). Cut, one message's letters weigh
    about what the message does. The element is written again by orjson (same values, not the same bytes);
    its ids and position still derive from the original message, which the record keeps all else of.
    """
    assert letter.ingress is not None
    body = letter.ingress.body
    if letter.message is None or letter.count > 1 or body.lstrip()[:1] != b"[":
        return body, None
    events = _array_of(body)
    if events is None or len(events) < 2 or not 0 <= letter.index < len(events):
        return body, None
    return orjson.dumps(events[letter.index]), {"count": len(events), "bytes": len(body)}


def blob_record(letter: DeadLetter, when: datetime, *, cut: bool = True) -> dict[str, Any]:
    """Everything needed to understand and replay a dead letter, bodies exact (base64), but for the event
    of an array, cut from its array (`element_body`) unless `cut` is False (a parked blob keeps each
    original message once whatever it holds, so it keeps them whole)."""
    assert letter.ingress is not None, "events-file lines never reach the blob store"
    ingress = letter.ingress
    body, element = element_body(letter) if cut else (ingress.body, None)
    out: dict[str, Any] = {
        "id": letter_id(letter),
        "code": letter.code,
        "reason": letter.reason,
        "endpoint": letter.endpoint,
        "deadLetteredAt": rfc3339(when),
        "index": letter.index,
        **({"count": letter.count, "positions": list(letter.positions)} if letter.count > 1 else {}),
        "original": {
            "source": ingress.source,
            "bodyBase64": base64.b64encode(body).decode("ascii"),
            **({"element": element} if element is not None else {}),
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


def attempts_of(record: Mapping[str, Any]) -> list[Attempt]:
    """The attempts a record keeps (blob or parked), as values."""
    return [Attempt(time=str(a.get("time")), error=str(a.get("error"))) for a in record.get("attempts") or []]


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


# How long the Blob store may take before it gives up, so that a store that cannot keep letters fails the
# invocation within seconds (the Functions retry policy then holds the checkpoint and tries the batch again)
# rather than after the SDK's defaults (retries 15, 18 and 24 s apart, 20 s connect and 60 s read
# timeouts: 84 s refused, minutes black-holed). azure-storage-blob reads only these: `retry_policy` (its
# own ExponentialRetry/LinearRetry; `retry_backoff_factor` is azure-core's and ignored by it),
# `connection_timeout` and `read_timeout` (the requests transport), and `timeout=` per operation, which
# is the *service's* time limit for the operation (it answers 500 OperationTimedOut, then retried).
# TCP connect to a storage account in the same region takes milliseconds; 3 s covers a cold DNS lookup.
CONNECT_TIMEOUT_SECONDS = 3
# The longest silence allowed between bytes of an answer. A letter is at most a few MB (a 1 MB message
# twice, base64): the service stores that and answers in well under a second.
READ_TIMEOUT_SECONDS = 5
# The service's own limit per operation (its default is 30 s for a Put Blob).
SERVER_TIMEOUT_SECONDS = 5
# Tries per request = 1 + RETRIES, RETRY_BACKOFF_SECONDS (± RETRY_JITTER_SECONDS) apart.
RETRIES = 2
RETRY_BACKOFF_SECONDS = 1.0
RETRY_JITTER_SECONDS = 0.5
# The most one request can take before it raises: every try connects and waits out its read timeout.
REQUEST_BUDGET_SECONDS = (1 + RETRIES) * (CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS) + RETRIES * (
    RETRY_BACKOFF_SECONDS + RETRY_JITTER_SECONDS
)
# Letters of one batch written at once (a down endpoint can dead-letter a whole batch per endpoint). The
# first failed upload (after its retries) stops the write: no later upload starts, so a write that fails
# takes at most one request budget for the marker plus one for the uploads under way, whatever the count.
WRITE_CONCURRENCY = 8
# A write fails in at most this long: the pending marker's request, then one round of uploads.
WRITE_FAILURE_BUDGET_SECONDS = 2 * REQUEST_BUDGET_SECONDS


def blob_sdk() -> ModuleType:
    """The Blob SDK (azure.storage.blob), imported when a Blob store is first used: a tenth of a second
    that the local runner, whose stores are files and memory, never needs to spend."""
    import azure.storage.blob  # noqa: PLC0415

    return azure.storage.blob


def client_options() -> dict[str, Any]:
    """The Blob client's options for the dead-letter store: the budget above (a fresh retry policy per
    client: the SDK keeps per-client state on it)."""
    return {
        "retry_policy": blob_sdk().LinearRetry(
            backoff=RETRY_BACKOFF_SECONDS,  # any number works (the SDK annotates int)
            retry_total=RETRIES,
            random_jitter_range=RETRY_JITTER_SECONDS,
        ),
        "connection_timeout": CONNECT_TIMEOUT_SECONDS,
        "read_timeout": READ_TIMEOUT_SECONDS,
    }


# Blob names of the pending markers: `_pending/<write id>`, one while a write is under way, left behind
# by a write that failed. A letter's record names its write; a letter whose write left a marker was
# written by a try of its batch that failed, and the host's retry of that batch either rewrites it (same
# name, a new write) or delivered its message: replay must not send it again (docs/FAILURE_HANDLING.md).
# An endpoint folder of the same name cannot clash: its letters are `<folder>/<hour>/<id>.json`.
PENDING_FOLDER = "_pending"
# Top-level folders of the container that hold no letters: those starting with `_` (the pending markers,
# parked messages `_parked/`, endpoint health `_health/`, and any the store adds later), except the
# unclassified letters' folder. Endpoint names cannot be these (`RESERVED_NAMES` in routing/routes/table.py).
RESERVED_FOLDER_PREFIX = "_"


def is_reserved_folder(folder: str) -> bool:
    """Whether a top-level folder of the dead-letter container holds something other than letters."""
    return folder.startswith(RESERVED_FOLDER_PREFIX) and folder != UNCLASSIFIED_FOLDER


def in_reserved_folder(name: str) -> bool:
    """Whether a blob name lies in a folder that holds no letters (`_pending/...`, `_parked/...`)."""
    folder, slash, _rest = name.partition("/")
    return bool(slash) and is_reserved_folder(folder)


class DeadLetterStoreError(RoutingError):
    """The dead-letter store could not keep every letter of a batch: the batch must fail (and be retried)."""


def public_url(url: str) -> str:
    """A storage URL fit to print: no query string (a SAS token is one) and no user information."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")


class LetterNameError(RoutingError):
    """A blob or container name from a person that would leave the dead-letter container."""


# Azure's rule for container names: 3-63 lower-case letters, digits and single hyphens, starting and
# ending with a letter or digit (the special `$root`, `$logs`, `$web` hold no letters).
_CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
# In a letter name: a backslash (some tools read it as `/`), `%` (an encoded `.` or `/` decodes on the
# way), `?` and `#` (they end the path of the URL), control characters.
_BAD_LETTER_CHARS = re.compile(r"[\\%?#\x00-\x1f\x7f]")


def check_container_name(name: str) -> None:
    """Refuse a container name Azure would not take: one with `/` or `..` could address another container."""
    if not _CONTAINER_NAME.match(name):
        raise LetterNameError(
            f"'{name}' is not a container name: 3-63 lower-case letters, digits and single hyphens, "
            "starting and ending with a letter or digit"
        )


def check_letter_name(name: str) -> None:
    """Refuse a letter name that could reach outside its container: a leading `/`, a `.` or `..` (or
    empty) segment, a backslash, `%` (URL-encoded traversal), `?`, `#` or control characters; and one in a
    folder that holds no letters (`_pending/...`: a command must never show or delete those as letters).
    Letter names (`<endpoint>/<yyyy>/<mm>/<dd>/<hh>/<id>.json`) never contain any of these."""
    problem = None
    if not name.strip():
        problem = "it is empty"
    elif name.startswith("/"):
        problem = "it starts with '/'"
    elif match := _BAD_LETTER_CHARS.search(name):
        problem = f"it contains {match.group()!r}"
    elif any(segment in ("", ".", "..") for segment in name.split("/")):
        problem = "it has an empty, '.' or '..' part"
    elif in_reserved_folder(name):
        problem = f"'{name.split('/', 1)[0]}/' holds no dead letters"
    if problem is not None:
        raise LetterNameError(
            f"{name!r} is not a dead letter's name ({problem}): give the name as "
            "`python -m routing deadletters list` shows it, e.g. 'raw/2026/11/26/09/<id>.json'"
        )


# A secret a storage error or a connection can carry: a SAS signature, an account or access key.
_SECRET = re.compile(r"(?i)\b(sig|AccountKey|SharedAccessKey|SharedAccessSignature)=([^&;\s'\"]+)")


def redact(text: str) -> str:
    """`text` with every SAS signature and key replaced by `***`: SDK errors quote request URLs."""
    return _SECRET.sub(lambda m: f"{m.group(1)}=***", text)


def is_container_missing(error: ResourceNotFoundError) -> bool:
    """Whether the SDK's not-found error is about the container (rather than one blob in it)."""
    return bool(getattr(error, "error_code", None) == blob_sdk().StorageErrorCode.CONTAINER_NOT_FOUND)


class BlobDeadLetters:
    """Dead letters in Azure Blob Storage, one blob per letter. Writing raises on any failure, so the
    function fails and the batch is retried rather than checkpointed with letters lost."""

    def __init__(self, container: ContainerClient, *, clock: Callable[[], datetime] | None = None) -> None:
        self.container = container
        self.clock = clock or (lambda: datetime.now(UTC))
        # The account's URL: the container's without its last part (the container's name) and query.
        self.account = public_url(container.url).rsplit("/", 1)[0]
        self.where = f"container '{container.container_name}' at {self.account}"
        # Letters this process uploaded (or tried to) in writes that failed: name -> write id. A later
        # write deletes those whose message its batch delivered (the retry of the failed batch).
        self._unconfirmed: dict[str, str] = {}
        # Writes of this process that failed: their markers go once none of their letters is unconfirmed.
        self._failed_writes: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, setting: str, container: str, env: Mapping[str, str] | None = None) -> BlobDeadLetters:
        connection = resolve(setting, "blobServiceUri", env)
        if connection.secret:
            service = blob_sdk().BlobServiceClient.from_connection_string(connection.secret, **client_options())
        else:
            assert connection.address is not None
            service = blob_sdk().BlobServiceClient(
                connection.address, credential=connection.credential(), **client_options()
            )
        return cls(service.get_container_client(container))

    def _put(self, name: str, data: bytes) -> None:
        """Upload one blob; a container that is missing (never made, or deleted since) is created first.
        Nothing about the container is cached: a container deleted under a running process is made again."""

        def upload() -> None:
            self.container.upload_blob(
                name,
                data,
                overwrite=True,
                content_settings=blob_sdk().ContentSettings(content_type="application/json"),
                timeout=SERVER_TIMEOUT_SECONDS,
            )

        try:
            upload()
        except ResourceNotFoundError as exc:
            if not is_container_missing(exc):
                raise
            try:
                self.container.create_container(timeout=SERVER_TIMEOUT_SECONDS)
            except ResourceExistsError as exists:
                if getattr(exists, "error_code", None) == blob_sdk().StorageErrorCode.CONTAINER_BEING_DELETED:
                    raise DeadLetterStoreError(
                        f"{self.where} is being deleted; it cannot be made again until the service has "
                        "finished (usually within a minute): the batch fails and the host retries it"
                    ) from exists
                # Made meanwhile by another write: upload again.
            upload()

    def _remove(self, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.container.delete_blob(name, timeout=SERVER_TIMEOUT_SECONDS)

    def write(self, letters: Sequence[DeadLetter], *, delivered: Delivered = ()) -> None:
        """Keep every letter, or raise `DeadLetterStoreError` within `WRITE_FAILURE_BUDGET_SECONDS`.

        `delivered`: what the batch delivered, per endpoint name. A letter an earlier, failed write of this
        process left for one of those messages is stale (the retry delivered it) and is deleted."""
        if letters:
            self._write(letters)
        self._forget(delivered)

    def _write(self, letters: Sequence[DeadLetter]) -> None:
        write_id = uuid.uuid4().hex
        when = self.clock()
        named = [(blob_name(letter), letter) for letter in letters]
        try:
            # The marker goes first and is removed last: a letter of this write found while the marker is
            # there is not (yet) a letter anyone may replay.
            self._put(f"{PENDING_FOLDER}/{write_id}", b"{}")
        except AzureError as exc:
            with self._lock:
                self._failed_writes.add(write_id)  # no answer is not no marker: remove it once settled
            raise self._failed(0, len(letters), exc) from exc
        stop = threading.Event()
        started: list[str] = []

        def upload(item: tuple[str, DeadLetter]) -> None:
            name, letter = item
            if stop.is_set():
                return  # an earlier upload failed: the write fails anyway, do not spend more time
            started.append(name)
            data = orjson.dumps({**blob_record(letter, when), "write": write_id}, option=orjson.OPT_INDENT_2)
            try:
                # Same letter, same name (message id and enqueued hour, not the clock): a batch retried after
                # a partial write, or after the hour turned, overwrites rather than duplicates.
                self._put(name, data)
            except BaseException:
                stop.set()
                raise

        failure: BaseException | None = None
        with ThreadPoolExecutor(min(WRITE_CONCURRENCY, len(named)), thread_name_prefix="deadletter") as pool:
            futures = [pool.submit(upload, item) for item in named]
            for future in futures:
                if (error := future.exception()) is not None and failure is None:
                    failure = error
        if failure is None:
            try:
                self._remove(f"{PENDING_FOLDER}/{write_id}")
            except AzureError as exc:
                failure = exc
        with self._lock:
            for name, _letter in named:
                self._unconfirmed.pop(name, None)  # rewritten now: whatever an earlier try left is replaced
            if failure is not None:
                # Uploaded, or perhaps uploaded (no answer): the retry must settle each of them.
                self._unconfirmed.update(dict.fromkeys(started, write_id))
                self._failed_writes.add(write_id)
        if failure is not None:
            raise self._failed(len(started), len(named), failure) from failure

    def _failed(self, tried: int, total: int, error: BaseException) -> DeadLetterStoreError:
        reason = redact(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
        return DeadLetterStoreError(
            f"the dead-letter store ({self.where}) could not keep the batch's dead letters "
            f"({tried} of {total} tried before it gave up): {reason}; the batch fails and the host retries it "
            "(check that the storage account is reachable and the app may write blobs)"
        )

    def _forget(self, delivered: Delivered) -> None:
        with self._lock:
            if not self._failed_writes:
                return
            unconfirmed = dict(self._unconfirmed)
        stale = (
            [name for message in delivered if (name := delivered_name(message)) in unconfirmed] if unconfirmed else []
        )
        for name in stale:
            try:
                self._remove(name)
            except AzureError:
                # Still recognisable: its write's marker stays, so replay keeps it; a later batch tries again.
                # The first failure ends the clean-up: a store in trouble must not cost a request budget each.
                log.warning("could not delete the stale dead letter %s in %s", name, self.where, exc_info=True)
                return
            with self._lock:
                self._unconfirmed.pop(name, None)
        with self._lock:
            settled = self._failed_writes - set(self._unconfirmed.values())
        for write_id in settled:
            # Every letter that write left is settled (written again or deleted): its marker may go.
            try:
                self._remove(f"{PENDING_FOLDER}/{write_id}")
            except AzureError:
                log.warning("could not delete the pending marker of write %s in %s", write_id, self.where)
                continue
            with self._lock:
                self._failed_writes.discard(write_id)

    def names(self, endpoint: str | None = None, *, missing_ok: bool = True) -> list[str]:
        """Blob names of the letters (of one endpoint's folder, case-insensitively), oldest enqueued hour
        first within each endpoint folder (the names sort by time), undated letters last. Folders that
        hold no letters (`is_reserved_folder`) are not listed at all, however much they hold. A container
        that does not exist has no letters, or, with `missing_ok=False`, raises ResourceNotFoundError."""
        wanted = endpoint.strip().lower() if endpoint is not None else None
        try:
            names: list[str] = []
            for item in self.container.walk_blobs(delimiter="/"):
                folder = item.name.rstrip("/")
                if item.name.endswith("/"):  # a folder (BlobPrefix): an endpoint's, or a reserved one
                    if is_reserved_folder(folder) or (wanted is not None and folder.lower() != wanted):
                        continue
                    names.extend(b.name for b in self.container.list_blobs(name_starts_with=item.name))
                elif wanted is None:
                    names.append(item.name)  # not a letter's name: listed, so that it is reported
        except ResourceNotFoundError:
            if missing_ok:
                return []  # no container yet: nothing was ever dead-lettered
            raise
        return sorted(names)

    def exists(self, name: str) -> bool:
        """Whether the letter is there; raises ResourceNotFoundError when the container is not."""
        try:
            self.container.get_blob_client(name).get_blob_properties(timeout=SERVER_TIMEOUT_SECONDS)
        except ResourceNotFoundError as exc:
            if is_container_missing(exc):
                raise
            return False
        return True

    def record_attempt(self, name: str, error: str) -> None:
        """Add a delivery attempt (now, `error`) to a letter and write it back, unless it changed since it
        was read (a write of the pipeline, or someone's replay): then ResourceModifiedError, and the
        newer letter stands."""
        downloader = self.container.download_blob(name, timeout=SERVER_TIMEOUT_SECONDS)
        record = orjson.loads(downloader.readall())
        record["attempts"] = [*(record.get("attempts") or []), {"time": rfc3339(self.clock()), "error": error}]
        self.container.upload_blob(
            name,
            orjson.dumps(record, option=orjson.OPT_INDENT_2),
            overwrite=True,
            content_settings=blob_sdk().ContentSettings(content_type="application/json"),
            etag=downloader.properties.etag,
            match_condition=MatchConditions.IfNotModified,
            timeout=SERVER_TIMEOUT_SECONDS,
        )

    def pending_writes(self) -> set[str]:
        """Ids of the writes under way or failed (their markers): their letters are not to be replayed."""
        try:
            return {
                b.name.split("/", 1)[1]
                for b in self.container.list_blobs(name_starts_with=f"{PENDING_FOLDER}/")
                if _is_marker(b.name)
            }
        except ResourceNotFoundError:
            return set()

    def read(self, name: str) -> dict[str, Any]:
        record: dict[str, Any] = orjson.loads(self.container.download_blob(name).readall())
        return record

    def delete(self, name: str) -> None:
        self.container.delete_blob(name, timeout=SERVER_TIMEOUT_SECONDS)

    def close(self) -> None:
        self.container.close()


def _is_marker(name: str) -> bool:
    folder, _, rest = name.partition("/")
    return folder == PENDING_FOLDER and bool(rest) and "/" not in rest


def delivered_name(message: Outgoing) -> str:
    """The blob name a letter for `message` has at its endpoint (`blob_name` of that letter)."""
    return f"{message.endpoint}/{hour_folder(message.event.ingress)}/{message.message_id}.json"


class LocalDeadLetters:
    """A local folder's dead letters (`<dir>/deadletter.jsonl`, as the local runner writes them), by the
    names their blobs would have (`record_name`), for the CLI to list, show, replay and delete.

    The file is read once. Deletions and attempts are kept until `save()`, which rewrites the file at once
    (a temporary file moved into place: a reader sees the old file or the new one), so a replay of many
    letters rewrites it once. Lines that are no letter (an events-file line that could not be read as a
    message, `raw`; anything unreadable) are kept as they are."""

    def __init__(self, directory: Path, *, clock: Callable[[], datetime] | None = None) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME
        self.clock = clock or (lambda: datetime.now(UTC))
        self.where = f"folder '{directory}'"
        # Every line of the file, in order: the bytes as read, and the letter's name and record (None for
        # a line that is no letter).
        self._lines: list[tuple[bytes, str | None, dict[str, Any] | None]] | None = None
        self._changed = False

    def _load(self) -> list[tuple[bytes, str | None, dict[str, Any] | None]]:
        if self._lines is None:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                data = b""  # a run without dead letters leaves no file
            self._lines = [self._parse(line) for line in data.splitlines() if line.strip()]
        return self._lines

    @staticmethod
    def _parse(line: bytes) -> tuple[bytes, str | None, dict[str, Any] | None]:
        try:
            record = orjson.loads(line)
            if isinstance(record, dict) and isinstance(record.get("original"), dict) and record.get("id"):
                return line, record_name(record), record
        except orjson.JSONDecodeError:
            pass
        return line, None, None

    def names(self, endpoint: str | None = None, *, missing_ok: bool = True) -> list[str]:
        """The letters' names, in name order (as the Blob store lists them); `missing_ok` is the Blob
        store's (a folder without the file has no letters)."""
        wanted = endpoint.strip().lower() if endpoint is not None else None
        found = {n for _line, n, _r in self._load() if n is not None}
        return sorted(n for n in found if wanted is None or n.split("/", 1)[0].lower() == wanted)

    def others(self) -> dict[str, str]:
        """The lines that are no letter (`line N` -> what it is): they cannot be shown or replayed by name."""
        out: dict[str, str] = {}
        for number, (line, name, _record) in enumerate(self._load(), start=1):
            if name is not None:
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = None
            if isinstance(record, dict) and "raw" in record:
                out[f"line {number}"] = f"an events-file line that could not be read ({record.get('reason')})"
            else:
                out[f"line {number}"] = "not a dead letter (not a record of this version)"
        return out

    def _last(self, name: str) -> int:
        lines = self._load()
        for at in range(len(lines) - 1, -1, -1):
            if lines[at][1] == name:
                return at
        raise KeyError(name)

    def exists(self, name: str) -> bool:
        return any(n == name for _line, n, _r in self._load())

    def read(self, name: str) -> dict[str, Any]:
        """The letter's record (the last line of that name: a name written again is the same letter,
        rewritten, as a blob is overwritten); KeyError if there is none."""
        record = self._load()[self._last(name)][2]
        assert record is not None
        return record

    def pending_writes(self) -> set[str]:
        return set()  # a local run writes each letter once: no write is ever left half-done

    def delete(self, name: str) -> None:
        """Forget every line of the letter (until `save()`); KeyError if there is none."""
        self._last(name)
        self._lines = [entry for entry in self._load() if entry[1] != name]
        self._changed = True

    def record_attempt(self, name: str, error: str) -> None:
        """Add a delivery attempt (now, `error`) to the letter (until `save()`)."""
        at = self._last(name)
        _line, _name, record = self._load()[at]
        assert record is not None
        record = {
            **record,
            "attempts": [*(record.get("attempts") or []), {"time": rfc3339(self.clock()), "error": error}],
        }
        self._load()[at] = (orjson.dumps(record), name, record)
        self._changed = True

    def save(self) -> None:
        """Write the changes: the file rewritten whole and moved into place, or removed when it is empty."""
        if not self._changed:
            return
        lines = self._load()
        if not lines:
            self.path.unlink(missing_ok=True)
        else:
            staged = self.path.with_name(f".{FILE_NAME}.{uuid.uuid4().hex}")
            try:
                staged.write_bytes(b"".join(line + b"\n" for line, _n, _r in lines))
                staged.replace(self.path)
            finally:
                staged.unlink(missing_ok=True)
        self._changed = False

    def close(self) -> None:
        pass
