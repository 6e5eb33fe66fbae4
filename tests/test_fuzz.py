"""Fuzzing the functions: whatever arrives on the ingress hubs (arbitrary bytes, JSON of any shape,
properties of odd types and names, arrays of events mixed with junk), `route_twins` and
`route_telemetry` neither crash nor lose a message. Each event ends as exactly one of: a line in an
endpoint's file, a dead letter with a reason, or an unrouted count in the batch report.

Input is built the way the Functions worker builds it (tests/conftest.py `worker_batch`); the
functions run in file mode (ROUTER_OUTPUT_DIR). The classifier is the oracle only for how many
events a message holds (it is pure, and tests/test_classify.py pins it).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import function_app
from routing import app as wiring
from routing.ingest.classify import classify
from routing.ingest.ingress import from_eventhub_events
from routing.model import Event, EventType, Rejection, shaped_message_id
from routing.pipeline import BatchReport
from routing.routes.table import parse_routes
from tests.conftest import WorkerEvent, worker_batch

# Each event type goes to one endpoint, except SpaceChange, which goes nowhere (unrouted).
ROUTES = [
    {"name": "raw", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "RAW", "path": "raw"},
    {"name": "twins", "type": "EventHub", "eventTypes": ["SensorChange", "TopologyOperation"], "connection": "T",
     "path": "t"},
    {"name": "udf", "type": "ServiceBus", "eventTypes": ["UdfCustom"], "connection": "U", "path": "u",
     "format": "CloudEventSchemaV1_0"},
]  # fmt: skip
SHAPES = {e.name: e.id_seed for e in parse_routes(ROUTES).endpoints}
ENDPOINT_OF = {
    EventType.DEVICE_MESSAGES: "raw",
    EventType.SENSOR_CHANGE: "twins",
    EventType.TOPOLOGY_OPERATION: "twins",
    EventType.UDF_CUSTOM: "udf",
}

# What the host can hand over: JSON values, integers within AMQP's 64 bits, finite numbers.
integers = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["", " ", "null", "0", "SensorChange", "Telemetry", "twin"]),
)
names = st.one_of(
    st.sampled_from(["Id", "id", "Type", "TopologyObjectId", "EventTimestamp", "CorrelationId", "Value", "data", ""]),
    st.text(max_size=6),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(names, children, max_size=3),
    max_leaves=10,
)
type_names = st.one_of(
    st.sampled_from(
        [
            "SensorChange",
            "spacechange",
            "TopologyOperation",
            "UdfCustom",
            "DeviceMessage",
            "DeviceMessages",
            "Microsoft.DigitalTwins.SensorChange",
            "Microsoft.DigitalTwins.Twin.Update",
            "",
            ".",
            "Nope",
        ]
    ),
    json_values,
)
ids = st.one_of(st.text(max_size=5), integers, st.none(), st.booleans(), st.just(""), json_values)
data = st.one_of(
    st.fixed_dictionaries({"Id": ids}, optional={"Type": json_values, "EventTimestamp": json_values}),
    st.fixed_dictionaries({"TopologyObjectId": ids}, optional={"Payload": json_values, "CorrelationId": json_values}),
    json_values,
)
event_grid = st.fixed_dictionaries(
    {"eventType": type_names, "data": data},
    optional={"id": json_values, "subject": json_values, "eventTime": json_values, "topic": json_values},
)
cloud_event = st.fixed_dictionaries(
    {"specversion": st.sampled_from(["1.0", "0.3", ""]) | json_values, "type": type_names},
    optional={"data": data, "id": json_values, "source": json_values, "time": json_values, "subject": json_values},
)
events = st.one_of(event_grid, cloud_event, data)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


bodies = st.one_of(
    st.binary(max_size=48),
    st.sampled_from([b"", b" \n\t", b"[]", b"{}", b"null", b"\xef\xbb\xbf{}", b'{"a":1e400}']),
    json_values.map(dumps),
    events.map(dumps),
    st.lists(st.one_of(events, json_values), max_size=4).map(dumps),  # an Event Grid array, with junk in it
)
property_names = st.one_of(
    st.sampled_from(
        [
            "Type",
            "type",
            "EventType",
            "cloudEvents:type",
            "ce-type",
            "ce_type",
            "cloudEvents:id",
            "ce-source",
            "cloudEvents:time",
            "DigitalTwins-Telemetry",
            "DigitalTwins-SensorHardwareId",
            "CorrelationId",
            "iothub-connection-device-id",
            "iothub-message-source",
            "",
        ]
    ),
    st.text(max_size=6),
)
properties = st.dictionaries(property_names, st.one_of(type_names, json_values), max_size=4)
system_properties = st.dictionaries(
    st.sampled_from(["iothub-connection-device-id", "iothub-message-source", "content-type", "iothub-enqueuedtime"]),
    st.one_of(st.sampled_from(["", "dev-1", "Telemetry", "twinChangeEvents"]), scalars, json_values),
    max_size=3,
)
worker_events = st.builds(
    WorkerEvent,
    body=bodies,
    properties=properties,
    system_properties=system_properties,
)


class Deployment:
    """The functions in file mode, with each invocation's new output read back from the files."""

    def __init__(self, out: Path, functions: dict[str, Any]) -> None:
        self.out = out
        self.functions = functions
        self.offsets: dict[str, int] = {}
        self.reports: list[BatchReport] = []

    def new_lines(self, name: str) -> list[dict[str, Any]]:
        path = self.out / name
        if not path.exists():
            return []
        with path.open("rb") as handle:
            handle.seek(self.offsets.get(name, 0))
            data = handle.read()
        self.offsets[name] = self.offsets.get(name, 0) + len(data)
        return [json.loads(line) for line in data.splitlines()]


