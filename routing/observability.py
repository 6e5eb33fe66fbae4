"""Observability: the router's OpenTelemetry metrics and structured logs, and configuring where
they go (Application Insights when deployed, the console when asked, nowhere by default).

Instruments come from the global meter, so they work whichever provider is configured, and cost
next to nothing when none is. Log records carry dimensions (`extra`) and never secrets or bodies.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

from opentelemetry import metrics

meter = metrics.get_meter("routing")

EVENTS_IN = meter.create_counter("router.events.in", description="Ingress events by hub and classified type")
DELIVERED = meter.create_counter("router.messages.delivered", description="Messages delivered, by endpoint and type")
RETRIES = meter.create_counter("router.delivery.retries", description="Batches retried after a transient fault")
FAILOVERS = meter.create_counter("router.delivery.failovers", description="Switches to an endpoint's other connection")
DEAD_LETTERS = meter.create_counter("router.deadletters", description="Dead letters, by reason")
UNROUTED = meter.create_counter("router.unrouted", description="Events no endpoint wants, by type")
ROUTE_REFRESHES = meter.create_counter("router.routes.refreshes", description="Route table loads, by outcome")
INVALID_ROWS = meter.create_counter("router.routes.invalid_rows", description="Route rows skipped as invalid")
LATENCY = meter.create_histogram(
    "router.delivery.latency", unit="ms", description="Time to deliver a batch to an endpoint"
)
LAG = meter.create_histogram("router.lag", unit="s", description="Now minus the ingress enqueued time")

UNCLASSIFIED = "Unclassified"


def _entra_credential(env: Mapping[str, str]) -> dict[str, object]:
    """The identity to sign telemetry with when Application Insights accepts Entra tokens only.

    The Functions host reads APPLICATIONINSIGHTS_AUTHENTICATION_STRING (`ClientId=...;Authorization=AAD`)
    itself; the Python exporter does not, so the same setting is turned into a credential here.
    """
    parts = dict(
        part.split("=", 1)
        for part in env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "").split(";")
        if "=" in part
    )
    if parts.get("Authorization", "").upper() != "AAD":
        return {}
    from azure.identity import ManagedIdentityCredential  # noqa: PLC0415

    client_id = parts.get("ClientId")
    return {"credential": ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()}


_configured = False
_lock = threading.Lock()
log = logging.getLogger(__name__)


def configure(env: Mapping[str, str] | None = None) -> str:
    """Send telemetry where the settings say, once per process; returns where it goes."""
    global _configured
    env = os.environ if env is None else env
    with _lock:
        if _configured:
            return "already configured"
        _configured = True
        if env.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
            from azure.monitor.opentelemetry import configure_azure_monitor  # noqa: PLC0415 - heavy, deployed only

            # The Functions host forwards its own logs; ours go through OpenTelemetry with their dimensions.
            configure_azure_monitor(logger_name="routing", **_entra_credential(env))
            return "Application Insights"
        if env.get("ROUTER_METRICS_CONSOLE"):
            from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
            from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
                ConsoleMetricExporter,
                PeriodicExportingMetricReader,
            )

            reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=10_000)
            metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
            return "console"
        return "nowhere"
