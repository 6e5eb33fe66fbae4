"""function_app "deployed" on this machine: its app settings pointing at a routes file, at the local
peers and at a fresh dead-letter container in Azurite, and the process's router rebuilt from them.
The end-to-end tests' fixtures share it; each adds its own routes, connections and peers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from routing import app as wiring
from routing.deliver.pool import SenderPool
from routing.parking import unpack
from tests.azurite import Azurite


def fresh_router() -> None:
    """Close the process's router's clients, and build the next one from the settings now."""
    router = wiring._router
    if router is not None and isinstance(router.senders, SenderPool):
        router.senders.close()
    wiring.reset()


@contextmanager
def deployed_app(
    routes: list[dict[str, Any]],
    connections: Mapping[str, str],
    *,
    azurite: Azurite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ContainerClient]:
    """The app settings for `routes` (a routes file) and `connections` (setting -> value); yields the
    dead-letter container, and closes the router's clients afterwards."""
    (tmp_path / "routes.json").write_text(json.dumps(routes))
    container = f"dl{uuid.uuid4().hex[:12]}"
    settings = {
        "ROUTES_FILE": str(tmp_path / "routes.json"),
        "DEADLETTER_STORAGE": azurite.connection_string,
        "DEADLETTER_CONTAINER": container,
        **connections,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ROUTER_OUTPUT_DIR", raising=False)
    monkeypatch.delenv("ROUTES_STORAGE", raising=False)
    wiring.reset()
    letters = ContainerClient.from_connection_string(azurite.connection_string, container)
    letters.create_container()
    try:
        yield letters
    finally:
        fresh_router()


# Folders of the dead-letter container that hold no dead letters: parked messages and endpoint health.
NOT_LETTERS = ("_parked/", "_health/")


def stored_letters(container: ContainerClient) -> dict[str, dict[str, Any]]:
    """The container's dead letters (name -> record), without parked messages and health records."""
    return {
        b.name: json.loads(container.download_blob(b.name).readall())
        for b in container.list_blobs()
        if not b.name.startswith(NOT_LETTERS)
    }


def stored_parked(container: ContainerClient) -> list[dict[str, Any]]:
    """Every parked message's record (a dead-letter record), blob by blob, each blob's in order."""
    return [
        record
        for b in container.list_blobs(name_starts_with="_parked/")
        for record in unpack(container.download_blob(b.name).readall())[1]
    ]
