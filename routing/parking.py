"""Parked messages: what an endpoint cannot take yet, kept in order until it can.

A message an endpoint still fails after the short in-invocation tries (a transient fault), or that its
unhealthy endpoint was not even tried with, is *parked*: kept durably, and its order key is parked
**for that endpoint**. Every later message of the key for the endpoint is parked behind it, never
delivered ahead, until the redelivery (routing/redeliver.py) has delivered them all in order; other
keys and other endpoints go on. Order is per key within an ingress partition, as on the hubs: a device's
messages come through one partition.

Where: the dead-letter container, one blob per ingress batch and endpoint,
`_parked/<hub>/<partition>/<endpoint>/<first sequence number of the batch>.json`, holding that batch's
parked messages for the endpoint in order, each the dead-letter record (routing/deadletters.py, with its
attempts) and each distinct original message once (an Event Grid array of N events parked whole is one
body, not N). A retried batch writes the same name again: nothing is doubled.

What it costs (docs/FAILURE_HANDLING.md, "Parking"): the live pipeline keeps, per ingress partition, the
names and keys of what is parked there. It lists the partition's folder when it first meets the
partition, when a batch does not follow the one it routed last (another instance had the partition, or
the host retries), and before every batch while something is parked there (to see what the redelivery
released); it reads a blob only when it does not know it. With nothing parked, a batch that follows the
last one costs no storage call. Parking a batch's messages costs one write per endpoint.

Only the partition's owner adds parked messages for a key; the redelivery only removes them (or
rewrites a blob with fewer). So once the owner lists a partition and finds a key no longer parked, no
parked message of that key can appear behind its back, and delivering the key live again is safe.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson
from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from routing.deadletters import (
    SERVER_TIMEOUT_SECONDS,
    DeadLetterStoreError,
    blob_record,
    blob_sdk,
    redact,
    rfc3339,
)
from routing.model import DeadLetter

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

log = logging.getLogger(__name__)

PARKED_FOLDER = "_parked"
# The partition folder of messages that came without one (events files).
NO_PARTITION = "_"
# The code of a parked message's record; an expired one becomes a dead letter with code `expired`.
PARKED_CODE = "parked"

# (hub, partition, endpoint, order key): what a parked key is parked for.
ParkedKey = tuple[str, str, str, str]


class ParkingStoreError(DeadLetterStoreError):
    """The parked messages of a batch could not be kept: the batch must fail (and be retried)."""


def partition_of(value: str | None) -> str:
    return NO_PARTITION if value is None else str(value)


def partition_folder(hub: str, partition: str | None) -> str:
    return f"{PARKED_FOLDER}/{hub}/{partition_of(partition)}/"


def parked_name(
    hub: str, partition: str | None, endpoint: str, first_sequence: int | None, first_id: str, *, replayed: bool = False
) -> str:
    """The blob of one batch's parked messages for one endpoint: the same for the same batch, so a retried
    batch overwrites it. A batch without sequence numbers (events files) is named by its first message, and
    dead letters a replay parks by theirs, apart from every batch's name."""
    if replayed:
        batch = f"replay-{first_id}"
    else:
        batch = f"{first_sequence:020d}" if first_sequence is not None else f"x-{first_id}"
    return f"{partition_folder(hub, partition)}{endpoint}/{batch}.json"


def pack(records: Sequence[Mapping[str, Any]], **header: Any) -> bytes:
    """A parked blob: its records in order, each original message once (`originals`, referred to by index)."""
    originals: list[Any] = []
    index: dict[bytes, int] = {}
    messages = []
    for record in records:
        original = record["original"]
        text = orjson.dumps(original, option=orjson.OPT_SORT_KEYS)
        position = index.get(text)
        if position is None:
            position = index[text] = len(originals)
            originals.append(original)
        messages.append({**record, "original": position})
    return orjson.dumps({**header, "originals": originals, "messages": messages}, option=orjson.OPT_INDENT_2)


