"""The Event Grid stand-in refuses what the service refuses: each rule of the Event Grid schema and of
CloudEvents 1.0 shown by a request that breaks it alone (the rest of the event is valid, so without
the rule the request would be accepted), and the answer in the service's error shape."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.eventgrid import EventGridEvent, EventGridPublisherClient

from tests.peers.eventgrid import DEFAULT_TOPIC, EventGridReceiver

EVENT_GRID_JSON = "application/json; charset=utf-8"
CLOUD_EVENTS_BATCH = "application/cloudevents-batch+json; charset=utf-8"
ANOTHER_TOPIC = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.EventGrid/topics/adt-events"


def grid_event(**changes: Any) -> dict[str, Any]:
    event = {
        "id": "e-1",
        "subject": "Devices",
        "eventType": "TopologyOperation",
        "eventTime": "2026-11-26T09:00:00.15Z",
        "data": {"Id": "dev-1"},
        "dataVersion": "1.0",
    }
    return _changed(event, changes)


def cloud_event(**changes: Any) -> dict[str, Any]:
    event = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/routing/twins",
        "type": "Microsoft.DigitalTwins.Twin.Update",
        "subject": "room-1",
        "time": "2026-11-26T09:00:00+01:00",
        "datacontenttype": "application/json",
        "data": {"a": 1},
    }
    return _changed(event, changes)


_DROP = object()


def _changed(event: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for name, value in changes.items():
        if value is _DROP:
            del event[name]
        else:
            event[name] = value
    return event


@pytest.fixture(scope="module")
def receiver() -> Iterator[EventGridReceiver]:
    with EventGridReceiver() as started:
        yield started


@pytest.fixture
def grid(receiver: EventGridReceiver) -> Iterator[EventGridReceiver]:
    receiver.clear()
    yield receiver
    receiver.max_request_size = receiver.max_event_size = 1024 * 1024
    receiver.clear()


def post(receiver: EventGridReceiver, body: Any, content_type: str = EVENT_GRID_JSON) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        receiver.endpoint, data=data, headers={"aeg-sas-key": receiver.key, "Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, {}
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_valid_events_of_both_schemas_are_accepted(grid: EventGridReceiver) -> None:
    accepted = [
        [grid_event()],
        [grid_event(topic=DEFAULT_TOPIC, metadataVersion="1")],  # the topic's own id, the one version
        [grid_event(data=_DROP, dataVersion=_DROP)],  # optional: the service stamps an empty dataVersion
        [grid_event(eventTime="2026-11-26t09:00:00.1234567z")],  # RFC 3339 allows lower case and any digits
    ]
    for events in accepted:
        assert post(grid, events) == (200, {})
    extensions = {"flag": True, "site": "B7", "count": 2**31 - 1, "low": -(2**31), "unset": None}
    # Names over 20 characters: the spec says SHOULD NOT, not MUST NOT.
    for event in [cloud_event(), cloud_event(**extensions), cloud_event(averyveryverylongname2026="x")]:
        assert post(grid, [event], CLOUD_EVENTS_BATCH) == (200, {})
    assert post(grid, cloud_event(), "application/cloudevents+json") == (200, {})  # structured mode: one event
    assert len(grid.events()) == 8


@pytest.mark.parametrize(
    ("events", "words"),
    [
        ([grid_event(id=_DROP)], "Required property 'id'"),
        ([grid_event(subject=_DROP)], "Required property 'subject'"),
        ([grid_event(eventType=_DROP)], "Required property 'eventType'"),
        ([grid_event(eventTime=_DROP)], "Required property 'eventTime'"),
        ([grid_event(subject="")], "Required property 'subject'"),
        ([grid_event(eventTime="2026-11-26T09:00:00.15")], "'eventTime'"),  # no offset
        ([grid_event(eventTime="2026-11-26 09:00:00Z")], "'eventTime'"),
        ([grid_event(eventTime="2026-13-26T09:00:00Z")], "'eventTime'"),
        ([grid_event(eventTime="20261126T090000Z")], "'eventTime'"),
        ([grid_event(metadataVersion="2")], "'metadataVersion'"),
        ([grid_event(topic=ANOTHER_TOPIC)], "'topic'"),
        ([grid_event(dataVersion=1)], "'dataVersion'"),
        ([grid_event(), grid_event(id=_DROP)], "Event 1:"),
        (grid_event(), "JSON array"),
        (b"[{", "not valid JSON"),
    ],
)
def test_an_event_grid_schema_event_breaking_a_rule_is_refused_with_400(
    grid: EventGridReceiver, events: Any, words: str
) -> None:
    status, answer = post(grid, events)
    assert status == 400
    error = answer["error"]
    assert error["code"] == "BadRequest" and words in error["message"]
    assert error["details"] == [{"code": "InputJsonInvalid", "message": error["message"]}]
    assert grid.events() == [] and words in str(grid.requests()[0].error)


@pytest.mark.parametrize(
    ("event", "words"),
    [
        (cloud_event(specversion="0.3"), "'specversion'"),
        (cloud_event(specversion=1.0), "'specversion'"),
        (cloud_event(id=_DROP), "Required attribute 'id'"),
        (cloud_event(source=_DROP), "Required attribute 'source'"),
        (cloud_event(type=_DROP), "Required attribute 'type'"),
        (cloud_event(time="2026-11-26T09:00:00"), "'time'"),
        (cloud_event(subject=7), "'subject'"),
        (cloud_event(data_base64="AA=="), "not both"),
        (cloud_event(ratio=2.5), "'ratio' is a float"),
        (cloud_event(count=2**31), "outside the 32-bit range"),
        (cloud_event(low=-(2**31) - 1), "outside the 32-bit range"),
        (cloud_event(tags=["a"]), "'tags' is a list"),
        (cloud_event(props={"a": 1}), "'props' is a dict"),
        (cloud_event(Site="B7"), "name 'Site'"),
        (cloud_event(**{"site-id": "B7"}), "name 'site-id'"),
    ],
)
def test_a_cloud_event_breaking_a_rule_is_refused_with_400(
    grid: EventGridReceiver, event: dict[str, Any], words: str
) -> None:
    status, answer = post(grid, [event], CLOUD_EVENTS_BATCH)
    assert status == 400
    assert answer["error"]["code"] == "BadRequest" and words in answer["error"]["message"]
    assert grid.events() == []


def test_a_request_over_1_mb_is_refused_with_413(grid: EventGridReceiver) -> None:
    half = {"pad": "x" * (512 * 1024)}
    status, answer = post(grid, [grid_event(data=half), grid_event(data=half)])
    assert status == 413
    assert (
        answer["error"]["code"] == "PayloadTooLarge" and "exceeds the maximum of 1048576" in answer["error"]["message"]
    )
    assert post(grid, [grid_event(data={"pad": "x" * (1000 * 1024)})]) == (200, {})  # just under


def test_an_event_over_1_mb_is_refused_with_413_even_when_requests_may_be_larger(grid: EventGridReceiver) -> None:
    grid.max_request_size = None
    status, answer = post(grid, [grid_event(data={"pad": "x" * (1024 * 1024)})])
    assert status == 413 and "Event 0 is" in answer["error"]["message"]


def test_the_publisher_client_sees_the_refusal_as_an_http_400_with_the_reason(grid: EventGridReceiver) -> None:
    publisher = EventGridPublisherClient(grid.endpoint, AzureKeyCredential(grid.key))
    event = EventGridEvent(subject="Devices", event_type="TopologyOperation", data={}, data_version="1.0")
    event.topic = ANOTHER_TOPIC
    with pytest.raises(HttpResponseError) as raised:
        publisher.send([event], retry_total=0)
    assert raised.value.status_code == 400
    assert "'topic'" in str(raised.value)
    publisher.send([EventGridEvent(subject="Devices", event_type="TopologyOperation", data={}, data_version="1.0")])
    [accepted] = grid.events()
    assert accepted["subject"] == "Devices"  # the SDK's own event times carry an offset
