"""Raw events forwarded as they came (issue #15): where the route table says every endpoint of a type gets
its events unchanged (`RouteTable.forwarded`), the pipeline makes their messages in one step
(`envelope.forward_all`). Those must be the messages the general path (`targets`, `build_all`) makes, and
the table must say so only where that holds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.deliver import envelope
from routing.deliver.senders import KeyGroup, SendReport
from routing.ingest.classify import classify
from routing.model import RAW_TYPES, EndpointType, Event, EventType, IngressMessage, Outgoing
from routing.pipeline import Router, StaticRoutes
from routing.routes.filters import EventBody
from routing.routes.table import Endpoint, RouteTable, parse_routes

DEVICE_ID = "iothub-connection-device-id"
SOURCES = ["Telemetry", "twinChangeEvents", "deviceLifecycleEvents", "deviceConnectionStateEvents", None]


def _endpoint(name: str, kind: str, event_types: list[str], **options: Any) -> dict[str, Any]:
    path = "https://t.westeurope-1.eventgrid.azure.net/api/events" if kind == "EventGrid" else name
    return {"name": name, "type": kind, "eventTypes": event_types, "connection": "C", "path": path, **options}


# What an endpoint may add that reshapes a raw event (each makes the table route its types the general way).
_SHAPING: list[dict[str, Any]] = [
    {},
    {},
    {"orderKey": "{$body.t}/x"},
    {"enrichments": {"site": "north"}},
    {"filter": "$system['iothub-connection-device-id'] != 'dev-0'"},
    {"format": "CloudEvents"},
]

endpoint_options = st.tuples(
    st.sampled_from(["EventHub", "ServiceBus", "EventGrid"]),
    # Each kind's types are cut to those it accepts (`EndpointType.accepts`) when the table is made.
    st.lists(
        st.sampled_from(["DeviceMessages", "TwinChangeEvents", "microsoft.iot.telemetry"]), min_size=1, max_size=3
    ),
    st.sampled_from(_SHAPING),
    st.booleans(),  # the same destination as the endpoint before it
)


def _table(options: Sequence[tuple[str, list[str], dict[str, Any], bool]], fallback: bool) -> RouteTable:
    routes: list[dict[str, Any]] = []
    for i, (kind, types, shaping, repeat) in enumerate(options):
        accepted = sorted(t for t in set(types) if EventType(t) in EndpointType(kind).accepts)
        # Event Grid takes v2 telemetry only as a CloudEvent (the Event Grid schema cannot carry its bytes).
        grid = {"format": "CloudEvents"} if kind == "EventGrid" else {}
        route = _endpoint(f"ep{i}", kind, accepted or ["microsoft.iot.telemetry"], **{**grid, **shaping})
        if repeat and routes and routes[-1]["type"] == kind:
            route["path"] = routes[-1]["path"]
        routes.append(route)
    if fallback:
        routes.append(_endpoint("spare", "EventHub", ["DeviceMessages"], fallback=True))
    return parse_routes(routes)


@st.composite
def raw_messages(draw: st.DrawFn) -> IngressMessage:
    seq = draw(st.integers(0, 10**6))
    if draw(st.booleans()):
        system: dict[str, Any] = {DEVICE_ID: f"dev-{draw(st.integers(0, 3))}"}
        source = draw(st.sampled_from(SOURCES))
        if source is not None:
            system["iothub-message-source"] = source
        if draw(st.booleans()):
            system["content-type"] = draw(st.sampled_from(["application/json", b"text/plain"]))
        properties: dict[str, Any] = draw(
            st.dictionaries(st.sampled_from(["a", "Unit", "deviceId"]), st.integers(0, 9), max_size=2)
        )
    else:  # today's telemetry, its CloudEvents attributes in the application properties
        system = {"content-type": "application/json"}
        properties = {
            "cloudEvents:type": "microsoft.iot.telemetry",
            "cloudEvents:source": "adt.example/digitaltwins/room-1",
            "cloudEvents:id": f"id-{seq}",
            "cloudEvents:specversion": "1.0",
        }
    return IngressMessage(
        body=b'{"t": 1}',
        properties=properties,
        system_properties=system,
        source="hub",
        partition="0",
        sequence_number=seq,
    )


def _general(table: RouteTable, event: Event) -> tuple[tuple[Endpoint, ...], list[Outgoing]]:
    body = EventBody(event) if table.reads_event(event.event_type) else None
    endpoints = table.targets(event, body)
    return endpoints, envelope.build_all(event, endpoints, body) if endpoints else []


def _shapes(endpoint: Endpoint, event_type: EventType) -> bool:
    return bool(
        endpoint.filter is not None
        or endpoint.order_key is not None
        or endpoint.enrichments
        or (event_type is EventType.TWIN_TELEMETRY and endpoint.type is EndpointType.EVENT_GRID)
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(endpoint_options, min_size=1, max_size=5), st.booleans(), st.lists(raw_messages(), min_size=1, max_size=8)
)
def test_forwarded_messages_are_the_general_paths_and_only_where_no_endpoint_reshapes(
    options: list[tuple[str, list[str], dict[str, Any], bool]], fallback: bool, messages: list[IngressMessage]
) -> None:
    table = _table(options, fallback)
    for event_type in EventType:
        forwarded = table.forwarded[event_type]
        takers = [e for e in table.endpoints if e.enabled and event_type in e.event_types]
        reshaped = event_type not in RAW_TYPES or any(_shapes(e, event_type) for e in takers)
        assert (forwarded is None) == reshaped, (event_type, takers)
    for message in messages:
        for event in classify(message):
            assert isinstance(event, Event), event
            forwarded = table.forwarded[event.event_type]
            if forwarded is None:
                continue
            endpoints, expected = _general(table, event)
            assert forwarded == endpoints
            assert envelope.forward_all(event, forwarded) == expected

    # And the pipeline, which takes the one-step path for those types: what each endpoint is handed is what
    # the general path makes, per key in arrival order.
    sent: dict[str, list[KeyGroup]] = {}

    class Keep:
        def send(self, endpoint: Endpoint, groups: Sequence[KeyGroup]) -> SendReport:
            sent.setdefault(endpoint.name, []).extend(groups)
            return SendReport(delivered=tuple(m for g in groups for m in g.messages))

        def close(self) -> None:
            pass

    report = Router(routes=StaticRoutes(table), senders=lambda _e: Keep(), dead_letters=_NoLetters()).route(messages)
    expected_sent: dict[str, dict[str, list[Outgoing]]] = {}
    unrouted = 0
    for message in messages:
        for event in classify(message):
            assert isinstance(event, Event)
            endpoints, outgoing = _general(table, event)
            unrouted += not endpoints
            for endpoint, out in zip(endpoints, outgoing, strict=True):
                expected_sent.setdefault(endpoint.name, {}).setdefault(out.order_key, []).append(out)
    got = {name: {g.key: list(g.messages) for g in groups} for name, groups in sent.items()}
    assert got == expected_sent
    assert sum(report.unrouted.values()) == unrouted


class _NoLetters:
    def write(self, letters: Sequence[Any], *, delivered: Any = ()) -> None:
        assert not letters, letters

    def close(self) -> None:
        pass


def test_the_table_forwards_a_type_only_while_no_endpoint_taking_it_reshapes_it() -> None:
    plain = _endpoint("plain", "EventHub", ["DeviceMessages", "TwinChangeEvents"])
    assert parse_routes([plain]).forwarded[EventType.DEVICE_MESSAGES] == parse_routes([plain]).for_type(
        EventType.DEVICE_MESSAGES
    )
    for shaping in _SHAPING[2:5]:
        table = parse_routes([plain, _endpoint("other", "EventHub", ["DeviceMessages"], **shaping)])
        assert table.forwarded[EventType.DEVICE_MESSAGES] is None, shaping
        assert table.forwarded[EventType.TWIN_CHANGE_EVENTS] is not None  # "other" does not take it
    grid = parse_routes([_endpoint("grid", "EventGrid", ["microsoft.iot.telemetry"], format="CloudEvents")])
    assert grid.forwarded[EventType.TWIN_TELEMETRY] is None  # a CloudEvent made of its properties
    # Nothing takes it: forwarded to no one, so the pipeline counts it unrouted.
    assert parse_routes([plain]).forwarded[EventType.DEVICE_LIFECYCLE_EVENTS] == ()
    twins = parse_routes([_endpoint("twins", "EventHub", ["SensorChange"])])
    assert twins.forwarded[EventType.SENSOR_CHANGE] is None  # enveloped
