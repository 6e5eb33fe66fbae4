"""What the router emits is what Event Grid and CloudEvents 1.0 accept: no inbound `topic` towards an
Event Grid topic, only CloudEvents 1.0 in (other versions dead-lettered, never relabelled), extension
attributes of CloudEvents types, and every emitted time RFC 3339 with an offset. Each emitted event is
also checked with the Event Grid stand-in's own rules (`problem_with`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from routing.deliver import envelope
from routing.ingest.classify import classify
from routing.model import EnvelopeFormat, Event, IngressMessage, Rejection
from routing.routes.table import parse_routes
from tests.conftest import sensor_data, twin_event
from tests.peers.eventgrid import is_rfc3339, problem_with
from tests.test_templates import endpoint, route, sent

SOURCE_TOPIC = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.EventGrid/topics/adt-classic"
TOPOLOGY = {"SpacesToNotify": [], "Id": "dev-7", "Type": "Devices", "AccessType": "Update"}
GRID = {"type": "EventGrid", "eventTypes": ["TopologyOperation", "SensorChange"], "path": "t.eventgrid.azure.net"}
CLOUD = {**GRID, "path": "c.eventgrid.azure.net", "format": "CloudEventSchemaV1_0"}


def from_topic(**changes: Any) -> dict[str, Any]:
    """An Event Grid schema event as a topic delivers it to an Event Hub: stamped with the topic's id."""
    return {
        "id": "eg-1",
        "topic": SOURCE_TOPIC,
        "subject": "Devices",
        "eventType": "TopologyOperation",
        "eventTime": "2026-11-26T09:00:00Z",
        "data": TOPOLOGY,
        "dataVersion": "1.0",
        "metadataVersion": "1",
        **changes,
    }


def only(results: list[Event | Rejection]) -> Event | Rejection:
    [result] = results
    return result


def accepted_by_event_grid(body: dict[str, Any], *, cloud: bool) -> None:
    content_type = "application/cloudevents-batch+json" if cloud else "application/json"
    assert problem_with(json.dumps([body]).encode(), content_type) == (200, None)


# --- topic -------------------------------------------------------------------------------------------


def test_an_event_grid_endpoint_never_gets_the_inbound_topic_while_event_hubs_and_service_bus_do(
    tmp_path: Path,
) -> None:
    routes = [
        endpoint("grid", **GRID),
        endpoint("hub", eventTypes=["TopologyOperation"]),
        endpoint("bus", type="ServiceBus", eventTypes=["TopologyOperation"]),
    ]
    route(tmp_path, routes, [twin_event([from_topic()], seq=1)])

    [grid] = sent(tmp_path, "grid")
    assert "topic" not in grid["body"] and grid["body"]["id"] == "eg-1"
    accepted_by_event_grid(grid["body"], cloud=False)
    for name in ("hub", "bus"):
        [message] = sent(tmp_path, name)
        assert message["body"]["topic"] == SOURCE_TOPIC


def test_the_envelope_carries_a_topic_only_when_the_event_had_one() -> None:
    [hub, grid] = parse_routes([endpoint("hub", eventTypes=["TopologyOperation"]), endpoint("grid", **GRID)]).endpoints
    event = only(classify(twin_event(TOPOLOGY, seq=1, properties={"Type": "TopologyOperation"})))
    assert isinstance(event, Event) and event.topic is None
    assert "topic" not in json.loads(envelope.build(event, hub).body)
    with_topic = only(classify(twin_event([from_topic()], seq=1)))
    assert isinstance(with_topic, Event)
    # Whether the pipeline hands over the format's shared body or not, Event Grid gets no topic.
    shared = envelope.envelope_body(with_topic, EnvelopeFormat.EVENT_GRID)
    for body in (shared, None):
        assert "topic" not in json.loads(envelope.build(with_topic, grid, body).body)
    assert json.loads(envelope.build(with_topic, hub, shared).body)["topic"] == SOURCE_TOPIC


# --- CloudEvents 1.0 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "shown"),
    [
        (
            twin_event(
                {"specversion": "0.3", "type": "SensorChange", "id": "c", "source": "s", "data": sensor_data("s")},
                seq=1,
            ),
            "'0.3'",
        ),
        (
            twin_event(
                {"specversion": 1.0, "type": "SensorChange", "id": "c", "source": "s", "data": sensor_data("s")}, seq=1
            ),
            "specversion 1.0 in",
        ),
        (
            twin_event(
                sensor_data("s"),
                seq=1,
                properties={
                    "cloudEvents:specversion": "0.3",
                    "cloudEvents:type": "SensorChange",
                    "cloudEvents:id": "c",
                },
            ),
            "'0.3'",
        ),
        (
            twin_event(
                None, seq=1, raw=b"{}", properties={"ce-specversion": "2.0", "ce-type": "microsoft.iot.telemetry"}
            ),
            "'2.0'",
        ),
    ],
    ids=["structured-0.3", "structured-number", "binary-0.3", "binary-telemetry-2.0"],
)
def test_a_cloud_event_of_another_version_is_rejected_naming_the_version(msg: IngressMessage, shown: str) -> None:
    rejection = only(classify(msg))
    assert isinstance(rejection, Rejection)
    assert rejection.code == "unsupported-specversion"
    assert "only '1.0'" in rejection.reason and shown in rejection.reason


