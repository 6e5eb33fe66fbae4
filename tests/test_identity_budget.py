"""Getting a managed-identity token has a time budget: an identity endpoint that accepts the connection
and never answers costs a bounded wait (azure-identity's own default is a 300 s read, retried)."""

from __future__ import annotations

import threading
import time

import pytest

from routing import connections
from routing.connections import IDENTITY_OPTIONS, resolve
from tests.blackhole import black_hole


@pytest.mark.parametrize("client_id", ["11111111-2222-3333-4444-555555555555", None])
def test_a_black_holed_identity_endpoint_gives_up_within_the_identity_budget(
    monkeypatch: pytest.MonkeyPatch, client_id: str | None
) -> None:
    # Small numbers for the test; the shipped ones are pinned below. The App Service / Functions identity
    # endpoint is what the credentials ask when IDENTITY_ENDPOINT and IDENTITY_HEADER are set.
    monkeypatch.setattr(connections, "IDENTITY_OPTIONS", {**IDENTITY_OPTIONS, "read_timeout": 1, "retry_total": 0})
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "MSI_ENDPOINT", "MSI_SECRET"):
        monkeypatch.delenv(name, raising=False)
    env = {"BUS__fullyQualifiedNamespace": "bus.servicebus.windows.net"}
    if client_id:
        env["BUS__clientId"] = client_id
    with black_hole() as port:
        monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{port}/msi/token")
        monkeypatch.setenv("IDENTITY_HEADER", "header")
        credential = resolve("BUS", "fullyQualifiedNamespace", env).credential()
        outcome: list[BaseException | None] = []

        def get_token() -> None:
            try:
                credential.get_token("https://servicebus.azure.net/.default")
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        started = time.monotonic()
        thread = threading.Thread(target=get_token, daemon=True)
        thread.start()
        thread.join(timeout=30)  # far beyond the budget; azure-identity's default would still be waiting
        assert not thread.is_alive(), "the token request is still waiting on a black hole"
        assert outcome and outcome[0] is not None, "a black hole gave a token"
        assert time.monotonic() - started < 30


def test_the_identity_budget_is_seconds_not_minutes() -> None:
    worst = (IDENTITY_OPTIONS["connection_timeout"] + IDENTITY_OPTIONS["read_timeout"]) * (
        1 + IDENTITY_OPTIONS["retry_total"]
    ) + IDENTITY_OPTIONS["retry_backoff_factor"] * 2
    assert worst <= 20
