"""App settings: every setting the function app reads, in one place, with what it is for.

`SETTINGS` is the list the sample settings file, the README and the Bicep are checked against.
Reading is lazy and validated: a missing or malformed setting raises `SettingsError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from routing.errors import SettingsError

# Setting names the Functions host resolves for the triggers (function_app.py uses them).
TELEMETRY_HUB_CONNECTION = "TELEMETRY_HUB_CONNECTION"
TWINS_HUB_CONNECTION = "TWINS_HUB_CONNECTION"

SETTINGS: dict[str, str] = {
    TELEMETRY_HUB_CONNECTION: "Event Hubs connection of the IoT Hub telemetry stream "
    "(a connection string, or TELEMETRY_HUB_CONNECTION__fullyQualifiedNamespace for a managed identity)",
    "TELEMETRY_HUB_NAME": "Event hub carrying IoT Hub telemetry (the IoT Hub's Event Hub-compatible name)",
    "TELEMETRY_HUB_CONSUMER_GROUP": "Consumer group the router reads the telemetry hub with",
    TWINS_HUB_CONNECTION: "Event Hubs connection of the Digital Twins event stream "
    "(a connection string, or TWINS_HUB_CONNECTION__fullyQualifiedNamespace)",
    "TWINS_HUB_NAME": "Event hub carrying Digital Twins events",
    "TWINS_HUB_CONSUMER_GROUP": "Consumer group the router reads the Digital Twins hub with",
    "ROUTES_FILE": "Routes file (JSON list of endpoints), relative to the app root",
    "ROUTER_OUTPUT_DIR": "Folder the file senders and file dead-letter store write to",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterSettings:
    routes_file: Path
    output_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, root: Path | None = None) -> RouterSettings:
        env = os.environ if env is None else env
        root = root or Path.cwd()

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise SettingsError(f"app setting {name} is not set: {SETTINGS[name]}")
            return value

        return cls(
            routes_file=root / required("ROUTES_FILE"),
            output_dir=root / required("ROUTER_OUTPUT_DIR"),
        )
