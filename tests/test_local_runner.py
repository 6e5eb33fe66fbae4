"""`python -m routing run`: the samples through the real pipeline, and bad input refused cleanly."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from routing.cli.main import app

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
cli = CliRunner()


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(*args: str) -> Any:
    return cli.invoke(app, ["run", *args])


def test_make_run_command_routes_every_sample_line(tmp_path: Path) -> None:
    # The same command `make run` uses, as a user would run it.
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "routing",
            "run",
            "--events",
            str(SAMPLES / "events.jsonl"),
            "--routes",
            str(SAMPLES / "routes.json"),
            "--out",
            str(out),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    summary = json.loads(done.stdout)
    lines = (SAMPLES / "events.jsonl").read_text().splitlines()
    assert summary["messages"] == len(lines)
    written = {p.stem: read(p) for p in out.glob("*.jsonl")}
    assert set(written) == {
        "telemetry-hub",
        "unmatched-telemetry",  # the fallback: telemetry of devices telemetry-hub's filter does not take
        "thermostat-01-hot",  # an IoT Hub routing query: one device's telemetry
        "twins-hub",
        "sensor-alerts",
        "topology-grid",
        "adt-hub",
        "room-alerts",
        "cold-archive",  # a Storage endpoint: the runner writes its messages to a file like every other's
        "deadletter",
    }
    # Every summary count matches what was written, and every type in the samples went somewhere.
    for row in summary["delivered"]:
        assert len([x for x in written[row["endpoint"]] if x["eventType"] == row["eventType"]]) == row["count"]
    assert {x["eventType"] for x in written["twins-hub"]} == {
        "TopologyOperation",
        "SpaceChange",
        "SensorChange",
        "UdfCustom",
    }
    # The cold path takes every type it lists, v2 telemetry included (device messages it leaves to the hub
    # and the fallback: a Storage endpoint taking them all would leave the fallback none, as in IoT Hub).
    delivered_types = {row["eventType"] for row in summary["delivered"]}
    assert {x["eventType"] for x in written["cold-archive"]} == delivered_types - {"DeviceMessages"}
    assert {x["endpointType"] for x in written["cold-archive"]} == {"Storage"}
    assert len(written["deadletter"]) == sum(row["count"] for row in summary["deadLetters"]) > 0
    assert all(x["reason"] for x in written["deadletter"])


def test_the_v2_samples_reach_their_endpoints_keyed_by_twin(tmp_path: Path) -> None:
    # Counted by hand from samples/events.jsonl (lines 28-36) and samples/routes.json.
    out = tmp_path / "out"
    result = run("--events", str(SAMPLES / "events.jsonl"), "--routes", str(SAMPLES / "routes.json"), "--out", str(out))
    assert result.exit_code == 0, result.output
    adt = [(x["eventType"], x["partitionKey"]) for x in read(out / "adt-hub.jsonl")]
    assert adt == [
        ("Microsoft.DigitalTwins.Twin.Create", "room-21"),
        ("Microsoft.DigitalTwins.Twin.Update", "room-21"),
        ("microsoft.iot.telemetry", "room-21"),
        ("Microsoft.DigitalTwins.Twin.Update", "room-21"),  # the Event Grid schema one
        ("Microsoft.DigitalTwins.Relationship.Create", "floor-2"),
        ("Microsoft.DigitalTwins.Relationship.Delete", "floor-2"),
        ("microsoft.iot.telemetry", "room-22"),
        ("Microsoft.DigitalTwins.Twin.Delete", "room-22"),
    ]
    telemetry = next(x for x in read(out / "adt-hub.jsonl") if x["eventType"] == "microsoft.iot.telemetry")
    assert base64.b64decode(telemetry["bodyBase64"]) == b'{"Temperature":27.1}'  # forwarded as it came
    assert telemetry["properties"]["cloudEvents:dataschema"] == "dtmi:contoso:Room;1"
    # Only the update that took the temperature above 25 passes room-alerts' filter.
    [alert] = read(out / "room-alerts.jsonl")
    assert (alert["sessionId"], alert["body"]["id"], alert["body"]["data"]["patch"][0]["value"]) == (
        "room-21",
        "adt-31",
        27.1,
    )
    [no_twin] = [x for x in read(out / "deadletter.jsonl") if x["code"] == "no-order-key"]
    assert no_twin["original"]["sequenceNumber"] == 35
    assert "no subject and no data.$dtId" in no_twin["reason"]


def test_summary_table_names_endpoints_and_dead_letter_reasons(tmp_path: Path) -> None:
    result = run(
        "--events", str(SAMPLES / "events.jsonl"), "--routes", str(SAMPLES / "routes.json"), "--out", str(tmp_path)
    )
    assert result.exit_code == 0, result.output
    for words in ("telemetry-hub", "DeviceMessages", "sensor-alerts", "Dead letters", "not-json"):
        assert words in result.output


def test_the_summary_never_cuts_or_folds_an_event_type_at_80_columns(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("routing.cli.main.console.width", 80)
    result = run(
        "--events", str(SAMPLES / "events.jsonl"), "--routes", str(SAMPLES / "routes.json"), "--out", str(tmp_path)
    )
    assert result.exit_code == 0, result.output
    delivered = result.output.split("Dead letters")[0]
    cells = {line.split("│")[2].strip() for line in delivered.splitlines() if line.count("│") == 4}
    types = {line["eventType"] for path in tmp_path.glob("*.jsonl") if path.stem != "deadletter" for line in read(path)}
    assert "Microsoft.DigitalTwins.Relationship.Create" in types
    assert types <= cells, sorted(types - cells)
    assert all(len(line) <= 80 for line in delivered.splitlines()), delivered


def test_a_bad_routes_file_is_refused_with_every_problem_and_nothing_written(tmp_path: Path) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(
        json.dumps(
            [
                {"name": "bus", "type": "ServiceBus", "eventTypes": ["DeviceMessages"], "connection": "X", "path": "q"},
                {
                    "name": "hub",
                    "type": "EventHub",
                    "eventTypes": ["Weather"],
                    "connection": "Endpoint=sb://x;SharedAccessKey=y",
                    "path": "h",
                },
            ]
        )
    )
    out = tmp_path / "out"
    result = run("--events", str(SAMPLES / "events.jsonl"), "--routes", str(routes), "--out", str(out))
    assert result.exit_code == 2
    assert "3 problems" in result.output
    assert "'bus'" in result.output and "'Weather'" in result.output and "connection" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [("[{", "not valid JSON"), ('{"name": "x"}', "must be a JSON list")],
)
def test_unreadable_routes_files_name_the_file(tmp_path: Path, content: str, words: str) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(content)
    result = run("--events", str(SAMPLES / "events.jsonl"), "--routes", str(routes), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert words in result.output and "routes.json" in result.output


def test_missing_inputs_are_named(tmp_path: Path) -> None:
    result = run(
        "--events", str(tmp_path / "nope.jsonl"), "--routes", str(SAMPLES / "routes.json"), "--out", str(tmp_path / "o")
    )
    assert result.exit_code == 2 and "nope.jsonl" in result.output
    result = run(
        "--events", str(SAMPLES / "events.jsonl"), "--routes", str(tmp_path / "r.json"), "--out", str(tmp_path / "o")
    )
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "o").exists()


def test_bad_lines_are_dead_lettered_with_their_text_and_the_rest_routed(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    good = {"body": {"v": 1}, "systemProperties": {"iothub-connection-device-id": "d1"}}
    events.write_text(
        "\n".join(
            [
                json.dumps(good),
                "this is not json",
                json.dumps({"body": 1, "bodyText": "2"}),
                json.dumps({"bodyBase64": "%%%"}),
                json.dumps({"body": {}, "colour": "red"}),
                "",
                json.dumps(good),
            ]
        )
        + "\n"
    )
    out = tmp_path / "out"
    result = run("--events", str(events), "--routes", str(SAMPLES / "routes.json"), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert len(read(out / "telemetry-hub.jsonl")) == 2
    letters = read(out / "deadletter.jsonl")
    assert [x["code"] for x in letters] == ["bad-line"] * 4
    assert letters[0]["raw"] == "this is not json" and "original" not in letters[0]
    reasons = " | ".join(x["reason"] for x in letters)
    for words in ("line 2 is not JSON", "exactly one of body", "not valid base64", "unknown field(s) colour"):
        assert words in reasons


def test_a_second_run_replaces_the_first_runs_files(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"body": 1, "systemProperties": {"iothub-connection-device-id": "d"}}) + "\n")
    args = ["--routes", str(SAMPLES / "routes.json"), "--out", str(tmp_path / "out")]
    assert run("--events", str(SAMPLES / "events.jsonl"), *args).exit_code == 0
    assert run("--events", str(events), *args).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["telemetry-hub.jsonl"]
    assert len(read(tmp_path / "out" / "telemetry-hub.jsonl")) == 1


def test_body_forms_mean_the_same_bytes(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    marks = {"systemProperties": {"iothub-connection-device-id": "d"}}
    bodies: list[dict[str, Any]] = [
        {"body": {"a": [1, 2], "b": "é"}},
        {"bodyText": '{ "a" : [1,2] }'},
        {"bodyBase64": "AP8="},
    ]
    events.write_text("\n".join(json.dumps({**body, **marks}) for body in bodies) + "\n")
    assert (
        run("--events", str(events), "--routes", str(SAMPLES / "routes.json"), "--out", str(tmp_path / "o")).exit_code
        == 0
    )
    sent = [x["bodyBase64"] for x in read(tmp_path / "o" / "telemetry-hub.jsonl")]
    assert [base64.b64decode(s) for s in sent] == ['{"a":[1,2],"b":"é"}'.encode(), b'{ "a" : [1,2] }', b"\x00\xff"]


def _command(*args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    routing = Path(sys.executable).with_name("routing")
    environment = {"PATH": "/usr/bin:/bin", **(env or {})}
    return subprocess.run(
        [str(routing), *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def test_dead_letters_are_summarised_in_the_table_not_printed_one_line_each(tmp_path: Path) -> None:
    done = _command("run", "--events", str(SAMPLES / "events.jsonl"), "--routes", str(SAMPLES / "routes.json"),
                    "--out", "out", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Dead letters (deadletter.jsonl)" in done.stdout
    assert "dead-lettered" not in done.stderr  # the logger's warnings went to the summary, not to stderr


def test_a_second_run_with_other_routes_names_the_files_it_did_not_write(tmp_path: Path) -> None:
    first = _command("run", "--events", str(SAMPLES / "events.jsonl"), "--routes", str(SAMPLES / "routes.json"),
                     "--out", "out", cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0 and "also holds" not in first.stderr
    routes = tmp_path / "one.json"
    routes.write_text(json.dumps([
        {"name": "telemetry-hub", "type": "EventHub", "eventTypes": ["DeviceMessages"], "connection": "C", "path": "p"}
    ]))  # fmt: skip
    second = _command("run", "--events", str(SAMPLES / "events.jsonl"), "--routes", str(routes), "--out", "out",
                      cwd=tmp_path)  # fmt: skip
    assert second.returncode == 0
    assert "also holds" in second.stderr and "sensor-alerts.jsonl" in second.stderr
    assert "telemetry-hub.jsonl," not in second.stderr  # this run wrote that one


def test_router_metrics_console_prints_the_runs_metrics_on_stderr(tmp_path: Path) -> None:
    done = _command("run", "--events", str(SAMPLES / "events.jsonl"), "--routes", str(SAMPLES / "routes.json"),
                    "--out", "out", "-o", "json", env={"ROUTER_METRICS_CONSOLE": "1"}, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["messages"] == 36  # stdout stays the summary alone
    assert '"name": "router.events.in"' in done.stderr and '"name": "router.messages.delivered"' in done.stderr


def per_key(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for record in records:
        out.setdefault(record.get("sessionId") or record.get("partitionKey") or "", []).append(record["messageId"])
    return out


def sample_run(out: Path, *extra: str) -> Any:
    args = ["--events", str(SAMPLES / "events.jsonl"), "--routes", str(SAMPLES / "routes.json"), "--out", str(out)]
    return run(*args, "--batch-size", "5", *extra)


def test_an_endpoint_made_to_fail_for_some_batches_gets_every_message_in_order_once_it_is_back(tmp_path: Path) -> None:
    assert sample_run(tmp_path / "clean").exit_code == 0
    result = sample_run(tmp_path / "outage", "--fail", "sensor-alerts:2-4", "-o", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    [parked] = summary["parked"]
    assert parked["endpoint"] == "sensor-alerts" and parked["parked"] == parked["redelivered"] > 0
    assert parked["stillParked"] == 0 and not (tmp_path / "outage" / "parked.jsonl").exists()
    # Every session got exactly its messages, in the order of the clean run; the other endpoints the same.
    for name in ("sensor-alerts", "twins-hub", "telemetry-hub"):
        clean, outage = (read(tmp_path / run_ / f"{name}.jsonl") for run_ in ("clean", "outage"))
        assert per_key(outage) == per_key(clean), name
    letters = [
        [(x["id"], x["code"]) for x in read(tmp_path / run_ / "deadletter.jsonl")] for run_ in ("clean", "outage")
    ]
    assert letters[0] == letters[1]  # the outage dead-lettered nothing


def test_an_endpoint_down_for_the_whole_run_leaves_its_messages_parked_in_order(tmp_path: Path) -> None:
    assert sample_run(tmp_path / "clean").exit_code == 0
    result = sample_run(tmp_path / "outage", "--fail", "sensor-alerts")
    assert result.exit_code == 0, result.output
    assert "Parked while an endpoint was down" in result.stdout
    assert not (tmp_path / "outage" / "sensor-alerts.jsonl").exists()
    still = read(tmp_path / "outage" / "parked.jsonl")
    clean = read(tmp_path / "clean" / "sensor-alerts.jsonl")
    by_key: dict[str, list[str]] = {}
    for record in still:
        by_key.setdefault(record["orderKey"], []).append(record["id"])
    assert by_key == per_key(clean) and all(r["parkedAt"] and r["endpoint"] == "sensor-alerts" for r in still)
    # A run without the outage replaces the parked file: it belongs to the run that wrote it.
    assert sample_run(tmp_path / "outage").exit_code == 0
    assert not (tmp_path / "outage" / "parked.jsonl").exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [("sensor-alerts:0", "counted from 1"), ("sensor-alerts:4-2", "comes before"), ("nobody", "no endpoint named")],
)
def test_a_bad_fail_option_is_refused_naming_what_to_fix(tmp_path: Path, spec: str, message: str) -> None:
    result = sample_run(tmp_path / "out", "--fail", spec)
    assert result.exit_code == 2 and message in result.output, result.output
