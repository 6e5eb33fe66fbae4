"""The Event Grid sender posts the JSON the router built as it is, through the publisher client's own
pipeline, and the topic gets what the SDK's `send` would have given it: for each schema and for a topic
key and a Microsoft Entra token, the same events sent both ways arrive at the stand-in the same (status,
path and query, content type, credential and SDK headers, events); a refused credential fails over, and
an attribute Event Grid would refuse fails its event alone."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from azure.core.credentials import AccessToken, AzureKeyCredential
from azure.eventgrid._legacy import EventGridPublisherClient

from routing.connections import Connection
from routing.deliver.envelope import build
from routing.deliver.eventgrid import EventGridSender
from routing.deliver.senders import KeyGroup, RetryOptions
from routing.ingest.classify import classify
from routing.model import Event, IngressMessage, Outgoing
from routing.routes.table import Endpoint, parse_routes
from tests.conftest import sensor_data, twin_event
from tests.peers.eventgrid import EventGridReceiver, ReceivedRequest
from tests.test_v2_telemetry_endpoints import binary

KEY = "grid-key"
TOKEN = "entra-token-for-the-topic"
SCOPE = "https://eventgrid.azure.net/.default"
# What differs between any two requests: a fresh id each, and the length of the body's spacing.
_VOLATILE = frozenset({"x-ms-client-request-id", "content-length"})


class StaticToken:
    """A TokenCredential with one token, recording the scopes asked for (what Entra would be asked)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture(scope="module")
def topic() -> Iterator[EventGridReceiver]:
    with EventGridReceiver(key=KEY, token=TOKEN, tls=True) as receiver:
        yield receiver


