"""The floor `routing run` is measured against (issue #15, target 5): the router a competent user would
write with the standard library's `json` alone, for the benchmark's events file (`bench/memory.py`
`write_events`) and route files (`bench/routes.py`).

`python -m bench.run_baseline --events F --routes R --out D` writes what `python -m routing run` writes
for that corpus: `<out>/<endpoint>.jsonl`, one record per message sent (`output_record` in
routing/deliver/senders.py), with the same deterministic message ids (the UUID5 scheme of
routing/model.py), the same envelopes (routing/deliver/envelope.py) and, per batch of 100 lines, each
endpoint's messages grouped per order key in first-seen order, as the pipeline sends them.
tests/test_bench_run_baseline.py holds it to that.

It reads only what the corpus holds: telemetry, and the first Digital Twins service's four event types
in the five wire forms (a `Type` property, an Event Grid event and array of them, a binary and a
structured CloudEvent); routes by event type, no filters, no order key templates, no enrichments. What
it cannot read stops it, loudly, rather than be routed differently from the router (the corpus has no
bad lines, so there are no dead letters to write). Nothing of `routing` is imported: the ids, the
envelopes and the record are written out again here, as a user would.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO

SOURCE = "local"  # the runner's ingress name: it seeds the ids and names a CloudEvent's source
BATCH_SIZE = 100  # the runner's default batch (`--batch-size`)
ID_NAMESPACE = uuid.UUID("6f1d3c52-5a8e-4b8e-9d55-3a1f0c7e2b90")  # routing/model.py
SHAPE_NAMESPACE = uuid.UUID("0b7a4f2e-93c1-4d6a-8e25-c4f1a9d3e760")
CLASSIC = ("TopologyOperation", "SpaceChange", "SensorChange", "UdfCustom")
TELEMETRY = "DeviceMessages"
JSON = "application/json"
CLOUD_EVENT_JSON = "application/cloudevents+json; charset=utf-8"
TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(Z|[+-]\d\d:\d\d)?")
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_ID_SHA1 = hashlib.sha1(ID_NAMESPACE.bytes, usedforsecurity=False)


class Unsupported(Exception):
    """A line this router was not written for."""


def uuid5_text(digest: str) -> str:
    variant = "89ab"[int(digest[16], 16) & 3]
    return f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-{variant}{digest[17:20]}-{digest[20:32]}"


def event_id(partition: str, sequence: int, index: int) -> str:
    digest = _ID_SHA1.copy()
    digest.update(f"{SOURCE}|{partition}|{sequence}|{index}".encode())
    return uuid5_text(digest.hexdigest())


def shape_seed(envelope_format: str) -> bytes | None:
    """The seed of an endpoint's ids: none for the default shape (Event Grid schema, nothing added)."""
    if envelope_format == "EventGridSchema":
        return None
    text = json.dumps([envelope_format, None, []], ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return SHAPE_NAMESPACE.bytes + text.encode() + b"\n"


def timestamp(*candidates: str | None) -> str:
    for candidate in candidates:
        if candidate and (match := TIME.fullmatch(candidate)):
            text = candidate if candidate[10] == "T" else f"{candidate[:10]}T{candidate[11:]}"
            return text if match[1] else text + "Z"
    raise Unsupported(f"no RFC 3339 time among {candidates}")


class Endpoint:
    def __init__(self, spec: dict[str, Any], out: Path) -> None:
        self.name: str = spec["name"]
        self.type: str = spec["type"]
        self.format: str = spec.get("format", "EventGridSchema")
        if spec.get("filter") or spec.get("orderKey") or spec.get("enrichments") or spec.get("fallback"):
            raise Unsupported(f"endpoint {self.name}: only routes by event type are supported")
        self.seed = shape_seed(self.format)
        self.key_field = {"EventHub": "partitionKey", "ServiceBus": "sessionId"}.get(self.type)
        self.file: TextIO = (out / f"{self.name}.jsonl").open("w", encoding="utf-8")
        self.pending: dict[str, list[str]] = {}  # this batch's lines, per order key in first-seen order

    def message_id(self, own: str) -> str:
        if self.seed is None:
            return own
        return uuid5_text(hashlib.sha1(self.seed + own.encode(), usedforsecurity=False).hexdigest())


def load_routes(path: Path, out: Path) -> dict[str, list[Endpoint]]:
    by_type: dict[str, list[Endpoint]] = {}
    for spec in json.loads(path.read_text(encoding="utf-8")):
        if spec.get("enabled", True) is False:
            continue
        endpoint = Endpoint(spec, out)
        for name in spec["eventTypes"]:
            by_type.setdefault(name, []).append(endpoint)
    return by_type


def twin_event(line: dict[str, Any], index: int, event_type: str, data: Any, **fields: Any) -> dict[str, Any]:
    """A first-service Digital Twins event: what its envelope needs, keyed by its object id."""
    if event_type not in CLASSIC or not isinstance(data, dict):
        raise Unsupported(f"event type {event_type!r} with data {type(data).__name__}")
    key = data.get("TopologyObjectId" if event_type == "UdfCustom" else "Id")
    if not isinstance(key, str) or not key:
        raise Unsupported(f"{event_type} without an object id")
    own = event_id(line["partition"], line["sequenceNumber"], index)
    subject = fields.get("subject")
    if subject is None:
        subject = str(data.get("Type") or event_type) if event_type == "TopologyOperation" else event_type
    return {
        "type": event_type,
        "key": key,
        "own": own,
        "id": fields.get("id") or own,
        "subject": subject,
        "data": data,
        "time": timestamp(fields.get("time"), data.get("EventTimestamp"), line.get("enqueuedTime")),
        "dataVersion": fields.get("dataVersion") or "1.0",
        "source": fields.get("source"),
        "correlationId": fields.get("correlationId") or data.get("CorrelationId"),
    }


def classic_type(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def events_of(line: dict[str, Any], body: bytes) -> list[dict[str, Any]]:
    """The events of one line: telemetry (the body forwarded), or Digital Twins events in any wire form."""
    system, props = line.get("systemProperties") or {}, line.get("properties") or {}
    device = system.get("iothub-connection-device-id")
    if device:
        if system.get("iothub-message-source", "Telemetry").lower() != "telemetry":
            raise Unsupported("IoT Hub sources other than telemetry")
        own = event_id(line["partition"], line["sequenceNumber"], 0)
        return [{"type": TELEMETRY, "key": device, "own": own, "contentType": system.get("content-type")}]
    parsed = json.loads(body)
    if "Type" in props:
        correlation = props.get("CorrelationId")
        return [twin_event(line, 0, props["Type"], parsed, correlationId=correlation)]
    if "cloudEvents:type" in props:
        ce = {k[len("cloudEvents:") :]: v for k, v in props.items() if k.startswith("cloudEvents:")}
        if ce.get("specversion", "1.0") != "1.0" or ce.get("dataschema"):
            raise Unsupported("CloudEvents other than 1.0 without a dataschema")
        fields = {k: ce.get(k) for k in ("id", "subject", "time", "source")}
        return [twin_event(line, 0, classic_type(ce["type"]), parsed, **fields)]
    events = []
    for index, item in enumerate(parsed if isinstance(parsed, list) else [parsed]):
        if "specversion" in item:
            if item["specversion"] != "1.0" or item.get("dataschema"):
                raise Unsupported("CloudEvents other than 1.0 without a dataschema")
            fields = {k: item.get(k) for k in ("id", "subject", "time", "source")}
            events.append(twin_event(line, index, classic_type(item["type"]), item.get("data"), **fields))
        elif "eventType" in item and "data" in item and "topic" not in item:
            fields = {"id": item.get("id"), "subject": item.get("subject"), "time": item.get("eventTime")}
            fields["dataVersion"] = item.get("dataVersion")
            events.append(twin_event(line, index, classic_type(item["eventType"]), item["data"], **fields))
        else:
            raise Unsupported("a JSON body that is no event this router reads")
    return events


def envelope(event: dict[str, Any], envelope_format: str) -> dict[str, Any]:
    if envelope_format == "CloudEventSchemaV1_0":
        return {
            "specversion": "1.0",
            "id": event["id"],
            "source": event["source"] or "/routing/" + SOURCE,
            "type": event["type"],
            "subject": event["subject"],
            "time": event["time"],
            "datacontenttype": JSON,
            "data": event["data"],
        }
    return {
        "id": event["id"],
        "subject": event["subject"],
        "data": event["data"],
        "eventType": event["type"],
        "eventTime": event["time"],
        "dataVersion": event["dataVersion"],
        "metadataVersion": "1",
    }


def record(endpoint: Endpoint, event: dict[str, Any], **message: Any) -> str:
    """The runner's output line; `body` the value the message's bytes hold (parsed again only when the
    router never had it as a value: telemetry)."""
    out: dict[str, Any] = {"endpoint": endpoint.name, "endpointType": endpoint.type, "eventType": event["type"]}
    if endpoint.key_field:
        out[endpoint.key_field] = event["key"]
    out["messageId"] = endpoint.message_id(event["own"])
    out["contentType"] = message["contentType"]
    out["properties"] = message["properties"]
    out["bodyBase64"] = base64.b64encode(message["body"]).decode("ascii")
    out["body"] = message["value"]
    return _compact(out)


def route(line: dict[str, Any], by_type: dict[str, list[Endpoint]]) -> int:
    if "bodyText" in line:
        body = line["bodyText"].encode("utf-8")
    elif "bodyBase64" in line:
        body = base64.b64decode(line["bodyBase64"], validate=True)
    else:
        body = _compact(line["body"]).encode("utf-8")
    line.setdefault("partition", "0")
    line["partition"] = str(line["partition"])
    routed = 0
    for event in events_of(line, body):
        endpoints = by_type.get(event["type"], ())
        if event["type"] == TELEMETRY:
            value = json.loads(body)
            for endpoint in endpoints:
                if endpoint.type in ("EventHub", "Storage"):  # where the first service's telemetry may go
                    text = record(
                        endpoint,
                        event,
                        contentType=event["contentType"],
                        properties=line.get("properties") or {},
                        body=body,
                        value=value,
                    )
                    endpoint.pending.setdefault(event["key"], []).append(text)
                    routed += 1
            continue
        bodies: dict[str, tuple[bytes, dict[str, Any]]] = {}
        for endpoint in endpoints:
            made = bodies.get(endpoint.format)
            if made is None:
                value = envelope(event, endpoint.format)
                made = bodies[endpoint.format] = (_compact(value).encode("utf-8"), value)
            if endpoint.type == "EventGrid":
                properties: dict[str, Any] = {}
            else:
                properties = {"EventType": event["type"], "Subject": event["subject"]}
                if event["correlationId"]:
                    properties["CorrelationId"] = event["correlationId"]
            content_type = CLOUD_EVENT_JSON if endpoint.format == "CloudEventSchemaV1_0" else JSON
            text = record(endpoint, event, contentType=content_type, properties=properties, body=made[0], value=made[1])
            endpoint.pending.setdefault(event["key"], []).append(text)
            routed += 1
    return routed


def flush(endpoints: list[Endpoint]) -> None:
    for endpoint in endpoints:
        if endpoint.pending:
            endpoint.file.write("".join(text + "\n" for lines in endpoint.pending.values() for text in lines))
            endpoint.pending.clear()


def run(events: Path, routes: Path, out: Path, batch_size: int = BATCH_SIZE) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    by_type = load_routes(routes, out)
    endpoints = list({id(e): e for group in by_type.values() for e in group}.values())
    messages = sent = 0
    try:
        with events.open("rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                line = json.loads(raw)
                line.setdefault("sequenceNumber", line_number)
                sent += route(line, by_type)
                messages += 1
                if messages % batch_size == 0:
                    flush(endpoints)
        flush(endpoints)
    finally:
        for endpoint in endpoints:
            endpoint.file.close()
    return {"messages": messages, "sent": sent}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run_baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--routes", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    args = parser.parse_args(argv)
    try:
        summary = run(args.events, args.routes, args.out, args.batch_size)
    except Unsupported as exc:
        sys.exit(f"run_baseline: {exc}")
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
