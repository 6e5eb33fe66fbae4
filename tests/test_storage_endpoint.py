"""The Storage endpoint (IoT Hub's storage container endpoint, the cold path), end to end: function_app's
functions on worker-shaped input, writing through the unmodified azure-storage-blob SDK to Azurite, read
back as a consumer would: one blob per batch per ingress partition named by IoT Hub's file name format,
JSON lines in arrival order in IoT Hub's record shape, a retried batch overwriting its blob, every event
type taken, a missing container and a refused key failing as they should. And the table's rules."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from routing.deliver.pool import SenderPool
from routing.deliver.senders import RetryOptions
from routing.deliver.storage import CONTENT_TYPE, StorageSender, blob_name
from routing.model import EndpointType, EventType, IngressMessage, message_id
from routing.routes.table import Endpoint, parse_endpoint
from tests.azurite import ACCOUNT, Azurite
from tests.conftest import WorkerEvent, sensor_data, worker_batch
from tests.deployment import deployed_app, stored_letters

ENQUEUED = datetime(2026, 11, 26, 9, 7, 30, 250000, tzinfo=UTC)
JSON_TELEMETRY = {"content-type": "application/json", "content-encoding": "utf-8"}
V2_TYPES = [
    "Microsoft.DigitalTwins.Twin.Create",
    "Microsoft.DigitalTwins.Twin.Update",
    "Microsoft.DigitalTwins.Twin.Delete",
    "Microsoft.DigitalTwins.Relationship.Create",
    "Microsoft.DigitalTwins.Relationship.Update",
    "Microsoft.DigitalTwins.Relationship.Delete",
]


def storage_endpoint(container: str) -> dict[str, Any]:
    every = [t.value for t in EventType]
    return {"name": "archive", "type": "Storage", "eventTypes": every, "connection": "ARCHIVE", "path": container}


Deploy = Callable[..., ContainerClient]


@pytest.fixture
def deploy(azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deploy]:
    """Deploys the app with a Storage endpoint (`fields` override its own) on a fresh container, created
    unless `create` is false; returns the container, the deployment's dead letters on `.letters`."""
    # Short backoff so the retry tests stay quick; the production defaults are longer.
    monkeypatch.setattr(
        "routing.app.SenderPool",
        lambda: SenderPool(retry=RetryOptions(attempts=2, backoff_initial=0.01, backoff_max=0.05)),
    )
    stack = contextlib.ExitStack()

    def run(*, create: bool = True, connections: dict[str, str] | None = None, **fields: Any) -> ContainerClient:
        name = f"archive-{uuid.uuid4().hex[:12]}"
        container = ContainerClient.from_connection_string(azurite.connection_string, name)
        if create:
            container.create_container()
        routes = [{**storage_endpoint(name), **fields}]
        settings = {"ARCHIVE": azurite.connection_string, **(connections or {})}
        app = deployed_app(routes, settings, azurite=azurite, tmp_path=tmp_path, monkeypatch=monkeypatch)
        container.letters = stack.enter_context(app)  # type: ignore[attr-defined]
        return container

    with stack:
        yield run


def telemetry(seq: int, device: str, body: bytes, *, json_body: bool = True, **properties: Any) -> WorkerEvent:
    system = {
        "iothub-connection-device-id": device,
        "iothub-connection-auth-method": '{"scope":"device","type":"sas","issuer":"iothub"}',
        "iothub-connection-auth-generation-id": "6389",
        "iothub-message-source": "Telemetry",
        "iothub-enqueuedtime": "2026-11-26T09:07:30Z",
        **(JSON_TELEMETRY if json_body else {}),
    }
    return WorkerEvent(
        body=body,
        properties=properties,
        system_properties=system,
        sequence_number=seq,
        offset=1000 + seq,
        enqueued_time=ENQUEUED + timedelta(seconds=seq - 40),
    )


def interleaved(first: int = 40, count: int = 9) -> list[WorkerEvent]:
    """Three devices' readings, interleaved as they arrive (the pipeline groups them per device)."""
    return [
        telemetry(seq, f"dev-{seq % 3}", json.dumps({"n": seq, "t": 20 + seq}).encode(), unit="C")
        for seq in range(first, first + count)
    ]


def blobs(container: ContainerClient) -> dict[str, list[dict[str, Any]]]:
    """Blob name -> its records, each line a JSON text."""
    return {
        b.name: [json.loads(line) for line in container.download_blob(b.name).readall().splitlines()]
        for b in container.list_blobs()
    }


