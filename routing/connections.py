"""Connections: resolving an endpoint's `connection` setting the way the Functions bindings do, and
the credential for a managed identity.

`<NAME>` holds a connection string (for Event Grid: the topic key); or `<NAME>__fullyQualifiedNamespace`
(Event Hubs, Service Bus) / `<NAME>__topicEndpointUri` (Event Grid) select a managed identity, with
`<NAME>__clientId` for a user-assigned one. Secrets are read here and go nowhere but the SDK client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from routing.errors import SettingsError


@dataclass(frozen=True, slots=True)
class Connection:
    """What an SDK client needs: a secret (connection string or key), or an address plus identity."""

    setting: str
    secret: str | None = None
    address: str | None = None
    client_id: str | None = None

    def __repr__(self) -> str:  # never print the secret
        kind = "secret" if self.secret else f"identity at {self.address}"
        return f"Connection({self.setting}: {kind})"

    def credential(self) -> Any:
        """The azure-identity credential for this identity connection (imported only when used), with
        the identity time budget (IDENTITY_OPTIONS)."""
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential  # noqa: PLC0415

        if self.client_id:
            return ManagedIdentityCredential(client_id=self.client_id, **IDENTITY_OPTIONS)
        return DefaultAzureCredential(**IDENTITY_OPTIONS)


# The time budget of getting a token from the managed identity endpoint: azure-identity's defaults are
# azure-core's 300 s read timeout and, for IMDS, five retries over 75 s, longer than any caller's own
# budget. A token request is local to the host (the Functions identity endpoint, or IMDS) and answers in
# milliseconds: 3 s to connect, 5 s to answer, one retry half a second later, so at most about 17 s.
# Tokens are cached by the credential for their lifetime (about a day), so this is paid once per process.
IDENTITY_OPTIONS: dict[str, Any] = {
    "connection_timeout": 3,
    "read_timeout": 5,
    "retry_total": 1,
    "retry_backoff_factor": 0.5,
}


def resolve(setting: str, address_property: str, env: Mapping[str, str] | None = None) -> Connection:
    """The connection named by `setting`; `address_property` is `fullyQualifiedNamespace` or `topicEndpointUri`."""
    env = os.environ if env is None else env
    secret = env.get(setting, "").strip()
    if secret:
        return Connection(setting=setting, secret=secret)
    address = env.get(f"{setting}__{address_property}", "").strip()
    if address:
        client_id = env.get(f"{setting}__clientId", "").strip() or None
        return Connection(setting=setting, address=address, client_id=client_id)
    raise SettingsError(
        f"app setting {setting} is not set: set it to a connection string, "
        f"or set {setting}__{address_property} to use a managed identity"
    )