def test_cloud_events_1_0_in_both_modes_are_classified() -> None:
    structured = {"specversion": "1.0", "type": "SensorChange", "id": "c", "source": "s", "data": sensor_data("s")}
    binary = {"cloudEvents:specversion": "1.0", "cloudEvents:type": "SensorChange", "cloudEvents:id": "c"}
    assert isinstance(only(classify(twin_event(structured, seq=1))), Event)
    assert isinstance(only(classify(twin_event(sensor_data("s"), seq=1, properties=binary))), Event)


def test_extension_attributes_are_strings_booleans_and_32_bit_integers_and_properties_keep_their_types(
    tmp_path: Path,
) -> None:
    data = sensor_data("s1") | {
        "Properties": {"Ratio": 2.5, "Big": 3_000_000_000, "Small": -7, "Flag": True, "List": [1, "a"], "None": None}
    }
    enrichments = {
        "ratio": "$body.Properties.Ratio",
        "big": "$body.Properties.Big",
        "small": "$body.Properties.Small",
        "flag": "$body.Properties.Flag",
        "list": "$body.Properties.List",
        "object": "$body.Properties",
        "none": "$body.Properties.None",
        "fixed": 0.25,
        "site": "B7",
    }
    routes = [
        endpoint("cloud", **CLOUD, enrichments=enrichments),
        endpoint("bus", type="ServiceBus", eventTypes=["SensorChange"], enrichments=enrichments),
    ]
    route(tmp_path, routes, [twin_event(data, seq=1, properties={"Type": "SensorChange"})])

    [cloud] = sent(tmp_path, "cloud")
    body = cloud["body"]
    assert {name: body.get(name, "absent") for name in enrichments} == {
        "ratio": "2.5",
        "big": "3000000000",
        "small": -7,
        "flag": True,
        "list": '[1,"a"]',
        "object": json.dumps(data["Properties"], separators=(",", ":")),
        "none": "absent",  # null is no value: left out, as CloudEvents' JSON format reads it
        "fixed": "0.25",
        "site": "B7",
    }
    accepted_by_event_grid(body, cloud=True)
    [bus] = sent(tmp_path, "bus")
    assert (bus["properties"]["ratio"], bus["properties"]["big"], bus["properties"]["fixed"]) == (
        2.5,
        3_000_000_000,
        0.25,
    )


# --- times -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "emitted"),
    [
        ("2026-11-26T09:00:00.9584103Z", "2026-11-26T09:00:00.9584103Z"),  # kept as written
        ("2026-11-26T10:00:00+01:00", "2026-11-26T10:00:00+01:00"),
        ("2026-11-26T09:00:00.15", "2026-11-26T09:00:00.15Z"),  # naive: UTC
        ("2026-11-26 09:00:00", "2026-11-26T09:00:00Z"),
        ("2026-11-26", "2026-11-26T00:00:00Z"),
        ("20261126T100000+0100", "2026-11-26T10:00:00+01:00"),
        ("yesterday", "2026-11-26T08:00:00Z"),  # no time: the data's EventTimestamp, then the enqueued time
        ("2026-13-26T09:00:00Z", "2026-11-26T08:00:00Z"),
    ],
)
def test_every_emitted_time_is_rfc_3339_with_an_offset(tmp_path: Path, given: str, emitted: str) -> None:
    event = from_topic(eventType="SensorChange", subject="SensorChange", eventTime=given, data=sensor_data("s1"))
    route(tmp_path, [endpoint("grid", **GRID), endpoint("cloud", **CLOUD)], [twin_event([event], seq=1)])
    [grid] = sent(tmp_path, "grid")
    [cloud] = sent(tmp_path, "cloud")
    assert (grid["body"]["eventTime"], cloud["body"]["time"]) == (emitted, emitted)
    assert is_rfc3339(emitted)
    accepted_by_event_grid(grid["body"], cloud=False)
    accepted_by_event_grid(cloud["body"], cloud=True)


def naive_enqueued(body: Any, properties: dict[str, Any] | None = None) -> IngressMessage:
    # What the Functions host hands over: an enqueued time without a zone.
    return IngressMessage(
        body=json.dumps(body).encode(),
        properties=properties or {},
        system_properties={},
        source="twins",
        partition="0",
        sequence_number=1,
        enqueued_time="2026-11-26T09:00:00.15",
    )


@pytest.mark.parametrize(
    "msg",
    [
        naive_enqueued({"Id": "dev-1", "Type": "Devices"}, {"Type": "TopologyOperation"}),
        naive_enqueued(
            {
                "specversion": "1.0",
                "type": "Microsoft.DigitalTwins.Twin.Update",
                "id": "c",
                "source": "s",
                "subject": "room-1",
                "data": {"patch": []},
            }
        ),
        naive_enqueued(
            {"$dtId": "room-1"},
            {"cloudEvents:type": "Microsoft.DigitalTwins.Twin.Create", "cloudEvents:time": "not a time"},
        ),
    ],
    ids=["classic-no-time", "v2-structured-no-time", "v2-binary-bad-time"],
)
def test_a_naive_enqueued_time_is_emitted_as_utc(msg: IngressMessage) -> None:
    event = only(classify(msg))
    assert isinstance(event, Event)
    assert event.event_time == "2026-11-26T09:00:00.15Z"
