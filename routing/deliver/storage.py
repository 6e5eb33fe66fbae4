"""The Storage sender: IoT Hub's storage container endpoint, the cold path. Each ingress partition's
messages of a send go to one blob (more only above `MAX_BLOB_BYTES`), JSON lines in arrival order, one
record per message in the shape IoT Hub's JSON encoding writes (`storage_record`).

A blob is named by the endpoint's `fileNameFormat` (IoT Hub's tokens) filled from its first message:
the ingress (`{iothub}`), its partition, and the minute that message was enqueued on the ingress hub,
never the clock; then a suffix, the first message's sequence number. A retried batch therefore writes
the same names and overwrites what an earlier try wrote: it never doubles. The container is not
created (IoT Hub does not create it either): a missing one fails the messages for good, naming it.
Retries, failover to the secondary connection, time budgets and stop-the-line are `ClientSender`'s:
here an ingress partition plays the part of an order key, so a blob that fails holds back the later
blobs of its partition.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Hashable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings, ExponentialRetry, StorageErrorCode

from routing.connections import resolve
from routing.deliver.senders import ClientSender, KeyGroup, Prepared, Unsendable
from routing.model import RAW_TYPES, Outgoing
from routing.parking import partition_of
from routing.routes.table import FILE_NAME_TOKENS

# What one blob holds at most: sent as one Put Blob (the SDK splits only above 64 MiB), so a blob is
# there whole or not at all, and sent in well under a try's 10 s from a function in the account's region.
# A send holding more for one partition writes several blobs, each named after its own first message.
MAX_BLOB_BYTES = 8 * 1024 * 1024
# JSON lines: a JSON text per line (there is no registered type; this is the one in common use).
CONTENT_TYPE = "application/x-ndjson"
# The name of a message that carries no enqueued time (a line of an events file without one): the epoch,
# so that its name too is the same on every try.
_NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)
# IoT Hub's names, in a JSON-encoded blob's `SystemProperties`, of the ingress message's system properties
# (the Event Hubs annotations and AMQP properties the built-in endpoint carries them as).
SYSTEM_PROPERTY_NAMES = {
    "iothub-connection-device-id": "connectionDeviceId",
    "iothub-connection-module-id": "connectionModuleId",
    "iothub-connection-auth-method": "connectionAuthMethod",
    "iothub-connection-auth-generation-id": "connectionDeviceGenerationId",
    "correlation-id": "correlationId",
    "user-id": "userId",
    "content-encoding": "contentEncoding",
    "iothub-enqueuedtime": "enqueuedTime",
}
# Statuses no retry will cure: a bad request, a container (or account) not found, a body too large.
_PERMANENT_STATUSES = frozenset({400, 404, 405, 411, 413, 414})


def blob_name(file_name_format: str, first: Outgoing) -> str:
    """The blob that a send's messages from `first` on (in arrival order) are written to: the format's
    tokens filled from `first`, then `-<sequence number>` (`_<index>` when the blob starts inside an
    ingress message of several events), before the format's extension if it ends with one (`{mm}.json`)."""
    ingress = first.event.ingress
    moment = _enqueued(ingress.enqueued_time)
    values = {
        "{iothub}": ingress.source,
        "{partition}": partition_of(ingress.partition),
        "{YYYY}": f"{moment.year:04d}",
        "{MM}": f"{moment.month:02d}",
        "{DD}": f"{moment.day:02d}",
        "{HH}": f"{moment.hour:02d}",
        "{mm}": f"{moment.minute:02d}",
    }
    suffix = "-" + (str(ingress.sequence_number) if ingress.sequence_number is not None else first.event.message_id)
    if first.event.index:
        suffix += f"_{first.event.index}"
    # The extension: what follows the last token, from a dot on.
    last = max(file_name_format.rfind(token) + len(token) for token in FILE_NAME_TOKENS)
    tail = file_name_format[last:]
    dot = tail.find(".")
    stem, extension = (file_name_format, "") if dot < 0 else (file_name_format[: last + dot], tail[dot:])
    for token, value in values.items():
        stem = stem.replace(token, value)
        extension = extension.replace(token, value)
    return stem + suffix + extension


def _enqueued(text: str | None) -> datetime:
    if not text:
        return _NO_TIME
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return _NO_TIME
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def storage_record(message: Outgoing) -> dict[str, Any]:
    """A message as IoT Hub's JSON encoding writes it to a blob: `EnqueuedTimeUtc`, `Properties` (the
    application properties, enrichments included), `SystemProperties` (IoT Hub's names) and `Body`.

    The body is written as JSON where IoT Hub would (a JSON content type with UTF-8 content encoding,
    which IoT Hub requires of telemetry) and where the router made it (a Digital Twins event's envelope,
    UTF-8 JSON); otherwise as base64 text, as IoT Hub writes a message without them."""
    ingress = message.event.ingress
    system: dict[str, Any] = {"messageId": message.message_id}
    for name, value in ingress.system_properties.items():
        renamed = SYSTEM_PROPERTY_NAMES.get(name)
        if renamed is not None and value is not None:
            system[renamed] = value
    if message.content_type is not None:
        system["contentType"] = message.content_type
    if ingress.enqueued_time is not None:
        system.setdefault("enqueuedTime", ingress.enqueued_time)
    body: Any = None
    raw = message.event_type in RAW_TYPES  # as it came: JSON only if it says so, as IoT Hub writes it
    encoding = str(system.get("contentEncoding", "")).strip().lower().replace("-", "")
    if _is_json(message.content_type) and (not raw or encoding == "utf8"):
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(message.body)
    record: dict[str, Any] = {
        "EnqueuedTimeUtc": ingress.enqueued_time,
        "Properties": dict(message.properties),
        "SystemProperties": system,
        "Body": body if body is not None else base64.b64encode(message.body).decode("ascii"),
    }
    return record


