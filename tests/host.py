"""Trigger input built the way the Functions host and the Python worker build it, so that function tests
see what production sees.

The host's Event Hubs extension (azure-sdk-for-net, `Microsoft.Azure.WebJobs.Extensions.EventHubs`,
`EventHubTriggerBindingStrategy.AddBindingData`) fills the trigger metadata of a batch with
`PartitionKeyArray` (string[]), `OffsetArray` (string[]), `SequenceNumberArray` (long[]),
`EnqueuedTimeUtcArray` (DateTime[]), `PropertiesArray`, `SystemPropertiesArray` and `PartitionContext`.
The host then turns each value into gRPC `TypedData`: a string[] becomes `collection_string` with the
null entries left out (so `PartitionKeyArray` is not aligned with the events), a long[] becomes
`collection_sint64`, anything else JSON (Newtonsoft). `EnqueuedTime.DateTime` of a `DateTimeOffset` has
no kind, so Newtonsoft writes it **without a time zone** (`2026-11-26T09:00:00.15`, trailing zeros of
the 7-digit fraction trimmed). Each system-properties dictionary is the event's AMQP system properties
(`x-opt-*` annotations, the properties section such as `content-type`, IoT Hub's `iothub-*`
annotations) plus `SequenceNumber`, `Offset` (a long), `PartitionKey` and `EnqueuedTimeUtc`.

The worker hands each value over as a `Datum` and the library's `EventHubTriggerConverter.decode`
turns the batch into `EventHubEvent`s: this module calls that converter, as the worker does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from azure.functions import EventHubEvent, meta
from azure.functions.eventhub import EventHubTriggerConverter

DEFAULT_ENQUEUED = datetime(2026, 11, 26, 9, 0, 0, 150000, tzinfo=UTC)


@dataclass
class WorkerEvent:
    """One event of a batch as it was on the ingress hub. `enqueued_time` is an instant (a naive value
    or text without an offset is UTC); `partition_key` None when the producer set none."""

    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)
    system_properties: dict[str, Any] = field(default_factory=dict)
    sequence_number: int = 0
    offset: int = 0
    enqueued_time: datetime | str = DEFAULT_ENQUEUED
    partition_key: str | None = None


def instant(value: datetime | str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def net_datetime(value: datetime | str, *, kind: str = "unspecified") -> str:
    """A .NET DateTime as Newtonsoft writes it: 7 fraction digits with the trailing zeros trimmed, and a
    zone only for a UTC-kind value (`EnqueuedTime.DateTime` has none; AMQP timestamps are UTC-kind)."""
    moment = instant(value)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}0".rstrip("0")
    if fraction:
        text += "." + fraction
    return text + ("Z" if kind == "utc" else "")


def _system_properties(event: WorkerEvent) -> dict[str, Any]:
    """`GetSystemPropertiesForBinding`: the AMQP system properties, then the four fields it sets."""
    amqp: dict[str, Any] = {
        "x-opt-sequence-number": event.sequence_number,
        "x-opt-offset": str(event.offset),
        "x-opt-enqueued-time": net_datetime(event.enqueued_time, kind="utc"),
    }
    if event.partition_key is not None:
        amqp["x-opt-partition-key"] = event.partition_key
    return {
        **amqp,
        **event.system_properties,
        "SequenceNumber": event.sequence_number,
        "Offset": event.offset,
        "PartitionKey": event.partition_key,
        "EnqueuedTimeUtc": net_datetime(event.enqueued_time),
    }


def trigger_metadata(events: Sequence[WorkerEvent], *, partition_id: str = "0") -> dict[str, meta.Datum]:
    """The batch's trigger metadata as the worker receives it from the host."""
    return {
        # string[] -> collection_string: the host leaves null entries out.
        "PartitionKeyArray": meta.Datum(
            SimpleNamespace(string=[e.partition_key for e in events if e.partition_key is not None]),
            "collection_string",
        ),
        "OffsetArray": meta.Datum(SimpleNamespace(string=[str(e.offset) for e in events]), "collection_string"),
        "SequenceNumberArray": meta.Datum(
            SimpleNamespace(sint64=[e.sequence_number for e in events]), "collection_sint64"
        ),
        "EnqueuedTimeUtcArray": meta.Datum(json.dumps([net_datetime(e.enqueued_time) for e in events]), "json"),
        "PropertiesArray": meta.Datum(json.dumps([e.properties for e in events]), "json"),
        "SystemPropertiesArray": meta.Datum(json.dumps([_system_properties(e) for e in events]), "json"),
        "PartitionContext": meta.Datum(
            json.dumps({
                "FullyQualifiedNamespace": "ingress.servicebus.windows.net",
                "EventHubName": "ingress",
                "ConsumerGroup": "router",
                "PartitionId": partition_id,
            }),
            "json",
        ),
    }  # fmt: skip


def worker_batch(events: Sequence[WorkerEvent], *, partition_id: str = "0") -> list[EventHubEvent]:
    """A batch decoded with the Functions library's own converter (`dataType: binary`, cardinality many),
    from host-shaped trigger metadata."""
    data = meta.Datum(SimpleNamespace(bytes=[e.body for e in events]), "collection_bytes")
    metadata = trigger_metadata(events, partition_id=partition_id)
    decoded = EventHubTriggerConverter.decode(data, trigger_metadata=metadata)
    assert isinstance(decoded, list)
    return decoded
