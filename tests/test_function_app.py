"""function_app.py as the Functions host sees it: bindings, retry policy, and batches decoded the
way the worker decodes them."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from routing import app as wiring
from routing.errors import RoutingError
from routing.settings import SETTINGS
from tests.conftest import WorkerEvent, sensor_data, worker_batch

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_TRIGGERS = {
    "route_telemetry": ("TELEMETRY_HUB_CONNECTION", "%TELEMETRY_HUB_NAME%", "%TELEMETRY_HUB_CONSUMER_GROUP%"),
    "route_twins": ("TWINS_HUB_CONNECTION", "%TWINS_HUB_NAME%", "%TWINS_HUB_CONSUMER_GROUP%"),
}


def test_two_batched_binary_event_hub_triggers_with_names_from_settings(functions: dict[str, Any]) -> None:
    assert set(functions) == set(EXPECTED_TRIGGERS) | {"redeliver_parked"}
    for name, (connection, hub, group) in EXPECTED_TRIGGERS.items():
        [binding] = json.loads(functions[name].get_function_json())["bindings"]
        binding["cardinality"] = binding["cardinality"].lower()  # the library writes "MANY"; the host ignores case
        assert binding == {
            "direction": "IN",
            "dataType": "BINARY",
            "type": "eventHubTrigger",
            "name": "events",
            "connection": connection,
            "eventHubName": hub,
            "cardinality": "many",
            "consumerGroup": group,
        }


def test_the_redelivery_is_a_timer_every_ten_seconds_on_one_instance(functions: dict[str, Any]) -> None:
    [binding] = json.loads(functions["redeliver_parked"].get_function_json())["bindings"]
    # Six NCRONTAB fields, seconds first. The host runs a timer function as a singleton (a blob lease in
    # AzureWebJobsStorage), so two redeliveries never run at once.
    assert binding["type"] == "timerTrigger" and binding["schedule"] == "*/10 * * * * *"
    assert binding.get("runOnStartup") in (None, False)


def test_a_raised_batch_is_retried_with_backoff_until_handled(functions: dict[str, Any]) -> None:
    for fn in (functions[name] for name in EXPECTED_TRIGGERS):
        policy = fn.get_settings_dict("retry_policy")
        assert policy["strategy"] == "exponential_backoff"
        assert policy["max_retry_count"] == "-1"
        assert policy["minimum_interval"] and policy["maximum_interval"]


def test_every_setting_the_app_reads_is_in_the_sample_settings_file() -> None:
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    referenced = {v.strip("%") for pair in EXPECTED_TRIGGERS.values() for v in pair}
    assert referenced <= set(SETTINGS)
    assert set(SETTINGS) <= set(sample)


@pytest.fixture
def deployed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    routes = [
        {"name": "raw", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "RAW", "path": "raw"},
        {"name": "bus", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "BUS", "path": "q"},
    ]
    (tmp_path / "routes.json").write_text(json.dumps(routes))
    monkeypatch.setenv("ROUTES_FILE", str(tmp_path / "routes.json"))
    monkeypatch.setenv("ROUTER_OUTPUT_DIR", str(tmp_path / "out"))
    wiring.reset()
    yield tmp_path / "out"
    wiring.reset()


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_telemetry_batch_from_the_worker_is_routed_in_device_order(functions: dict[str, Any], deployed: Path) -> None:
    iothub = {"iothub-message-source": "Telemetry", "iothub-enqueuedtime": "2026-11-26T09:00:00Z"}
    raw_events = [
        WorkerEvent(
            body=f'{{"n":{i}}}'.encode(),
            properties={"unit": "C"},
            system_properties={**iothub, "iothub-connection-device-id": f"dev-{i % 3}"},
            sequence_number=100 + i,
            offset=4096 + i,
        )
        for i in range(9)
    ]
    events = worker_batch(raw_events, partition_id="3")
    functions["route_telemetry"].get_user_function()(events)
    lines = read(deployed / "raw.jsonl")
    assert len(lines) == 9
    for device in ("dev-0", "dev-1", "dev-2"):
        bodies = [base64.b64decode(x["bodyBase64"]) for x in lines if x["partitionKey"] == device]
        assert bodies == [e.body for e in raw_events if e.system_properties["iothub-connection-device-id"] == device]
    assert all(x["properties"] == {"unit": "C"} for x in lines)
    assert len({x["messageId"] for x in lines}) == 9


def test_twins_batch_routes_events_and_dead_letters_garbage_without_failing(
    functions: dict[str, Any], deployed: Path
) -> None:
    raw_events = [
        WorkerEvent(
            body=json.dumps(sensor_data("s-1")).encode(), properties={"Type": "SensorChange"}, sequence_number=1
        ),
        WorkerEvent(body=b"\xff\x01 not json", sequence_number=2),
        WorkerEvent(body=b"", properties={"Type": "SensorChange"}, sequence_number=3),
    ]
    functions["route_twins"].get_user_function()(worker_batch(raw_events, partition_id="0"))
    [bus] = read(deployed / "bus.jsonl")
    assert (bus["sessionId"], bus["body"]["eventType"]) == ("s-1", "SensorChange")
    letters = read(deployed / "deadletter.jsonl")
    assert [x["original"]["sequenceNumber"] for x in letters] == [2, 3]
    assert [x["original"]["partition"] for x in letters] == ["0", "0"]
    assert base64.b64decode(letters[0]["original"]["bodyBase64"]) == b"\xff\x01 not json"


def test_message_ids_follow_partition_and_sequence_not_the_invocation(
    functions: dict[str, Any], deployed: Path
) -> None:
    event = WorkerEvent(body=b"1", system_properties={"iothub-connection-device-id": "d"}, sequence_number=7)
    run = functions["route_telemetry"].get_user_function()
    run(worker_batch([event], partition_id="0"))
    run(worker_batch([event], partition_id="0"))  # a redelivery after a retry
    run(worker_batch([event], partition_id="1"))  # same sequence number, other partition
    ids = [x["messageId"] for x in read(deployed / "raw.jsonl")]
    assert ids[0] == ids[1] != ids[2]


def test_without_valid_routes_the_invocation_raises_so_the_checkpoint_holds(
    functions: dict[str, Any], deployed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTES_FILE", str(deployed.parent / "missing.json"))
    wiring.reset()
    event = WorkerEvent(body=b"1", system_properties={"iothub-connection-device-id": "d"})
    with pytest.raises(RoutingError, match=r"missing\.json: does not exist"):
        functions["route_telemetry"].get_user_function()(worker_batch([event]))
    monkeypatch.delenv("ROUTES_FILE")
    wiring.reset()
    with pytest.raises(RoutingError, match="ROUTES_FILE is not set"):
        functions["route_telemetry"].get_user_function()(worker_batch([event]))


def test_host_times_without_a_zone_are_utc_in_everything_the_router_emits(
    functions: dict[str, Any], deployed: Path
) -> None:
    # The host sends EnqueuedTimeUtc as "2026-11-26T09:00:00.15" (no zone); a SensorChange without its
    # own EventTimestamp takes the enqueued time as its eventTime.
    enqueued = datetime(2026, 11, 26, 9, 0, 0, 150000, tzinfo=UTC)
    data = {k: v for k, v in sensor_data("s-1").items() if k != "EventTimestamp"}
    raw_events = [
        WorkerEvent(body=json.dumps(data).encode(), properties={"Type": "SensorChange"}, enqueued_time=enqueued),
        WorkerEvent(body=b"not json", properties={"Type": "SensorChange"}, sequence_number=1, enqueued_time=enqueued),
    ]
    batch = worker_batch(raw_events)
    assert batch[0].enqueued_time is not None and batch[0].enqueued_time.tzinfo is None  # what the library makes
    functions["route_twins"].get_user_function()(batch)
    [bus] = read(deployed / "bus.jsonl")
    [letter] = read(deployed / "deadletter.jsonl")
    for emitted in (bus["body"]["eventTime"], letter["original"]["enqueuedTime"]):
        assert datetime.fromisoformat(emitted) == enqueued  # an offset-less time would not compare


def test_each_event_keeps_its_own_metadata_when_the_host_drops_null_partition_keys(
    functions: dict[str, Any], deployed: Path
) -> None:
    # PartitionKeyArray leaves nulls out, so it is shorter than the batch: nothing may be read from it.
    raw_events = [
        WorkerEvent(
            body=f"{i}".encode(),
            properties={"n": str(i)},
            system_properties={
                "iothub-connection-device-id": f"dev-{i}",
                "iothub-message-source": "Telemetry",
                **({"content-type": "application/json"} if i == 0 else {}),
            },
            sequence_number=10 + i,
            partition_key="pk" if i == 1 else None,
        )
        for i in range(3)
    ]
    functions["route_telemetry"].get_user_function()(worker_batch(raw_events))
    lines = sorted(read(deployed / "raw.jsonl"), key=lambda x: x["partitionKey"])
    assert [(x["partitionKey"], x["properties"], x["contentType"]) for x in lines] == [
        ("dev-0", {"n": "0"}, "application/json"),
        ("dev-1", {"n": "1"}, None),
        ("dev-2", {"n": "2"}, None),
    ]


def test_importing_the_app_takes_what_it_imported_out_of_the_cycle_collectors_passes() -> None:
    """In a fresh interpreter, as the worker imports it: the modules' objects are frozen (`gc.freeze`), so
    the full collections a batch's allocations set off no longer walk the worker's and the SDKs' heap."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    script = (
        "import gc; before = gc.get_freeze_count(); import function_app; "
        "assert gc.is_tracked(function_app.app.__dict__); print(before, gc.get_freeze_count())"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    before, after = map(int, done.stdout.split())
    assert before == 0
    assert after > 10_000  # the app, the worker library and the SDKs it imported
