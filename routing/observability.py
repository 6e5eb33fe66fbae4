"""Observability: the router's OpenTelemetry metrics and structured logs, and configuring where
they go (Application Insights when deployed, the console when asked, nowhere by default).

Instruments come from the global meter, so they work whichever provider is configured, and cost
next to nothing when none is. Log records carry dimensions (`extra`) and never secrets or bodies.

Each record and metric reaches Application Insights once. Deployed (infra/app/router.bicep), the app
runs with `PYTHON_ENABLE_OPENTELEMETRY=true` and without `PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY`:
the worker then tells the host it exports its own logs (capability `WorkerOpenTelemetryEnabled`, so
the host stops exporting the worker's `Function.*` logs) and carries the host's trace context into
each invocation, and this module calls `configure_azure_monitor` once for the `routing` logs and the
metrics. Other combinations are handled so that nothing is exported twice (see `configure`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping

from opentelemetry import metrics, trace

from routing.connections import IDENTITY_OPTIONS

meter = metrics.get_meter("routing")
# One span per routed batch (routing/pipeline.py), linked to the traces its messages came with.
tracer = trace.get_tracer("routing")

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
PARKED = meter.create_counter("router.parked", description="Messages parked behind an endpoint's outage, by endpoint")
REDELIVERED = meter.create_counter("router.redelivered", description="Parked messages delivered by the redelivery")
EXPIRED = meter.create_counter("router.expired", description="Parked messages dead-lettered at their time to live")
ENDPOINT_STATE = meter.create_gauge(
    "router.endpoint.state", description="Endpoint health: 0 healthy, 1 degraded, 2 unhealthy, 3 dead"
)
PARKED_KEYS = meter.create_gauge("router.parked.keys", description="Order keys parked, by endpoint (redelivery)")
PARKED_MESSAGES = meter.create_gauge("router.parked.messages", description="Messages parked, by endpoint (redelivery)")
LAG = meter.create_histogram("router.lag", unit="s", description="Now minus the ingress enqueued time")

UNCLASSIFIED = "Unclassified"


def _entra_credential(env: Mapping[str, str]) -> dict[str, object]:
    """The identity to sign telemetry with when Application Insights accepts Entra tokens only.

    The Functions host reads APPLICATIONINSIGHTS_AUTHENTICATION_STRING (`ClientId=...;Authorization=AAD`)
    itself; older Python exporters did not (the pinned one does), so the same setting is turned into a
    credential here rather than depending on the exporter's version.
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
    options = IDENTITY_OPTIONS  # the identity time budget, as for every other client
    credential = (
        ManagedIdentityCredential(client_id=client_id, **options) if client_id else ManagedIdentityCredential(**options)
    )
    return {"credential": credential}


# App settings the Python worker reads (azure-functions-python-worker, utils/constants.py).
WORKER_EXPORTS_LOGS = "PYTHON_ENABLE_OPENTELEMETRY"
WORKER_CONFIGURES_AZURE_MONITOR = "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"


def _true(env: Mapping[str, str], name: str) -> bool:
    # The worker's own test (is_envvar_true): "true" or "1", any case.
    return env.get(name, "").strip().lower() in {"true", "1"}


_configured = False
_lock = threading.Lock()
log = logging.getLogger(__name__)


def configure(env: Mapping[str, str] | None = None) -> str:
    """Send telemetry where the settings say, once per process; returns where it goes.

    With an Application Insights connection string:
    - in a Functions worker with `PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY` true: the worker has called
      `configure_azure_monitor` (for every logger); a second call would export everything twice, so the
      global providers it set are used as they are.
    - in a Functions worker without `PYTHON_ENABLE_OPENTELEMETRY`: the host exports the worker's logs, so
      only the metrics go from here.
    - otherwise (the deployed configuration, or outside Functions): the `routing` logs and the metrics.
    """
    global _configured
    env = os.environ if env is None else env
    with _lock:
        if _configured:
            return "already configured"
        _configured = True
        if env.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
            # The worker settings mean something only in a Functions worker (not `python -m routing`).
            in_functions = bool(env.get("FUNCTIONS_WORKER_RUNTIME"))
            if in_functions and _true(env, WORKER_CONFIGURES_AZURE_MONITOR):
                return "Application Insights (configured by the Functions worker)"
            from azure.monitor.opentelemetry import configure_azure_monitor  # noqa: PLC0415 - heavy, deployed only

            host_exports_logs = in_functions and not _true(env, WORKER_EXPORTS_LOGS)
            configure_azure_monitor(logger_name="routing", disable_logging=host_exports_logs, **_entra_credential(env))
            if host_exports_logs:
                return "Application Insights (metrics; the host exports the logs)"
            return "Application Insights"
        if env.get("ROUTER_METRICS_CONSOLE"):
            from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
            from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
                ConsoleMetricExporter,
                PeriodicExportingMetricReader,
            )

            # To stderr: stdout carries the runner's summary (JSON with -o json).
            reader = PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr), export_interval_millis=10_000)
            metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
            return "console"
        return "nowhere"


def shutdown() -> None:
    """Export what is pending and stop (the local runner's end: short runs never reach an interval)."""
    provider = metrics.get_meter_provider()
    stop = getattr(provider, "shutdown", None)
    if stop is not None:
        stop()