@pytest.fixture
def grid(topic: EventGridReceiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[EventGridReceiver]:
    # requests trusts the stand-in's CA (as the sender's client would trust Event Grid's).
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", topic.ca_file)
    topic.clear()
    yield topic
    topic.clear()


def endpoint(receiver: EventGridReceiver, cloud: bool, **more: Any) -> Endpoint:
    types = ["TopologyOperation", "SensorChange"] + (["microsoft.iot.telemetry"] if cloud else [])
    raw: dict[str, Any] = {
        "name": "grid",
        "type": "EventGrid",
        "eventTypes": types,
        "connection": "GRID",
        "path": receiver.endpoint,
    }
    if cloud:
        raw |= {"format": "CloudEventSchemaV1_0", "enrichments": {"site": "plant7"}}
    [parsed] = parse_routes([raw | more]).endpoints
    return parsed


def events(cloud: bool) -> list[IngressMessage]:
    """Twin events with what JSON writers disagree on (non-ASCII text, a small float, nesting), and for
    CloudEvents telemetry too, one with JSON data and one whose bytes travel as `data_base64`."""
    sensor = sensor_data("sensor-é", value="21.5 °C") | {"Ratio": 1e-7, "Nested": {"a": [1, None, True]}}
    ingress = [
        twin_event(sensor, seq=1, properties={"Type": "SensorChange"}),
        twin_event(
            {"Id": "dev-7", "Type": "Devices", "AccessType": "Update"}, seq=2, properties={"Type": "TopologyOperation"}
        ),
    ]
    if cloud:
        ingress += [
            binary('{"Temperature": 10.5, "Name": "Zürich"}'.encode()),
            binary(b"\x00\xff", "application/octet-stream"),
        ]
    return ingress


def messages(receiver: EventGridReceiver, cloud: bool) -> list[Outgoing]:
    target = endpoint(receiver, cloud)
    built = []
    for ingress in events(cloud):
        [event] = classify(ingress)
        assert isinstance(event, Event), event
        built.append(build(event, target))
    return built


def sender(receiver: EventGridReceiver, cloud: bool, token: StaticToken | None, **more: Any) -> EventGridSender:
    env = {"GRID": KEY} if token is None else {"GRID__topicEndpointUri": receiver.endpoint}
    return EventGridSender(endpoint(receiver, cloud, **more), retry=RetryOptions(attempts=1, timeout=5), env=env)


def compared(request: ReceivedRequest) -> dict[str, Any]:
    """What a topic sees of a request, but for what differs from one request to the next."""
    return {
        "status": request.status,
        "path": request.path,
        "query": request.query,
        "content_type": request.content_type,
        "events": [dict(event) for event in request.events],
        "headers": {name: value for name, value in request.headers.items() if name not in _VOLATILE},
    }


@pytest.mark.parametrize("cloud", [False, True], ids=["event-grid-schema", "cloud-events"])
@pytest.mark.parametrize("with_token", [False, True], ids=["topic-key", "entra-token"])
def test_the_topic_gets_from_the_sender_what_the_sdks_send_gives_it(
    grid: EventGridReceiver, monkeypatch: pytest.MonkeyPatch, cloud: bool, with_token: bool
) -> None:
    token = StaticToken(TOKEN) if with_token else None
    if token is not None:
        monkeypatch.setattr(Connection, "credential", lambda self: token)
    outgoing = messages(grid, cloud)

    # The SDK's own way: each event's JSON parsed, and handed to `send` as a list of dicts.
    credential = token if token is not None else AzureKeyCredential(KEY)
    publisher = EventGridPublisherClient(grid.endpoint, credential, retry_total=0)
    publisher.send([orjson.loads(message.body) for message in outgoing])
    publisher.close()

    routed = sender(grid, cloud, token)
    report = routed.send(routed.endpoint, [KeyGroup(key="k", messages=tuple(outgoing))])
    routed.close()
    assert report.failed == () and len(report.delivered) == len(outgoing)

    by_sdk, by_sender = grid.requests()
    assert by_sdk.accepted
    assert compared(by_sender) == compared(by_sdk)
    assert [dict(event) for event in by_sender.events] == [orjson.loads(message.body) for message in outgoing]
    # The request's size is what the sender counted: each event's bytes, a comma between, two brackets.
    assert by_sender.size == sum(len(m.body) for m in outgoing) + len(outgoing) - 1 + 2
    if token is not None:
        assert by_sender.headers["authorization"] == f"Bearer {TOKEN}" and "aeg-sas-key" not in by_sender.headers
        assert set(token.scopes) == {(SCOPE,)}
    else:
        assert by_sender.headers["aeg-sas-key"] == KEY and "authorization" not in by_sender.headers


def test_the_stand_in_refuses_a_token_other_than_the_one_it_accepts(
    grid: EventGridReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Connection, "credential", lambda self: StaticToken("someone-elses-token"))
    outgoing = messages(grid, cloud=False)
    routed = sender(grid, False, StaticToken("unused"))
    report = routed.send(routed.endpoint, [KeyGroup(key="k", messages=tuple(outgoing))])
    routed.close()
    assert report.delivered == () and {f.permanent for f in report.failed} == {True}
    assert "unauthorized with GRID: ClientAuthenticationError: HTTP 401" in report.failed[0].reason
    assert [r.status for r in grid.requests()] == [401] and grid.events() == []


def test_a_refused_topic_key_fails_over_to_the_secondary_connection(grid: EventGridReceiver) -> None:
    outgoing = messages(grid, cloud=True)
    routed = EventGridSender(
        endpoint(grid, True, secondaryConnection="GRID_2"),
        retry=RetryOptions(attempts=1, timeout=5),
        env={"GRID": "an-old-key", "GRID_2": KEY},
    )
    report = routed.send(routed.endpoint, [KeyGroup(key="k", messages=tuple(outgoing))])
    routed.close()
    assert report.failed == () and routed.failovers == 1
    assert [r.status for r in grid.requests()] == [401, 200]


def test_an_extension_attribute_event_grid_would_refuse_fails_its_event_alone(grid: EventGridReceiver) -> None:
    target = endpoint(grid, True)
    good = messages(grid, cloud=True)
    [event] = classify(binary(b"{}", properties={"cloudEvents:Bad-Name": "x"}))
    assert isinstance(event, Event)
    bad = build(event, target)
    routed = sender(grid, True, None)
    report = routed.send(routed.endpoint, [KeyGroup(key="a", messages=(bad,)), KeyGroup(key="b", messages=tuple(good))])
    routed.close()
    [failure] = report.failed
    assert failure.message is bad and failure.permanent
    assert failure.reason == (
        "event cannot be published to Event Grid: CloudEvents attribute name 'Bad-Name' is not lower-case "
        "letters a-z and digits 0-9"
    )
    [request] = grid.requests()  # the others in one request, which the topic took
    assert request.accepted and len(request.events) == len(good)


def test_the_service_s_reason_for_a_400_is_kept(grid: EventGridReceiver) -> None:
    outgoing = messages(grid, cloud=False)
    routed = sender(grid, False, None)
    body = orjson.loads(outgoing[0].body) | {"metadataVersion": "2"}
    broken = Outgoing(**{f: getattr(outgoing[0], f) for f in Outgoing.__struct_fields__} | {"body": orjson.dumps(body)})
    report = routed.send(routed.endpoint, [KeyGroup(key="k", messages=(broken,))])
    routed.close()
    [failure] = report.failed
    assert failure.permanent
    assert failure.reason.startswith("HttpResponseError: HTTP 400 (Event 0: Property 'metadataVersion'")


@pytest.mark.parametrize(("status", "at_once"), [(500, True), (502, True), (504, True), (503, False), (429, False)])
def test_a_server_error_is_retried_at_once_the_first_time_and_a_request_to_slow_down_backs_off(
    grid: EventGridReceiver, caplog: pytest.LogCaptureFixture, status: int, at_once: bool
) -> None:
    # A backoff long enough that a retry which waited it says so in its log line.
    retry = RetryOptions(attempts=3, backoff_initial=0.5, backoff_max=1.0, timeout=5.0, budget=15.0)
    routed = EventGridSender(endpoint(grid, False), retry=retry, env={"GRID": KEY})
    grid.fail_next(status, times=2)
    with caplog.at_level(logging.WARNING, logger="routing"):
        report = routed.send(routed.endpoint, [KeyGroup(key="k", messages=tuple(messages(grid, cloud=False)))])
    routed.close()
    assert report.failed == () and [r.status for r in grid.requests()] == [status, status, 200]
    first, second = [r.getMessage() for r in caplog.records if "retrying a batch" in r.getMessage()]
    assert (", at once, after " in first) is at_once, first
    assert ", in " in second, second  # a second failure always backs off