@pytest.fixture(scope="module")
def deployment(functions: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "routes.json").write_text(json.dumps(ROUTES))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROUTES_FILE", str(root / "routes.json"))
        patch.setenv("ROUTER_OUTPUT_DIR", str(root / "out"))
        patch.delenv("ROUTES_STORAGE", raising=False)
        deployed = Deployment(root / "out", functions)
        real = wiring.route_batch

        def recording(batch: Any, *, source: str) -> BatchReport:
            report = real(batch, source=source)
            deployed.reports.append(report)
            return report

        # The functions call route_batch by its name in function_app; the wrapper keeps each report.
        patch.setattr(function_app, "route_batch", recording)
        wiring.reset()
        yield deployed
        wiring.reset()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.lists(worker_events, min_size=1, max_size=6),
    function=st.sampled_from(["route_twins", "route_telemetry"]),
    partition=st.sampled_from(["0", "7"]),
)
def test_malformed_input_neither_crashes_a_function_nor_loses_an_event(
    deployment: Deployment, batch: list[WorkerEvent], function: str, partition: str
) -> None:
    deployed = deployment
    for seq, item in enumerate(batch):
        item.sequence_number = seq
    decoded = worker_batch(batch, partition_id=partition)
    deployed.functions[function].get_user_function()(decoded)  # must not raise

    report = deployed.reports.pop()
    source = "twins" if function == "route_twins" else "telemetry"
    per_message = [classify(message) for message in from_eventhub_events(decoded, source=source)]
    results = [r for message_results in per_message for r in message_results]
    delivered = {name: deployed.new_lines(f"{name}.jsonl") for name in ("raw", "twins", "udf")}
    letters = deployed.new_lines("deadletter.jsonl")
    unrouted = sum(report.unrouted.values())
    # A message's rejected events are one rejection (one letter) with their count and positions.
    rejections = [r for r in results if isinstance(r, Rejection)]
    events_in = sum(r.count if isinstance(r, Rejection) else 1 for r in results)

    assert report.messages == len(batch)
    assert len(letters) == len(rejections) <= len(batch), "more than one letter for a message's rejections"
    assert report.dead_lettered == sum(r.count for r in rejections)
    assert sum(len(lines) for lines in delivered.values()) + report.dead_lettered + unrouted == events_in
    assert all(isinstance(x["reason"], str) and x["reason"].strip() for x in letters), "a dead letter without why"
    assert not [x for x in letters if x["code"] == "internal-error"], "a stage crashed on this input"
    for message_results in per_message:
        # Every position of a message is one event or one rejected position, none twice, none missing.
        positions = [
            p for r in message_results for p in (r.positions or (r.index,) if isinstance(r, Rejection) else (r.index,))
        ]
        assert sorted(positions) == list(range(len(positions)))

    # Each event is where it belongs: rejections dead-lettered at their position, events at their endpoint.
    dead = sorted((x["original"]["sequenceNumber"], x["index"]) for x in letters)
    rejected = sorted(
        (seq, r.index) for seq, message_results in enumerate(per_message) for r in message_results
        if isinstance(r, Rejection)
    )  # fmt: skip
    assert dead == rejected
    routed = [r for r in results if isinstance(r, Event) and r.event_type in ENDPOINT_OF]
    for name, lines in delivered.items():
        # Each endpoint sends the event's id in its own shape (a CloudEvents endpoint's differs: model.py).
        seed = SHAPES[name]
        assert sorted(x["messageId"] for x in lines) == sorted(
            shaped_message_id(r.message_id, seed) for r in routed if ENDPOINT_OF[r.event_type] == name
        )
    assert unrouted == sum(1 for r in results if isinstance(r, Event) and r.event_type not in ENDPOINT_OF)
    event(f"delivered: {bool(routed)}, dead-lettered: {bool(letters)}, unrouted: {bool(unrouted)}")
    event(f"a letter for several events: {any(r.count > 1 for r in rejections)}")
    # Telemetry is forwarded unprocessed: the bytes as they came.
    bodies_in = {bytes(e.body) for e in batch}
    assert all(base64.b64decode(x["bodyBase64"]) in bodies_in for x in delivered["raw"])
