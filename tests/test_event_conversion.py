"""An event or message as the router makes it for Event Hubs and Service Bus, without the SDKs' per-field
tests, is the one the SDK makes: `EventData` (routing/deliver/eventhubs.py) and `ServiceBusMessage`
(servicebus.py) hold what their constructors and public setters make them hold, and their AMQP messages
(routing/deliver/transports.py) are the ones each SDK's own `to_outgoing_amqp_message` makes, field for
field, on messages carrying any of the header's and the properties' fields (or none, or no header or
properties at all), every body kind, annotations and application properties. A header or properties
holding anything but their fields, and what Service Bus's conversion does more (times from the clock for
a time to live, bytes properties decoded, long annotations), is left to the SDK's conversion."""

from __future__ import annotations

from typing import Any

from azure.eventhub import EventData
from azure.eventhub._transport._pyamqp_transport import PyamqpTransport as EventHubsOwn
from azure.eventhub.amqp import AmqpAnnotatedMessage, AmqpMessageProperties
from azure.servicebus import ServiceBusMessage
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport as ServiceBusOwn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.deliver import eventhubs, servicebus, transports
from routing.deliver.eventhubs import event_data, with_partition_key
from routing.deliver.transports import EventHubsTransport, ServiceBusTransport, alike
from tests.test_amqp_encoding import _outgoing

HEADER = ("delivery_count", "time_to_live", "first_acquirer", "durable", "priority")
PROPERTIES = (
    "message_id", "user_id", "to", "subject", "reply_to", "correlation_id", "content_type", "content_encoding",
    "creation_time", "absolute_expiry_time", "group_id", "group_sequence", "reply_to_group_id",
)  # fmt: skip
values = st.one_of(st.none(), st.booleans(), st.integers(0, 2**40), st.text(max_size=6), st.binary(max_size=4))
# The SDK makes the two times integers when they are truthy (milliseconds; a float from a caller is cut).
times = st.one_of(st.none(), st.just(0), st.integers(1, 2**45), st.floats(1, 1e12))
header = st.dictionaries(st.sampled_from(HEADER), values)
properties = st.fixed_dictionaries(
    {}, optional={name: times if name.endswith("time") else values for name in PROPERTIES}
)
maps = st.one_of(st.none(), st.dictionaries(st.one_of(st.text(max_size=4), st.binary(max_size=4)), values, max_size=3))


def converted(raw: Any) -> tuple[Any, Any, int]:
    before = transports.stats.converted_slow
    ours = EventHubsTransport.to_outgoing_amqp_message(raw)
    return ours, EventHubsOwn.to_outgoing_amqp_message(raw), transports.stats.converted_slow - before


def shaped(  # noqa: PLR0917 - the strategies' values, as the tests are given them
    raw: Any,
    header_fields: dict[str, Any],
    properties_fields: dict[str, Any],
    no_header: bool,
    no_properties: bool,
    annotations: dict[Any, Any] | None,
    application: dict[Any, Any] | None,
) -> None:
    """Either SDK's `raw` message given those header and properties fields (or none), annotations and
    application properties."""
    for name, value in header_fields.items():
        setattr(raw.header, name, value)
    for name, value in properties_fields.items():
        setattr(raw.properties, name, value)
    if no_header:
        raw.header = None
    if no_properties:
        raw.properties = None
    raw.annotations = annotations
    raw.application_properties = application


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=20), header_fields=header, properties_fields=properties, no_header=st.booleans(),
       no_properties=st.booleans(), annotations=maps, application=maps)  # fmt: skip
def test_an_events_message_is_the_sdks(  # noqa: PLR0917 - hypothesis gives each strategy as an argument
    body: bytes,
    header_fields: dict[str, Any],
    properties_fields: dict[str, Any],
    no_header: bool,
    no_properties: bool,
    annotations: dict[Any, Any] | None,
    application: dict[Any, Any] | None,
) -> None:
    raw = EventData(body).raw_amqp_message
    shaped(raw, header_fields, properties_fields, no_header, no_properties, annotations, application)
    ours, theirs, by_the_sdk = converted(raw)
    assert ours == theirs
    assert by_the_sdk == 0


@given(body=st.one_of(st.lists(st.integers(0, 9), min_size=1, max_size=3).map(lambda v: {"sequence_body": [v]}),
                      values.filter(lambda v: v is not None).map(lambda v: {"value_body": v})),
       properties_fields=properties)  # fmt: skip
def test_sequence_and_value_bodies_too(body: dict[str, Any], properties_fields: dict[str, Any]) -> None:
    raw = AmqpAnnotatedMessage(**body)  # no header, no properties
    if properties_fields:
        raw.properties = AmqpMessageProperties(**properties_fields)
    ours, theirs, by_the_sdk = converted(raw)
    assert ours == theirs
    assert by_the_sdk == 0


def test_a_header_or_properties_holding_more_than_their_fields_is_left_to_the_sdk() -> None:
    for part in ("header", "properties"):
        data = EventData(b"x")
        data.message_id = "m"
        getattr(data.raw_amqp_message, part).extra = 1  # what no field of the SDK's holds
        ours, theirs, by_the_sdk = converted(data.raw_amqp_message)
        assert ours == theirs
        assert by_the_sdk == 1, part


def test_the_pinned_sdks_event_data_is_made_directly() -> None:
    # If this fails after an SDK upgrade, EventData's constructor makes something else now: the router uses
    # the constructor (correct, slower) until `_made_directly` is brought in line with it.
    assert eventhubs.new_event_data is eventhubs._made_directly