def route_telemetry(functions: dict[str, Any], events: list[WorkerEvent], partition: str = "2") -> None:
    functions["route_telemetry"].get_user_function()(worker_batch(events, partition_id=partition))


def test_a_batch_is_one_blob_named_by_iot_hubs_format_its_records_in_arrival_order(
    functions: dict[str, Any], deploy: Deploy
) -> None:
    container = deploy()
    events = interleaved()
    route_telemetry(functions, events)

    stored = blobs(container)
    # {iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm} of the first message's enqueued time, then its sequence.
    assert list(stored) == ["telemetry/2/2026/11/26/09/07-40"]
    records = stored["telemetry/2/2026/11/26/09/07-40"]
    assert [r["Body"]["n"] for r in records] == list(range(40, 49))  # arrival order, not per device
    assert records[0] == {
        "EnqueuedTimeUtc": "2026-11-26T09:07:30.250000Z",
        "Properties": {"unit": "C"},
        "SystemProperties": {
            "messageId": message_id(
                IngressMessage(
                    body=b"", properties={}, system_properties={}, source="telemetry", partition="2", sequence_number=40
                ),
                0,
            ),
            "connectionDeviceId": "dev-1",
            "connectionAuthMethod": '{"scope":"device","type":"sas","issuer":"iothub"}',
            "connectionDeviceGenerationId": "6389",
            "enqueuedTime": "2026-11-26T09:07:30Z",
            "contentEncoding": "utf-8",
            "contentType": "application/json",
        },
        "Body": {"n": 40, "t": 60},
    }
    properties = container.get_blob_client("telemetry/2/2026/11/26/09/07-40").get_blob_properties()
    assert properties.content_settings.content_type == CONTENT_TYPE
    assert not stored_letters(container.letters)  # type: ignore[attr-defined]


def test_a_body_without_json_content_type_and_utf8_encoding_is_written_base64_as_iot_hub_does(
    functions: dict[str, Any], deploy: Deploy
) -> None:
    container = deploy()
    raw = b'{"n":1}\xff'  # not even UTF-8: the bytes must survive
    events = [
        telemetry(1, "dev-1", raw, json_body=False),
        telemetry(2, "dev-1", b'{"n":2}', json_body=False),  # JSON, but not said to be
        telemetry(3, "dev-1", b"not json"),  # said to be JSON, but is not
    ]
    route_telemetry(functions, events, partition="0")

    [records] = blobs(container).values()
    assert [r["Body"] for r in records] == [base64.b64encode(e.body).decode() for e in events]
    assert "contentType" not in records[0]["SystemProperties"]


def test_a_retried_batch_overwrites_its_blob_and_the_next_batch_gets_its_own(
    functions: dict[str, Any], deploy: Deploy
) -> None:
    container = deploy()
    route_telemetry(functions, interleaved())
    route_telemetry(functions, interleaved())  # the host retrying the batch: the same names, overwritten
    assert {name: len(records) for name, records in blobs(container).items()} == {"telemetry/2/2026/11/26/09/07-40": 9}

    route_telemetry(functions, interleaved(first=49, count=3))
    assert {name: len(records) for name, records in blobs(container).items()} == {
        "telemetry/2/2026/11/26/09/07-40": 9,
        "telemetry/2/2026/11/26/09/07-49": 3,
    }


def test_a_file_name_format_in_another_order_with_an_extension_keeps_the_suffix_before_it(
    functions: dict[str, Any], deploy: Deploy
) -> None:
    container = deploy(fileNameFormat="cold/{YYYY}-{MM}-{DD}/{HH}{mm}/{iothub}-{partition}.json")
    route_telemetry(functions, interleaved(count=2), partition="5")
    assert list(blobs(container)) == ["cold/2026-11-26/0907/telemetry-5-40.json"]


def test_a_send_larger_than_a_blob_goes_to_several_each_named_by_its_first_message(
    functions: dict[str, Any], deploy: Deploy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StorageSender, "max_blob_bytes", 1200)
    container = deploy()
    route_telemetry(functions, interleaved(count=12))
    stored = blobs(container)
    assert len(stored) > 1
    for name, records in stored.items():
        assert name.endswith(f"-{records[0]['Body']['n']}")
    assert sorted(r["Body"]["n"] for records in stored.values() for r in records) == list(range(40, 52))


