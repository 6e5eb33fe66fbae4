"""App settings: every setting the function app reads, in one place, with what it is for.

`SETTINGS` is the list the sample settings file, the README and the Bicep are checked against.
Connections follow the Functions convention: `<NAME>` holds a connection string, or
`<NAME>__fullyQualifiedNamespace` / `__tableServiceUri` / `__blobServiceUri` / `__topicEndpointUri`
(with `__credential=managedidentity` and `__clientId`) select a managed identity.
Reading is validated: a missing or malformed setting raises `SettingsError` naming it.
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


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    description: str
    # Whether a deployment to Azure sets it (infra/ must), or it is for local runs only.
    deployed: bool = True
    # A connection: set as `<name>` (connection string) or as `<name>__<property>` settings.
    connection: bool = False


SETTINGS_LIST = [
    Setting(
        TELEMETRY_HUB_CONNECTION,
        "Event Hubs connection of the IoT Hub telemetry stream",
        connection=True,
    ),
    Setting("TELEMETRY_HUB_NAME", "Event hub carrying IoT Hub telemetry (the IoT Hub's Event Hub-compatible name)"),
    Setting("TELEMETRY_HUB_CONSUMER_GROUP", "Consumer group the router reads the telemetry hub with"),
    Setting(TWINS_HUB_CONNECTION, "Event Hubs connection of the Digital Twins event stream", connection=True),
    Setting("TWINS_HUB_NAME", "Event hub carrying Digital Twins events"),
    Setting("TWINS_HUB_CONSUMER_GROUP", "Consumer group the router reads the Digital Twins hub with"),
    Setting("ROUTES_FILE", "Routes file (JSON list of endpoints), relative to the app root", deployed=False),
    Setting(
        "ROUTER_OUTPUT_DIR",
        "Local runs: deliver through file senders and keep dead letters in this folder",
        deployed=False,
    ),
]
SETTINGS: dict[str, str] = {s.name: s.description for s in SETTINGS_LIST}


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