@given(body=st.binary(max_size=300))
def test_an_event_data_made_directly_holds_what_the_constructor_makes(body: bytes) -> None:
    assert alike(eventhubs._made_directly(body), EventData(body))
    assert not alike(eventhubs._made_directly(body), EventData(body + b"!"))


def test_alike_sees_an_attribute_more_or_less() -> None:
    more = EventData(b"x")
    more.raw_amqp_message.header.extra = 1  # type: ignore[union-attr]
    assert not alike(more, EventData(b"x"))
    assert not alike(EventData(b"x"), more)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=40), props=st.dictionaries(st.text(max_size=5), values, max_size=4),
       content_type=st.one_of(st.none(), st.text(max_size=20)), key=st.text(min_size=1, max_size=10))  # fmt: skip
def test_the_routers_event_data_is_the_one_the_sdks_setters_make(
    body: bytes, props: dict[str, Any], content_type: str | None, key: str
) -> None:
    message = _outgoing(body, props, content_type, key)
    expected = EventData(body)
    if props:
        expected.properties = dict(props)  # type: ignore[assignment]
    if content_type:
        expected.content_type = content_type
    expected.message_id = message.message_id
    assert alike(event_data(message), expected)
    assert alike(with_partition_key(event_data(message), key), with_partition_key(expected, key))


# --- Service Bus ---------------------------------------------------------------------------------------


def sb_converted(raw: Any) -> tuple[Any, Any, int]:
    before = transports.stats.converted_slow
    ours = ServiceBusTransport.to_outgoing_amqp_message(raw)
    return ours, ServiceBusOwn.to_outgoing_amqp_message(raw), transports.stats.converted_slow - before


# Service Bus's conversion decodes bytes application properties in place: text values, so that the two
# conversions see the same message (the bytes case is left to the SDK: below).
text_maps = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=4), st.one_of(st.none(), st.integers(0, 9), st.text(max_size=4)), max_size=3),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=20), header_fields=header.filter(lambda h: not h.get("time_to_live")),
       properties_fields=properties, no_header=st.booleans(), no_properties=st.booleans(),
       annotations=maps, application=text_maps)  # fmt: skip
def test_a_service_bus_messages_amqp_message_is_the_sdks(  # noqa: PLR0917 - one argument per strategy
    body: bytes,
    header_fields: dict[str, Any],
    properties_fields: dict[str, Any],
    no_header: bool,
    no_properties: bool,
    annotations: dict[Any, Any] | None,
    application: dict[Any, Any] | None,
) -> None:
    raw = ServiceBusMessage(body).raw_amqp_message
    shaped(raw, header_fields, properties_fields, no_header, no_properties, annotations, application)
    ours, theirs, by_the_sdk = sb_converted(raw)
    assert ours == theirs
    assert type(ours) is type(theirs)  # Service Bus's own vendored pyamqp Message
    assert by_the_sdk == 0
    if annotations:
        assert ours.message_annotations is not annotations  # copied, as the SDK copies them


def test_what_service_bus_converts_otherwise_is_left_to_the_sdk() -> None:
    made: list[ServiceBusMessage] = []
    with_ttl = ServiceBusMessage(b"x", message_id="m")
    with_ttl.raw_amqp_message.header.time_to_live = 60_000  # type: ignore[union-attr]  # times from the clock
    made.append(with_ttl)
    made.append(ServiceBusMessage(b"x", application_properties={"b": b"bytes"}))  # decoded in place
    long_annotation = ServiceBusMessage(b"x")
    long_annotation.raw_amqp_message.annotations = {b"x-opt-enqueued-time": 1}  # an AMQP long
    made.append(long_annotation)
    extra = ServiceBusMessage(b"x", message_id="m")
    extra.raw_amqp_message.properties.extra = 1  # type: ignore[union-attr]  # what no field holds
    made.append(extra)
    for message in made:
        before = transports.stats.converted_slow
        ServiceBusTransport.to_outgoing_amqp_message(message.raw_amqp_message)
        assert transports.stats.converted_slow - before == 1, message


def test_the_pinned_sdks_service_bus_message_is_made_directly() -> None:
    # If this fails after an SDK upgrade, ServiceBusMessage's constructor makes something else now: the router
    # uses the constructor (correct, slower) until `_made_directly` is brought in line with it.
    assert servicebus.service_bus_message is servicebus._made_directly


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=40), props=st.dictionaries(st.text(max_size=5), values, max_size=4),
       content_type=st.one_of(st.none(), st.text(max_size=20)), key=st.text(min_size=1, max_size=10))  # fmt: skip
def test_the_routers_service_bus_message_is_the_one_the_constructor_makes(
    body: bytes, props: dict[str, Any], content_type: str | None, key: str
) -> None:
    message = _outgoing(body, props, content_type, key)
    assert alike(servicebus._made_directly(message), servicebus.constructed(message))
    other = _outgoing(body + b"!", props, content_type, key)
    assert not alike(servicebus._made_directly(other), servicebus.constructed(message))


def test_an_id_the_constructor_refuses_gets_its_error() -> None:
    too_long = _outgoing(b"x", {}, None, "k" * 129)
    try:
        servicebus.service_bus_message(too_long)
    except ValueError as error:
        assert "session_id cannot be longer than 128" in str(error)
    else:
        raise AssertionError("a session id of 129 characters was accepted")
    longest = _outgoing(b"x", {}, None, "k" * 128)  # what the service takes: made directly
    assert alike(servicebus.service_bus_message(longest), servicebus.constructed(longest))