def test_every_event_type_is_taken_telemetry_included_twin_events_as_their_envelopes(
    functions: dict[str, Any], deploy: Deploy
) -> None:
    container = deploy()
    route_telemetry(functions, interleaved(count=1))
    topology = {"SpacesToNotify": [], "Id": "dev-3", "Type": "Devices", "AccessType": "Create"}
    udf = {"TopologyObjectId": "space-4", "ResourceType": "Space", "Payload": "{}", "CorrelationId": "c"}
    space = {**sensor_data("space-9"), "Type": "Space", "RawData": "1"}
    first_service = [
        WorkerEvent(body=json.dumps(data).encode(), properties={"Type": event_type}, sequence_number=seq)
        for seq, (event_type, data) in enumerate(
            [("SensorChange", sensor_data("s-1")), ("SpaceChange", space), ("TopologyOperation", topology),
             ("UdfCustom", udf)],
            start=1,
        )
    ]  # fmt: skip
    v2 = [
        WorkerEvent(
            body=b'{"temperature":21}' if event_type == "microsoft.iot.telemetry" else json.dumps({"n": seq}).encode(),
            properties={
                "cloudEvents:specversion": "1.0",
                "cloudEvents:type": event_type,
                "cloudEvents:id": f"ev-{seq}",
                "cloudEvents:source": "contoso.api.wus2.digitaltwins.azure.net",
                "cloudEvents:subject": "room-1" if "Relationship" not in event_type else "room-1/relationships/r",
                "cloudEvents:time": "2026-11-26T10:00:00Z",
            },
            sequence_number=seq,
        )
        for seq, event_type in enumerate([*V2_TYPES, "microsoft.iot.telemetry"], start=5)
    ]
    functions["route_twins"].get_user_function()(worker_batch([*first_service, *v2], partition_id="1"))

    stored = blobs(container)
    assert sorted(stored) == ["telemetry/2/2026/11/26/09/07-40", "twins/1/2026/11/26/09/00-1"]
    records = stored["twins/1/2026/11/26/09/00-1"]
    types = [r["Properties"].get("EventType") or r["Properties"].get("cloudEvents:type") for r in records]
    assert types == ["SensorChange", "SpaceChange", "TopologyOperation", "UdfCustom", *V2_TYPES,
                     "microsoft.iot.telemetry"]  # fmt: skip
    # A Digital Twins event's body is its envelope (the endpoint's format), written as JSON.
    assert records[0]["Body"]["eventType"] == "SensorChange"
    assert records[0]["Body"]["data"] == sensor_data("s-1")
    assert records[0]["SystemProperties"]["contentType"] == "application/json"
    # Telemetry, v2 included, is forwarded raw: without a JSON content type and encoding, base64.
    assert base64.b64decode(records[-1]["Body"]) == b'{"temperature":21}'
    assert not stored_letters(container.letters)  # type: ignore[attr-defined]


def test_a_missing_container_fails_for_good_naming_it_and_is_not_created(
    functions: dict[str, Any], deploy: Deploy
) -> None:
    container = deploy(create=False)
    route_telemetry(functions, interleaved(count=3))

    letters = list(stored_letters(container.letters).values())  # type: ignore[attr-defined]
    assert len(letters) == 3
    assert {letter["code"] for letter in letters} == {"delivery-failed"}  # dead-lettered, not parked to retry
    reason = letters[0]["reason"]
    assert f"container '{container.container_name}' was not found at " in reason
    assert f"/{ACCOUNT}:" in reason and "the router does not create it" in reason
    assert not container.exists()


