"""Classification: every wire form the ingress hubs carry, and garbage rejected with a reason."""

from __future__ import annotations

import json

import pytest

from routing.ingest.classify import classify
from routing.model import Event, EventType, IngressMessage, Rejection
from tests.conftest import sensor_data, telemetry, twin_event


def only_event(msg: IngressMessage) -> Event:
    results = classify(msg)
    assert len(results) == 1
    assert isinstance(results[0], Event), results[0]
    return results[0]


def only_rejection(msg: IngressMessage) -> Rejection:
    results = classify(msg)
    assert len(results) == 1
    assert isinstance(results[0], Rejection), results[0]
    return results[0]


def test_iot_hub_telemetry_is_keyed_by_device_and_its_body_never_parsed() -> None:
    # Not JSON, not UTF-8: telemetry is recognised from properties alone.
    event = only_event(telemetry("thermostat-7", b"\xff\x00binary", seq=1))
    assert event.event_type is EventType.DEVICE_MESSAGES
    assert event.order_key == "thermostat-7"


def test_digital_twins_marked_telemetry_is_keyed_by_sensor_hardware_id() -> None:
    msg = IngressMessage(
        body=b"21.5",
        properties={"DigitalTwins-Telemetry": "1.0", "DigitalTwins-SensorHardwareId": "HW-42"},
        system_properties={},
        source="telemetry",
    )
    event = only_event(msg)
    assert (event.event_type, event.order_key) == (EventType.DEVICE_MESSAGES, "HW-42")


def test_marked_telemetry_without_any_device_id_is_rejected_naming_the_missing_property() -> None:
    msg = IngressMessage(body=b"1", properties={"DigitalTwins-Telemetry": "1.0"}, system_properties={}, source="t")
    rejection = only_rejection(msg)
    assert rejection.code == "no-order-key"
    assert "DigitalTwins-SensorHardwareId" in rejection.reason


def test_iot_hub_twin_change_events_are_not_taken_for_telemetry() -> None:
    msg = IngressMessage(
        body=b"{}",
        properties={},
        system_properties={"iothub-connection-device-id": "d1", "iothub-message-source": "twinChangeEvents"},
        source="telemetry",
    )
    assert only_event(msg).event_type is EventType.TWIN_CHANGE_EVENTS  # tests/test_iot_hub_sources.py


@pytest.mark.parametrize(
    ("event_type", "data", "key"),
    [
        ("SensorChange", sensor_data("s-1"), "s-1"),
        ("SpaceChange", {**sensor_data("space-9"), "Type": "Space", "RawData": "1", "CorrelationId": "c"}, "space-9"),
        (
            "TopologyOperation",
            {"SpacesToNotify": [], "Id": "dev-3", "Type": "Devices", "AccessType": "Create"},
            "dev-3",
        ),
        (
            "UdfCustom",
            {"TopologyObjectId": "space-4", "ResourceType": "Space", "Payload": "{}", "CorrelationId": "c"},
            "space-4",
        ),
    ],
)
def test_event_hubs_wire_form_type_property_and_bare_data(event_type: str, data: dict[str, object], key: str) -> None:
    event = only_event(twin_event(data, seq=5, properties={"Type": event_type, "CorrelationId": "corr-1"}))
    assert event.event_type.value == event_type
    assert event.order_key == key
    assert event.data == data
    assert event.correlation_id == "corr-1"


def test_type_property_names_are_case_insensitive_and_accept_event_type_spelling() -> None:
    event = only_event(twin_event(sensor_data("s-1"), seq=1, properties={"eventtype": "sensorchange"}))
    assert event.event_type is EventType.SENSOR_CHANGE


def test_topology_operation_subject_is_the_object_type() -> None:
    data = {"SpacesToNotify": [], "Id": "dev-3", "Type": "Devices", "AccessType": "Create"}
    event = only_event(twin_event(data, seq=1, properties={"Type": "TopologyOperation"}))
    assert event.subject == "Devices"
    sensor = only_event(twin_event(sensor_data("s"), seq=2, properties={"Type": "SensorChange"}))
    assert sensor.subject == "SensorChange"


def test_event_grid_array_yields_each_event_with_its_own_position_and_id() -> None:
    body = [
        {
            "id": "a",
            "subject": "SensorChange",
            "eventType": "SensorChange",
            "eventTime": "2026-01-01T00:00:00Z",
            "dataVersion": "1.0",
            "metadataVersion": "1",
            "data": sensor_data("s-1"),
        },
        {
            "id": "b",
            "subject": "Spaces",
            "eventType": "TopologyOperation",
            "eventTime": "2026-01-01T00:00:01Z",
            "dataVersion": "1.0",
            "metadataVersion": "1",
            "data": {"Id": "sp-1", "Type": "Spaces"},
        },
    ]
    results = classify(twin_event(body, seq=9))
    assert [r.event_type for r in results if isinstance(r, Event)] == [
        EventType.SENSOR_CHANGE,
        EventType.TOPOLOGY_OPERATION,
    ]
    events = [r for r in results if isinstance(r, Event)]
    assert [e.index for e in events] == [0, 1]
    assert [e.event_id for e in events] == ["a", "b"]
    assert [e.event_time for e in events] == ["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"]
    assert events[0].message_id != events[1].message_id


