"""An event as the router makes it for Event Hubs, without the SDK's per-field tests, is the one the SDK
makes: `EventData` (routing/deliver/eventhubs.py) holds what its constructor and public setters make it
hold, and its AMQP message (routing/deliver/transports.py) is the one azure-eventhub's own
`to_outgoing_amqp_message` makes, field for field, on `EventData` and `AmqpAnnotatedMessage`s carrying any
of the header's and the properties' fields (or none, or no header or properties at all), every body kind,
annotations and application properties. A header or properties holding anything but their fields is left
to the SDK's conversion."""

from __future__ import annotations

from typing import Any

from azure.eventhub import EventData
from azure.eventhub._transport._pyamqp_transport import PyamqpTransport as EventHubsOwn
from azure.eventhub.amqp import AmqpAnnotatedMessage, AmqpMessageProperties
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.deliver import eventhubs, transports
from routing.deliver.eventhubs import alike, event_data, with_partition_key
from routing.deliver.transports import EventHubsTransport
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
    data = EventData(body)
    raw = data.raw_amqp_message
    for name, value in header_fields.items():
        setattr(raw.header, name, value)
    for name, value in properties_fields.items():
        setattr(raw.properties, name, value)
    if no_header:
        raw.header = None  # type: ignore[assignment]
    if no_properties:
        raw.properties = None  # type: ignore[assignment]
    raw.annotations = annotations
    raw.application_properties = application
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