def test_a_refused_primary_key_fails_over_to_the_secondary_connection(
    functions: dict[str, Any], deploy: Deploy, azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    rotated = azurite.connection_string.replace("AccountKey=", "AccountKey=AAAA", 1)
    container = deploy(connection="ARCHIVE_OLD", secondaryConnection="ARCHIVE", connections={"ARCHIVE_OLD": rotated})
    with caplog.at_level(logging.WARNING, logger="routing.deliver.senders"):
        route_telemetry(functions, interleaved(count=3))

    assert [len(records) for records in blobs(container).values()] == [3]
    assert not stored_letters(container.letters)  # type: ignore[attr-defined]
    assert any("ARCHIVE_OLD was refused" in r.getMessage() and "failing over to ARCHIVE" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_refused_by_both_connections_fails_for_good_naming_them(
    functions: dict[str, Any], deploy: Deploy, azurite: Azurite
) -> None:
    rotated = azurite.connection_string.replace("AccountKey=", "AccountKey=AAAA", 1)
    container = deploy(connection="ARCHIVE_OLD", connections={"ARCHIVE_OLD": rotated})
    route_telemetry(functions, interleaved(count=1))
    [letter] = stored_letters(container.letters).values()  # type: ignore[attr-defined]
    assert letter["code"] == "delivery-failed"
    assert "unauthorized with ARCHIVE_OLD" in letter["reason"]
    assert not list(container.list_blobs())


# --- the table's rules --------------------------------------------------------------------------------


def problems(**fields: Any) -> list[str]:
    parsed = parse_endpoint({**storage_endpoint("archive"), **fields}, "endpoint #1")
    assert isinstance(parsed, list), parsed
    return [str(p) for p in parsed]


def test_a_storage_endpoint_takes_every_event_type_and_keeps_its_file_name_format() -> None:
    assert EndpointType.STORAGE.accepts == frozenset(EventType)
    raw = {**storage_endpoint("archive"), "fileNameFormat": "{partition}/{iothub}/{YYYY}{MM}{DD}/{HH}/{mm}.json"}
    endpoint = parse_endpoint(raw, "x")
    assert isinstance(endpoint, Endpoint)
    assert set(endpoint.event_types) == set(EventType)
    assert endpoint.to_dict()["fileNameFormat"] == raw["fileNameFormat"]
    assert parse_endpoint(endpoint.to_dict(), "x") == endpoint
    # The default is IoT Hub's, and is not written out.
    default = parse_endpoint(storage_endpoint("archive"), "x")
    assert isinstance(default, Endpoint)
    assert default.file_name_format == "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}"
    assert "fileNameFormat" not in default.to_dict()
    assert default.destination != endpoint.destination  # another naming is another destination


def test_a_file_name_format_needs_every_token_and_no_unknown_one() -> None:
    assert problems(fileNameFormat="{iothub}/{YYYY}/{MM}/{DD}") == [
        "endpoint 'archive', field 'fileNameFormat': must hold every one of {iothub} {partition} {YYYY} {MM} {DD} "
        "{HH} {mm}, in any order (missing {partition} {HH} {mm}): '{iothub}/{YYYY}/{MM}/{DD}'",
    ]
    assert problems(fileNameFormat="{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}/{hh}") == [
        "endpoint 'archive', field 'fileNameFormat': has unknown token {hh} (did you mean '{HH}'?); the tokens are "
        "{iothub} {partition} {YYYY} {MM} {DD} {HH} {mm}: '{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}/{hh}'",
    ]
    tokens = "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}"
    for bad in ("/" + tokens, tokens.replace("/", "//", 1), tokens + "/", tokens + ".", tokens.replace("/", "\\", 1)):
        assert len(problems(fileNameFormat=bad)) == 1, bad
    assert problems(fileNameFormat=7) == [
        "endpoint 'archive', field 'fileNameFormat': must be a string (IoT Hub's blob name format), got 7"
    ]


def test_storage_fields_belong_to_storage_endpoints_and_the_path_is_a_container_name() -> None:
    hub = {"name": "hub", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "C", "path": "h"}
    parsed = parse_endpoint({**hub, "fileNameFormat": "{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}"}, "x")
    assert [str(p) for p in parsed] == [  # type: ignore[union-attr]
        "endpoint 'hub', field 'fileNameFormat': applies to Storage endpoints only"
    ]
    assert problems(path="Archive_1") == [
        "endpoint 'archive', field 'path': 'Archive_1' is not a Blob container name: 3-63 lower-case letters, "
        "digits and single hyphens, starting and ending with a letter or digit"
    ]
    assert problems(orderKey="$body.Id") == [
        "endpoint 'archive', field 'orderKey': has no use on a Storage endpoint: it writes each ingress partition "
        "in arrival order"
    ]
    assert problems(type="Storag")[0] == (
        "endpoint 'archive', field 'type': unknown endpoint type 'Storag' (did you mean 'Storage'?); expected "
        "EventHub, ServiceBus, EventGrid or Storage"
    )


def test_blob_names_come_from_the_first_message_never_the_clock() -> None:
    endpoint = parse_endpoint(storage_endpoint("archive"), "x")
    assert isinstance(endpoint, Endpoint)
    ingress = IngressMessage(body=b"{}", properties={}, system_properties={}, source="telemetry", partition=None,
                             sequence_number=None, enqueued_time=None)  # fmt: skip
    event_id = message_id(ingress, 3)
    from routing.model import Event, Outgoing  # noqa: PLC0415

    event = Event(event_type=EventType.DEVICE_MESSAGES, order_key="d", message_id=event_id, ingress=ingress, index=3)
    message = Outgoing(endpoint="archive", event=event, body=b"{}", content_type=None, properties={}, order_key="d",
                       message_id=event_id)  # fmt: skip
    # No partition, no enqueued time, no sequence number: still the same name on every try.
    assert blob_name(endpoint.file_name_format, message) == f"telemetry/_/1970/01/01/00/00-{event_id}_3"