def unpack(data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A parked blob's header and its records, each with its original message again (a dead-letter record)."""
    content = orjson.loads(data)
    originals = content.pop("originals")
    records = [{**message, "original": originals[message["original"]]} for message in content.pop("messages")]
    return content, records


def _count(metadata: Mapping[str, str] | None) -> int | None:
    try:
        return int((metadata or {})[MESSAGES_METADATA])
    except (KeyError, ValueError):
        return None


def endpoint_of(name: str) -> str:
    """The endpoint a parked blob is for, from its name (`_parked/<hub>/<partition>/<endpoint>/<batch>.json`)."""
    return name.split("/")[3]


def record_key(record: Mapping[str, Any]) -> ParkedKey:
    original = record["original"]
    return (
        str(original["source"]),
        partition_of(original.get("partition")),
        str(record["endpoint"]),
        str(record["orderKey"]),
    )


def record_position(record: Mapping[str, Any]) -> tuple[int, int]:
    original = record["original"]
    return (int(original.get("sequenceNumber") or 0), int(record.get("index") or 0))


class Listed(NamedTuple):
    """A parked blob as a listing shows it: its ETag, when it was created (a rewrite keeps the time: no
    record in it was parked before), and how many messages it holds (its metadata; None if unknown)."""

    etag: str
    created: datetime
    messages: int | None


# The metadata of a parked blob that says how many messages it holds (read from listings: counts for free).
MESSAGES_METADATA = "messages"


@dataclass(slots=True)
class ParkedBlob:
    """One parked blob as read: its name, the ETag it was read at, and its records in order."""

    name: str
    etag: str
    header: dict[str, Any]
    records: list[dict[str, Any]]


class ParkStore(Protocol):
    """Where parked blobs are kept: Blob Storage when deployed, memory for a local run."""

    where: str

    def names(self, prefix: str = ...) -> dict[str, str]: ...

    def listing(self, prefix: str = ...) -> dict[str, Listed]: ...

    def read(self, name: str) -> ParkedBlob | None: ...

    def read_all(self, names: Iterable[str]) -> list[ParkedBlob]: ...

    def snapshot(self, prefix: str = ...) -> list[ParkedBlob]: ...

    def write(self, name: str, data: bytes, *, etag: str | None = None, messages: int | None = None) -> str: ...

    def delete(self, name: str, *, etag: str | None = None) -> None: ...


class MemoryParking:
    """Parked blobs in this process: the local runner's (`routing run --fail`), where the run is the
    process. Same contract as `BlobParking`, ETags and creation times included."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self.where = "memory"
        self._blobs: dict[str, tuple[bytes, str, datetime, int | None]] = {}
        self._versions = 0
        self._lock = threading.Lock()

    def names(self, prefix: str = f"{PARKED_FOLDER}/") -> dict[str, str]:
        return {name: listed.etag for name, listed in self.listing(prefix).items()}

    def listing(self, prefix: str = f"{PARKED_FOLDER}/") -> dict[str, Listed]:
        with self._lock:
            return {
                n: Listed(etag, created, count)
                for n, (_d, etag, created, count) in self._blobs.items()
                if n.startswith(prefix)
            }

    def read(self, name: str) -> ParkedBlob | None:
        with self._lock:
            found = self._blobs.get(name)
        if found is None:
            return None
        header, records = unpack(found[0])
        return ParkedBlob(name=name, etag=found[1], header=header, records=records)

    def read_all(self, names: Iterable[str]) -> list[ParkedBlob]:
        return [blob for blob in map(self.read, names) if blob is not None]

    def snapshot(self, prefix: str = f"{PARKED_FOLDER}/") -> list[ParkedBlob]:
        return self.read_all(sorted(self.names(prefix)))

    def write(self, name: str, data: bytes, *, etag: str | None = None, messages: int | None = None) -> str:
        with self._lock:
            current = self._blobs.get(name)
            if etag is not None and (current is None or current[1] != etag):
                raise ResourceModifiedError("the parked blob changed meanwhile")
            self._versions += 1
            created = current[2] if current is not None else self.clock()
            self._blobs[name] = (data, str(self._versions), created, messages)
            return str(self._versions)

    def delete(self, name: str, *, etag: str | None = None) -> None:
        with self._lock:
            current = self._blobs.get(name)
            if current is None:
                return
            if etag is not None and current[1] != etag:
                raise ResourceModifiedError("the parked blob changed meanwhile")
            del self._blobs[name]


class BlobParking:
    """The parked blobs, in the dead-letter container (its client, with the dead-letter store's time budget)."""

    def __init__(self, container: ContainerClient) -> None:
        self.container = container
        self.where = f"container '{container.container_name}'"

    def names(self, prefix: str = f"{PARKED_FOLDER}/") -> dict[str, str]:
        """Blob name -> ETag of the parked blobs under `prefix`."""
        return {name: listed.etag for name, listed in self.listing(prefix).items()}

    def listing(self, prefix: str = f"{PARKED_FOLDER}/") -> dict[str, Listed]:
        """The parked blobs under `prefix` as the listing shows them (one request per 5,000, metadata
        included)."""
        try:
            return {
                b.name: Listed(str(b.etag), b.creation_time or b.last_modified, _count(b.metadata))
                for b in self.container.list_blobs(name_starts_with=prefix, include=["metadata"])
            }
        except ResourceNotFoundError:
            return {}

    def read(self, name: str) -> ParkedBlob | None:
        try:
            download = self.container.download_blob(name, timeout=SERVER_TIMEOUT_SECONDS)
            data = download.readall()
        except ResourceNotFoundError:
            return None
        header, records = unpack(data)
        return ParkedBlob(name=name, etag=str(download.properties.etag), header=header, records=records)

    def write(self, name: str, data: bytes, *, etag: str | None = None, messages: int | None = None) -> str:
        """Put the blob (only if it is still at `etag`, when given), saying in its metadata how many
        `messages` it holds; its new ETag. Raises `ResourceModifiedError` when it changed meanwhile."""
        options: dict[str, Any] = {}
        if etag is not None:
            options = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
        if messages is not None:
            options["metadata"] = {MESSAGES_METADATA: str(messages)}

        def upload() -> str:
            result = self.container.get_blob_client(name).upload_blob(
                data,
                overwrite=True,
                content_settings=blob_sdk().ContentSettings(content_type="application/json"),
                timeout=SERVER_TIMEOUT_SECONDS,
                **options,
            )
            return str(result["etag"])

        try:
            return upload()
        except ResourceNotFoundError:
            if etag is not None:
                raise ResourceModifiedError("the parked blob was removed meanwhile") from None
            with contextlib.suppress(ResourceExistsError):
                self.container.create_container(timeout=SERVER_TIMEOUT_SECONDS)
            return upload()

    def delete(self, name: str, *, etag: str | None = None) -> None:
        """Remove the blob (only if it is still at `etag`, when given). Raises `ResourceModifiedError` when
        it changed meanwhile; one already gone is fine."""
        options: dict[str, Any] = {}
        if etag is not None:
            options = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
        with contextlib.suppress(ResourceNotFoundError):
            self.container.delete_blob(name, timeout=SERVER_TIMEOUT_SECONDS, **options)

    def snapshot(self, prefix: str = f"{PARKED_FOLDER}/") -> list[ParkedBlob]:
        """Every parked blob under `prefix`, read (one that vanished meanwhile is left out)."""
        return self.read_all(sorted(self.names(prefix)))

    def read_all(self, names: Iterable[str]) -> list[ParkedBlob]:
        """These parked blobs, read, in the order given (one that vanished meanwhile is left out)."""
        blobs = []
        for name in names:
            blob = self.read(name)
            if blob is not None:
                blobs.append(blob)
        return blobs


@dataclass(slots=True)
class _View:
    """What is parked in one ingress partition, as this process last listed it."""

    blobs: dict[str, tuple[str, frozenset[ParkedKey]]] = field(default_factory=dict)
    # The sequence number a batch that follows the last one routed here starts at.
    next_sequence: int | None = None

    @property
    def keys(self) -> frozenset[ParkedKey]:
        return frozenset().union(*(keys for _etag, keys in self.blobs.values())) if self.blobs else frozenset()


class Parking:
    """The live pipeline's side: which keys are parked, per ingress partition, and parking more."""

    def __init__(self, store: ParkStore, *, clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.clock = clock or (lambda: datetime.now(UTC))
        self._views: dict[tuple[str, str], _View] = {}
        self._lock = threading.Lock()
        self.listings = 0  # folder listings made (for tests and the benchmark: the cost of parking)

    def parked(self, hub: str, partition: str | None, first_sequence: int | None) -> frozenset[ParkedKey]:
        """The keys parked in this ingress partition, for a batch starting at `first_sequence`."""
        where = (hub, partition_of(partition))
        with self._lock:
            view = self._views.setdefault(where, _View())
            follows = first_sequence is not None and view.next_sequence == first_sequence
            if follows and not view.blobs:
                return frozenset()
        try:
            self._refresh(view, hub, partition)
        except AzureError as exc:
            raise self._failed("could not list the parked messages", exc) from exc
        return view.keys

    def _refresh(self, view: _View, hub: str, partition: str | None) -> None:
        listed = self.store.names(partition_folder(hub, partition))
        self.listings += 1
        known = dict(view.blobs)
        fresh: dict[str, tuple[str, frozenset[ParkedKey]]] = {}
        for name, etag in listed.items():
            cached = known.get(name)
            if cached is not None and cached[0] == etag:
                fresh[name] = cached
                continue
            blob = self.store.read(name)
            if blob is not None:
                fresh[name] = (blob.etag, frozenset(record_key(r) for r in blob.records))
        with self._lock:
            view.blobs = fresh

    def park(
        self,
        letters: Sequence[DeadLetter],
        *,
        hub: str,
        partition: str | None,
        first_sequence: int | None,
        endpoint: str,
        replayed: bool = False,
    ) -> str:
        """Keep `letters` (one endpoint's parked messages of one batch, in order) as one blob, or raise
        `ParkingStoreError`; their keys are parked from then on."""
        assert letters and all(letter.message is not None for letter in letters)
        first = letters[0].message
        assert first is not None
        name = parked_name(hub, partition, endpoint, first_sequence, first.message_id, replayed=replayed)
        when = self.clock()
        records = [blob_record(letter, when, cut=False) | {"parkedAt": rfc3339(when)} for letter in letters]
        data = pack(records, hub=hub, partition=partition_of(partition), endpoint=endpoint)
        try:
            etag = self.store.write(name, data, messages=len(records))
        except AzureError as exc:
            raise self._failed(f"could not park {len(letters)} message(s) for '{endpoint}'", exc) from exc
        keys = frozenset(record_key(r) for r in records)
        with self._lock:
            self._views.setdefault((hub, partition_of(partition)), _View()).blobs[name] = (etag, keys)
        return name

    def park_replayed(self, letters: Sequence[DeadLetter]) -> str:
        """Park dead letters a replay found behind a parked key (all of one endpoint and partition)."""
        first = letters[0]
        assert first.ingress is not None and first.endpoint is not None
        return self.park(
            letters,
            hub=first.ingress.source,
            partition=first.ingress.partition,
            first_sequence=None,
            endpoint=first.endpoint,
            replayed=True,
        )

    def routed(self, hub: str, partition: str | None, next_sequence: int | None) -> None:
        """A batch of this partition is done (everything in it delivered, parked or dead-lettered)."""
        with self._lock:
            self._views.setdefault((hub, partition_of(partition)), _View()).next_sequence = next_sequence

    def _failed(self, what: str, error: BaseException) -> ParkingStoreError:
        reason = redact(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
        return ParkingStoreError(
            f"the parking store ({self.store.where}) {what}: {reason}; the batch fails and the host retries it "
            "(check that the storage account is reachable and the app may write blobs)"
        )


def keys_of(blobs: Iterable[ParkedBlob]) -> dict[ParkedKey, int]:
    """How many messages are parked per key."""
    counts: dict[ParkedKey, int] = {}
    for blob in blobs:
        for record in blob.records:
            key = record_key(record)
            counts[key] = counts.get(key, 0) + 1
    return counts
