"""App settings: every setting the function app reads, in one place, with what it is for.

`SETTINGS` is the list the sample settings file, the README and the Bicep are checked against.
Connections follow the Functions convention: `<NAME>` holds a connection string, or
`<NAME>__fullyQualifiedNamespace` / `__tableServiceUri` / `__blobServiceUri` / `__topicEndpointUri`
(with `__credential=managedidentity` and `__clientId`) select a managed identity.
Reading is validated: a missing or malformed setting raises `SettingsError` naming it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from routing.errors import SettingsError

# Setting names the Functions host resolves for the triggers (function_app.py uses them).
TELEMETRY_HUB_CONNECTION = "TELEMETRY_HUB_CONNECTION"
TWINS_HUB_CONNECTION = "TWINS_HUB_CONNECTION"
ROUTES_STORAGE = "ROUTES_STORAGE"
DEADLETTER_STORAGE = "DEADLETTER_STORAGE"
DEFAULT_DEADLETTER_CONTAINER = "deadletters"
# Blob Storage's rule for container names.
_CONTAINER_NAME = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
DEFAULT_ROUTES_TABLE = "routes"
DEFAULT_ROUTES_REFRESH_SECONDS = 30.0
# Table Storage's rule for table names.
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")


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
    Setting(
        "ROUTES_FILE",
        "Routes file (JSON list of endpoints), relative to the app root; used when ROUTES_STORAGE is not set",
        deployed=False,
    ),
    Setting(
        ROUTES_STORAGE,
        "Table Storage holding the routes table: a connection string, or ROUTES_STORAGE__tableServiceUri "
        "(+ __clientId) for a managed identity; when set, routes come from the table, not ROUTES_FILE",
        connection=True,
    ),
    Setting("ROUTES_TABLE", f"Name of the routes table (default {DEFAULT_ROUTES_TABLE})"),
    Setting(
        "ROUTES_REFRESH_SECONDS",
        f"How often the router re-reads the routes table, in seconds (default {DEFAULT_ROUTES_REFRESH_SECONDS:g})",
    ),
    Setting(
        DEADLETTER_STORAGE,
        "Blob Storage for dead letters: a connection string, or DEADLETTER_STORAGE__blobServiceUri "
        "(+ __clientId) for a managed identity; required unless ROUTER_OUTPUT_DIR is set",
        connection=True,
    ),
    Setting("DEADLETTER_CONTAINER", f"Container dead letters are kept in (default {DEFAULT_DEADLETTER_CONTAINER})"),
    Setting(
        "ROUTER_OUTPUT_DIR",
        "Local runs: deliver through file senders and keep dead letters in this folder instead of Azure",
        deployed=False,
    ),
    Setting(
        "ROUTER_METRICS_CONSOLE",
        "Local runs: print the router's OpenTelemetry metrics to the console every 10 s when set",
        deployed=False,
    ),
]
SETTINGS: dict[str, str] = {s.name: s.description for s in SETTINGS_LIST}


# What a key or token looks like, so that one pasted where a setting NAME belongs is refused. Setting
# names are words (`EGRESS_HUB`, `EventHubConnection`, `SB_CONN__fullyQualifiedNamespace`). Keys are
# random: Azure's SAS and account keys are base64 of 32 or 64 bytes (43-44 or 86-88 characters; with
# `+`, `/` or `=` in them they are refused as not a name anyway), some keys are hex, and tokens are JWTs
# (`header.payload.signature` in base64url, the header JSON so beginning `eyJ`, which is `{"` encoded).
_SECRET_HEX = re.compile(r"[0-9A-Fa-f]{32,}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BASE64_KEY_LENGTHS = frozenset({43, 44, 86, 87, 88})
# Words as names are written: `Event`, `HUB`, `Plant7`, `42`. Random text splits into words of about 2
# characters on average (base64: 1.9), names into 4 or more; a long value of short words, with many
# different characters, is random. Measured on random letters and digits of 24-64 characters, 1-3 %
# pass unnoticed (those of a key's length are caught above); no name in tests/test_setting_names.py is refused.
_WORD = re.compile(r"[A-Z]?[a-z]+[0-9]*|[A-Z]+(?![a-z])[0-9]*|[0-9]+")
_RANDOM_MIN_CHARACTERS = 24
_RANDOM_MAX_WORD_LENGTH = 3.5
_RANDOM_MIN_BITS_PER_CHARACTER = 3.5


def _bits_per_character(text: str) -> float:
    """Shannon entropy of the characters of `text`."""
    counts = [text.count(c) for c in set(text)]
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts)


def looks_like_secret(value: str) -> bool:
    """Whether `value` looks like a key or a token rather than the name of an app setting."""
    if _JWT.fullmatch(value) or _SECRET_HEX.search(value):
        return True
    mixed = any(c.isdigit() for c in value) and any(c.isupper() for c in value) and any(c.islower() for c in value)
    if mixed and value.isalnum() and len(value) in _BASE64_KEY_LENGTHS:
        return True
    words = _WORD.findall(value)
    characters = "".join(words)
    return (
        len(characters) >= _RANDOM_MIN_CHARACTERS
        and len(characters) / len(words) < _RANDOM_MAX_WORD_LENGTH
        and _bits_per_character(characters) >= _RANDOM_MIN_BITS_PER_CHARACTER
    )


def table_name_problem(name: str) -> str | None:
    if _TABLE_NAME.match(name):
        return None
    return f"'{name}' is not a valid table name: 3 to 63 letters and digits, starting with a letter"


def connection_is_set(name: str, env: Mapping[str, str]) -> bool:
    """Whether connection `name` is configured, as a connection string or as `<name>__<property>` settings."""
    prefix = f"{name}__"
    return bool(env.get(name, "").strip()) or any(k.startswith(prefix) and v.strip() for k, v in env.items())


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterSettings:
    # None when the routes come from Table Storage (`routes_storage`).
    routes_file: Path | None
    # Set for local runs: file senders and file dead letters; None: Azure senders and Blob dead letters.
    output_dir: Path | None
    deadletter_container: str = DEFAULT_DEADLETTER_CONTAINER
    routes_storage: bool = False
    routes_table: str = DEFAULT_ROUTES_TABLE
    routes_refresh_seconds: float = DEFAULT_ROUTES_REFRESH_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, root: Path | None = None) -> RouterSettings:
        env = os.environ if env is None else env
        root = root or Path.cwd()

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise SettingsError(f"app setting {name} is not set: {SETTINGS[name]}")
            return value

        storage = connection_is_set(ROUTES_STORAGE, env)
        table = env.get("ROUTES_TABLE", "").strip() or DEFAULT_ROUTES_TABLE
        if problem := table_name_problem(table):
            raise SettingsError(f"app setting ROUTES_TABLE: {problem}")
        refresh_text = env.get("ROUTES_REFRESH_SECONDS", "").strip()
        try:
            refresh = float(refresh_text) if refresh_text else DEFAULT_ROUTES_REFRESH_SECONDS
        except ValueError:
            refresh = math.nan
        if not (math.isfinite(refresh) and refresh > 0):
            raise SettingsError(
                f"app setting ROUTES_REFRESH_SECONDS must be a positive number of seconds, got {refresh_text!r}"
            )
        output = env.get("ROUTER_OUTPUT_DIR", "").strip()
        if not output and not connection_is_set(DEADLETTER_STORAGE, env):
            raise SettingsError(
                f"app setting {DEADLETTER_STORAGE} is not set: dead letters need Blob Storage "
                f"({DEADLETTER_STORAGE} or {DEADLETTER_STORAGE}__blobServiceUri), "
                "or ROUTER_OUTPUT_DIR for a local run that keeps everything in files"
            )
        container = env.get("DEADLETTER_CONTAINER", "").strip() or DEFAULT_DEADLETTER_CONTAINER
        if not _CONTAINER_NAME.match(container):
            raise SettingsError(
                f"app setting DEADLETTER_CONTAINER: '{container}' is not a valid container name: 3 to 63 "
                "lower-case letters, digits and single hyphens, starting and ending with a letter or digit"
            )
        return cls(
            routes_file=None if storage else root / required("ROUTES_FILE"),
            output_dir=root / output if output else None,
            deadletter_container=container,
            routes_storage=storage,
            routes_table=table,
            routes_refresh_seconds=refresh,
        )