class Blob:
    """The lines of one blob and their size."""

    __slots__ = ("lines", "size")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.size = 0


def _arrival(message: Outgoing) -> tuple[int, int]:
    return (message.event.ingress.sequence_number or 0, message.event.index)


class StorageSender(ClientSender[ContainerClient]):
    max_blob_bytes = MAX_BLOB_BYTES

    def _regroup(self, groups: Sequence[KeyGroup]) -> Sequence[KeyGroup]:
        """The messages of each ingress partition, in arrival order (the pipeline groups them per order key,
        which a blob does not keep apart), as one group each: a partition's blobs go out in order, and one
        that fails transiently holds back the partition's later ones."""
        by_partition: dict[tuple[str, str], list[Outgoing]] = {}
        for group in groups:
            for message in group.messages:
                ingress = message.event.ingress
                by_partition.setdefault((ingress.source, partition_of(ingress.partition)), []).append(message)
        return [
            KeyGroup(f"{source}/{partition}", tuple(sorted(messages, key=_arrival)))
            for (source, partition), messages in by_partition.items()
        ]

    def _new_client(self, setting: str) -> ContainerClient:
        connection = resolve(setting, "blobServiceUri", self.env)
        options: dict[str, Any] = {
            # The sender retries itself, see ClientSender; the SDK's own policy would retry for minutes.
            "retry_policy": ExponentialRetry(retry_total=0),
            # azure-core's transport waits 300 s for an answer by default; a try gets the sender's timeout.
            "connection_timeout": self.retry.timeout,
            "read_timeout": self.retry.timeout,
        }
        if connection.secret:
            service = BlobServiceClient.from_connection_string(connection.secret, **options)
        else:
            assert connection.address is not None
            service = BlobServiceClient(connection.address, credential=connection.credential(), **options)
        return service.get_container_client(self.endpoint.path)

    def _route(self, client: ContainerClient, key: str) -> Hashable:
        return key  # an ingress partition: its blobs in order, other partitions' at once on other lanes

    def _open(self, client: ContainerClient, route: Hashable) -> Blob:
        return Blob()

    def _add(self, blob: Blob, message: Outgoing) -> bool:
        try:
            line = orjson.dumps(storage_record(message)) + b"\n"
        except orjson.JSONEncodeError as error:
            # A property JSON cannot hold (an integer beyond 64 bits, nesting deeper than orjson writes).
            raise Unsendable(f"message cannot be written as a JSON line: {error}") from error
        if blob.size + len(line) > self.max_blob_bytes:
            return False  # full; or, for an empty blob, too large for any
        blob.lines.append(line)
        blob.size += len(line)
        return True

    def _too_large(self, message: Outgoing, blob: Blob) -> str:
        return f"message of {len(message.body)} bytes makes a record larger than a blob of {self.max_blob_bytes} bytes"

    def _transmit(self, client: ContainerClient, prepared: Prepared, timeout: float) -> None:
        blob: Blob = prepared.payload
        client.upload_blob(
            blob_name(self.endpoint.file_name_format, prepared.messages[0]),
            b"".join(blob.lines),
            overwrite=True,  # a retried batch replaces what an earlier try wrote
            content_settings=ContentSettings(content_type=CONTENT_TYPE),
            # The service's own limit for the operation, in whole seconds.
            timeout=max(1, int(timeout)),
        )

    def _is_refused(self, error: Exception) -> bool:
        # 403: a key that no longer signs (AuthenticationFailed), or an identity without the role
        # (AuthorizationPermissionMismatch): the other connection may be allowed.
        return isinstance(error, ClientAuthenticationError) or getattr(error, "status_code", None) == 403

    def _describe(self, error: Exception) -> tuple[str, bool]:
        status = getattr(error, "status_code", None)
        code = getattr(error, "error_code", None)
        code = getattr(code, "value", code)  # a StorageErrorCode, or the service's text for a code it lacks
        text = f"{type(error).__name__}: HTTP {status} {code}" if status else f"{type(error).__name__}: {error}"
        if code == StorageErrorCode.CONTAINER_NOT_FOUND:
            return (
                f"container '{self.endpoint.path}' was not found{self._account(error)}: the router does not "
                "create it (IoT Hub does not either); create it, then replay these dead letters",
                True,
            )
        return text, isinstance(error, HttpResponseError) and status in _PERMANENT_STATUSES

    def _account(self, error: Exception) -> str:
        """` at <account URL>`, from the request the error answers, without its query (a SAS would be there)."""
        request = getattr(getattr(error, "response", None), "request", None)
        url = str(getattr(request, "url", "") or "").split("?", 1)[0]
        account, found, _blob = url.partition(f"/{self.endpoint.path}/")
        return f" at {account}" if found else ""