def test_one_bad_element_of_an_array_is_rejected_alone() -> None:
    good = {"id": "a", "subject": "s", "eventType": "SensorChange", "eventTime": "t", "data": sensor_data("s-1")}
    bad = {"id": "b", "subject": "s", "eventType": "Weather", "eventTime": "t", "data": {}}
    results = classify(twin_event([good, bad], seq=1))
    assert isinstance(results[0], Event)
    assert isinstance(results[1], Rejection)
    assert results[1].index == 1
    assert "Weather" in results[1].reason


def test_binary_cloud_event_takes_attributes_from_properties() -> None:
    props = {
        "cloudEvents:type": "SensorChange",
        "cloudEvents:id": "ce-9",
        "cloudEvents:source": "twins-a",
        "cloudEvents:subject": "SensorChange",
        "cloudEvents:time": "2026-02-02T00:00:00Z",
    }
    event = only_event(twin_event(sensor_data("s-2"), seq=1, properties=props))
    assert (event.event_type, event.event_id, event.source, event.event_time) == (
        EventType.SENSOR_CHANGE,
        "ce-9",
        "twins-a",
        "2026-02-02T00:00:00Z",
    )


def test_binary_cloud_event_with_ce_dash_properties() -> None:
    event = only_event(
        twin_event(
            sensor_data("s-2"), seq=1, properties={"ce-type": "Microsoft.DigitalTwins.SensorChange", "ce-id": "x"}
        )
    )
    assert (event.event_type, event.event_id) == (EventType.SENSOR_CHANGE, "x")


def test_structured_cloud_event() -> None:
    body = {
        "specversion": "1.0",
        "type": "UdfCustom",
        "id": "ce-3",
        "source": "s",
        "time": "2026-03-03T00:00:00Z",
        "data": {"TopologyObjectId": "sp-8", "ResourceType": "Space", "Payload": "{}"},
    }
    event = only_event(twin_event(body, seq=1))
    assert (event.event_type, event.order_key, event.event_id) == (EventType.UDF_CUSTOM, "sp-8", "ce-3")


def test_event_time_is_always_set_falling_back_to_enqueued_time() -> None:
    data = {"Id": "dev-3", "Type": "Devices"}  # no EventTimestamp, no envelope
    event = only_event(twin_event(data, seq=1, properties={"Type": "TopologyOperation"}))
    assert event.event_time == "2026-11-26T09:00:00Z"


@pytest.mark.parametrize(
    ("msg", "code", "words"),
    [
        (twin_event(None, seq=1, raw=b""), "empty-body", "empty"),
        (twin_event(None, seq=1, raw=b"   \n"), "empty-body", "empty"),
        (twin_event(None, seq=1, raw=b"temperature=21"), "not-json", "not JSON"),
        (twin_event(None, seq=1, raw=b"\xff\xfe"), "not-json", "not JSON"),
        (twin_event({"hello": "world"}, seq=1), "no-event-type", "no event type"),
        (twin_event([], seq=1), "empty-array", "empty JSON array"),
        (twin_event(42, seq=1), "not-an-event", "not an event"),
        (twin_event({"Id": "x"}, seq=1, properties={"Type": "Weather"}), "unknown-type", "Weather"),
        (twin_event({"Value": 1}, seq=1, properties={"Type": "SensorChange"}), "no-order-key", "data.Id"),
        (twin_event({"Payload": "{}"}, seq=1, properties={"Type": "UdfCustom"}), "no-order-key", "TopologyObjectId"),
        (twin_event([1, 2], seq=1, properties={"Type": "SensorChange"}), "bad-data", "JSON object"),
        (twin_event({"x": 1}, seq=1, properties={"Type": "SensorChange"}, raw=b""), "empty-body", "SensorChange"),
    ],
)
def test_what_cannot_be_classified_is_rejected_with_a_reason(msg: IngressMessage, code: str, words: str) -> None:
    rejections = [r for r in classify(msg) if isinstance(r, Rejection)]
    assert rejections, "expected a rejection"
    assert rejections[0].code == code
    assert words in rejections[0].reason


def test_message_ids_are_deterministic_and_distinct_per_partition_sequence_and_hub() -> None:
    first = only_event(telemetry("d", b"x", seq=10, partition="0"))
    again = only_event(telemetry("d", b"other body", seq=10, partition="0"))
    other_partition = only_event(telemetry("d", b"x", seq=10, partition="1"))
    other_seq = only_event(telemetry("d", b"x", seq=11, partition="0"))
    other_hub = only_event(twin_event(sensor_data("s"), seq=10, properties={"Type": "SensorChange"}))
    assert first.message_id == again.message_id
    assert len({first.message_id, other_partition.message_id, other_seq.message_id, other_hub.message_id}) == 4
    json.loads(json.dumps(first.message_id))  # a plain string, safe in any header


def test_message_ids_are_uuid5_of_the_ingress_position() -> None:
    import uuid  # noqa: PLC0415

    from routing.model import _ID_NAMESPACE, message_id  # noqa: PLC0415

    for msg, index in [(telemetry("d", b"x", seq=10, partition="3"), 0), (twin_event([], seq=7), 2)]:
        seed = f"{msg.source}|{msg.partition}|{msg.sequence_number}|{index}"
        assert message_id(msg, index) == str(uuid.uuid5(_ID_NAMESPACE, seed))
