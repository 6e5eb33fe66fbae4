"""The benchmark corpus, generated in memory: interleaved IoT Hub telemetry from many devices, and every
Digital Twins event type in every wire form the router reads, with bodies of about 300 bytes.

Messages are made as the Functions worker hands them over (`tests.conftest.worker_batch`, the library's
own converter) and turned into `IngressMessage`s by the router's own adapter, so every stage sees what
production sees. The same messages can be written as a local-runner events file.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from routing.ingest.ingress import from_eventhub_events
from routing.model import IngressMessage
from tests.conftest import WorkerEvent, worker_batch

TWIN_TYPES = ("TopologyOperation", "SpaceChange", "SensorChange", "UdfCustom")
WIRE_FORMS = ("type-property", "event-grid", "event-grid-array", "cloudevents-binary", "cloudevents-structured")
# Today's Digital Twins (v2) events, as the service puts them on an Event Hub (CloudEvents binary mode)
# or as a structured CloudEvent; telemetry only in binary mode, its twin named in its source.
V2_TYPES = (
    "Microsoft.DigitalTwins.Twin.Create",
    "Microsoft.DigitalTwins.Twin.Update",
    "Microsoft.DigitalTwins.Twin.Delete",
    "Microsoft.DigitalTwins.Relationship.Create",
    "Microsoft.DigitalTwins.Relationship.Update",
    "Microsoft.DigitalTwins.Relationship.Delete",
    "microsoft.iot.telemetry",
)
V2_FORMS = ("v2-binary", "v2-structured")
ADT_HOST = "contoso.api.weu.digitaltwins.azure.net"
MODEL = "dtmi:contoso:Room;1"
# Events per Event Grid array (as Event Grid delivers to an Event Hub).
ARRAY_LENGTH = 2
PARTITIONS = 4
# Half telemetry, half Digital Twins events (spread evenly over the 4 classic types x 5 wire forms and
# the 7 v2 types x 2 forms).
TELEMETRY_SHARE = 0.5
BASE_TIME = "2026-11-26T09:00:00"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _time(n: int) -> str:
    return f"{BASE_TIME}.{n % 1000:03d}0000Z"


def device_name(n: int) -> str:
    return f"building-7-floor-{n % 12:02d}-sensor-{n:06d}"


def telemetry_event(rng: random.Random, device: str, seq: int) -> WorkerEvent:
    """IoT Hub telemetry: JSON body of ~300 bytes, IoT Hub system properties, a few application ones."""
    body = {
        "deviceId": device,
        "messageId": seq,
        "timestamp": _time(seq),
        "temperature": round(rng.uniform(15, 30), 2),
        "humidity": round(rng.uniform(30, 60), 1),
        "pressure": round(rng.uniform(990, 1030), 1),
        "co2": rng.randint(400, 1200),
        "battery": rng.randint(10, 100),
        "firmware": "2.14.3",
        "location": {"building": "B7", "floor": rng.randint(0, 11), "room": f"R{rng.randint(100, 999)}"},
        "status": "ok",
        "samples": [round(rng.uniform(15, 30), 2) for _ in range(4)],
    }
    return WorkerEvent(
        body=orjson.dumps(body),
        properties={"schema": "environment/v2", "unit": "metric"},
        system_properties={
            "iothub-connection-device-id": device,
            "iothub-connection-auth-method": '{"scope":"device","type":"sas","issuer":"iothub"}',
            "iothub-connection-auth-generation-id": "638672345678901234",
            "iothub-enqueuedtime": _time(seq),
            "iothub-message-source": "Telemetry",
            "content-type": "application/json",
            "content-encoding": "utf-8",
        },
        sequence_number=seq,
        offset=seq * 512,
        enqueued_time=_time(seq),
    )


def twin_data(rng: random.Random, event_type: str, n: int) -> dict[str, Any]:
    """The `data` of a first-service Digital Twins event of `event_type` (shapes from its docs)."""
    object_id = _uuid(rng)
    if event_type == "TopologyOperation":
        return {
            "SpacesToNotify": [_uuid(rng), _uuid(rng)],
            "Id": object_id,
            "Type": rng.choice(["Space", "Device", "Sensor"]),
            "AccessType": rng.choice(["Create", "Update", "Delete"]),
        }
    if event_type == "UdfCustom":
        payload = orjson.dumps({"alert": "temperature-high", "value": round(rng.uniform(25, 35), 1)}).decode()
        return {
            "TopologyObjectId": object_id,
            "ResourceType": "Space",
            "Payload": payload,
            "CorrelationId": _uuid(rng),
        }
    data: dict[str, Any] = {
        "Type": "Sensor" if event_type == "SensorChange" else "Space",
        "DataType": "Temperature",
        "Id": object_id,
        "Value": f"{rng.uniform(15, 30):.2f}",
        "PreviousValue": f"{rng.uniform(15, 30):.2f}",
        "EventTimestamp": _time(n),
        "MessageType": event_type,
        "Properties": {},
    }
    if event_type == "SpaceChange":
        data.update({"RawData": "[]", "transactionId": _uuid(rng), "CorrelationId": _uuid(rng)})
    return data


def _event_grid(rng: random.Random, event_type: str, n: int) -> dict[str, Any]:
    return {
        "id": _uuid(rng),
        "subject": event_type,
        "data": twin_data(rng, event_type, n),
        "eventType": event_type,
        "eventTime": _time(n),
        "dataVersion": "1.0",
        "metadataVersion": "1",
    }


def v2_data(rng: random.Random, event_type: str, twin: str) -> Any:
    """The data of a v2 event (shapes from the Digital Twins event notification docs)."""
    if event_type == "microsoft.iot.telemetry":
        return {"Temperature": round(rng.uniform(15, 30), 2), "Humidity": round(rng.uniform(30, 60), 1)}
    if event_type == "Microsoft.DigitalTwins.Twin.Update":
        value = round(rng.uniform(15, 30), 2)
        return {"modelId": MODEL, "patch": [{"value": value, "path": "/Temperature", "op": "replace"}]}
    if event_type.startswith("Microsoft.DigitalTwins.Twin."):
        return {"$dtId": twin, "$etag": f'W/"{_uuid(rng)}"', "Temperature": 21.0, "$metadata": {"$model": MODEL}}
    return {
        "$relationshipId": f"contains-{rng.randrange(1000)}",
        "$etag": f'W/"{_uuid(rng)}"',
        "$sourceId": twin,
        "$targetId": f"room-{rng.randrange(1000)}",
        "$relationshipName": "contains",
    }


def v2_event(rng: random.Random, event_type: str, form: str, seq: int) -> WorkerEvent:
    """One v2 event in `form`: binary (attributes as `cloudEvents:*` properties) or structured."""
    twin = f"floor-{rng.randrange(200):03d}"
    relationship = "Relationship" in event_type
    subject = f"{twin}/relationships/contains-{seq}" if relationship else twin
    source = ADT_HOST
    if event_type == "microsoft.iot.telemetry":
        form, source, subject = "v2-binary", f"{ADT_HOST}/digitaltwins/{twin}", ""
    attributes = {"id": _uuid(rng), "source": source, "type": event_type, "time": _time(seq)}
    if subject:
        attributes["subject"] = subject
    data = v2_data(rng, event_type, twin)
    if form == "v2-binary":
        properties = {f"cloudEvents:{k}": v for k, v in {"specversion": "1.0", **attributes}.items()}
        body: Any = data
    else:
        properties = {}
        body = {"specversion": "1.0", **attributes, "datacontenttype": "application/json", "data": data}
    return WorkerEvent(
        body=orjson.dumps(body),
        properties=properties,
        sequence_number=seq,
        offset=seq * 512,
        enqueued_time=_time(seq),
    )


def twin_event(rng: random.Random, event_type: str, form: str, seq: int) -> WorkerEvent:
    """One Digital Twins event of `event_type` in wire form `form`, as it arrives on the twins hub."""
    properties: dict[str, Any] = {}
    if form == "type-property":
        properties = {"Type": event_type, "CorrelationId": _uuid(rng), "ContentType": "application/json"}
        body: Any = twin_data(rng, event_type, seq)
    elif form == "event-grid":
        body = _event_grid(rng, event_type, seq)
    elif form == "event-grid-array":
        body = [_event_grid(rng, event_type, seq) for _ in range(ARRAY_LENGTH)]
    elif form == "cloudevents-binary":
        properties = {
            "cloudEvents:specversion": "1.0",
            "cloudEvents:type": f"Microsoft.DigitalTwins.{event_type}",
            "cloudEvents:id": _uuid(rng),
            "cloudEvents:source": "adt.westeurope.azuredigitaltwins.net",
            "cloudEvents:subject": f"twins/{event_type}",
            "cloudEvents:time": _time(seq),
            "content-type": "application/json",
        }
        body = twin_data(rng, event_type, seq)
    else:
        body = {
            "specversion": "1.0",
            "id": _uuid(rng),
            "source": "adt.westeurope.azuredigitaltwins.net",
            "type": f"Microsoft.DigitalTwins.{event_type}",
            "subject": f"twins/{event_type}",
            "time": _time(seq),
            "datacontenttype": "application/json",
            "data": twin_data(rng, event_type, seq),
        }
    return WorkerEvent(
        body=orjson.dumps(body),
        properties=properties,
        sequence_number=seq,
        offset=seq * 512,
        enqueued_time=_time(seq),
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """One trigger invocation's worth: which hub it came from, the partition, and the events."""

    source: str  # "telemetry" or "twins": the function that takes it
    partition: str
    events: tuple[WorkerEvent, ...]

    def worker(self) -> list[Any]:
        """The batch as the worker decodes it (fresh each call: the worker caches metadata per batch)."""
        return worker_batch(self.events, partition_id=self.partition)

    def ingress(self) -> list[IngressMessage]:
        return from_eventhub_events(self.worker(), source=self.source)


@dataclass(frozen=True, slots=True)
class Corpus:
    batches: tuple[Batch, ...]

    @property
    def messages(self) -> int:
        return sum(len(b.events) for b in self.batches)

    def only(self, source: str) -> Corpus:
        return Corpus(tuple(b for b in self.batches if b.source == source))

    def ingress_batches(self) -> list[list[IngressMessage]]:
        return [b.ingress() for b in self.batches]


def _chunks(events: Sequence[WorkerEvent], size: int) -> Iterator[tuple[WorkerEvent, ...]]:
    for start in range(0, len(events), size):
        yield tuple(events[start : start + size])


def generate(*, events: int, devices: int, batch_size: int, seed: int = 7) -> Corpus:
    """`events` messages, about half telemetry (from `devices` devices, interleaved at random) and half
    Digital Twins events cycling through every type and wire form; batched per hub as the triggers are."""
    rng = random.Random(seed)
    telemetry: list[WorkerEvent] = []
    twins: list[WorkerEvent] = []
    forms = [(t, f) for t in TWIN_TYPES for f in WIRE_FORMS] + [(t, f) for t in V2_TYPES for f in V2_FORMS]
    for _ in range(events):
        if rng.random() < TELEMETRY_SHARE:
            seq = len(telemetry)
            telemetry.append(telemetry_event(rng, device_name(rng.randrange(devices)), seq))
        else:
            seq = len(twins)
            event_type, form = forms[seq % len(forms)]
            make = v2_event if form in V2_FORMS else twin_event
            twins.append(make(rng, event_type, form, seq))
    tele_batches = [Batch("telemetry", str(i % PARTITIONS), c) for i, c in enumerate(_chunks(telemetry, batch_size))]
    twin_batches = [Batch("twins", str(i % PARTITIONS), c) for i, c in enumerate(_chunks(twins, batch_size))]
    # Interleave the two hubs' batches, as two functions running side by side would.
    batches: list[Batch] = []
    for i in range(max(len(tele_batches), len(twin_batches))):
        batches.extend(b[i] for b in (tele_batches, twin_batches) if i < len(b))
    return Corpus(tuple(batches))


def device_batch(*, batch_size: int, distinct: int, seed: int = 11, start: int = 0) -> Batch:
    """A telemetry batch whose events come from `distinct` devices (round-robin)."""
    rng = random.Random(seed)
    events = tuple(telemetry_event(rng, device_name(i % distinct), start + i) for i in range(batch_size))
    return Batch("telemetry", "0", events)


def event_line(event: WorkerEvent, *, partition: str) -> bytes:
    """The local runner's line form of a message (`bodyText`: the exact bytes, all UTF-8 here)."""
    return orjson.dumps(
        {
            "bodyText": event.body.decode("utf-8"),
            "properties": event.properties,
            "systemProperties": event.system_properties,
            "partition": partition,
            "sequenceNumber": event.sequence_number,
            "enqueuedTime": event.enqueued_time,
        }
    )
