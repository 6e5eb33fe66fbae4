"""Wiring for the function app: one router per process, built from app settings on first use.

Clients and stores are created once and reused across invocations. If the router cannot be built
(a setting missing, a routes file invalid), the invocation raises, so the retry policy holds the
checkpoint instead of routing a batch against no routes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from routing import observability
from routing.deadletters import BlobDeadLetters, FileDeadLetters
from routing.deliver.pool import SenderPool
from routing.deliver.senders import FileSender
from routing.health import BlobHealth, Breaker
from routing.ingest.ingress import EventHubEventLike, from_eventhub_events
from routing.parking import BlobParking, Parking
from routing.pipeline import BatchReport, Router, RouteSource
from routing.redeliver import RedeliveryReport, redeliver
from routing.routes.files import FileRoutes
from routing.routes.tables import TableRoutes
from routing.settings import DEADLETTER_STORAGE, RouterSettings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_router: Router | None = None


def build_router(settings: RouterSettings) -> Router:
    routes: RouteSource
    if settings.routes_storage:
        routes = TableRoutes.from_settings(settings.routes_table, settings.routes_refresh_seconds)
    else:
        assert settings.routes_file is not None  # from_env requires ROUTES_FILE without ROUTES_STORAGE
        routes = FileRoutes(settings.routes_file)
    if settings.output_dir is not None:
        # A local run: everything goes to files, nothing to Azure.
        files = FileSender(settings.output_dir)
        return Router(routes=routes, senders=lambda _endpoint: files, dead_letters=FileDeadLetters(settings.output_dir))
    dead_letters = BlobDeadLetters.from_settings(DEADLETTER_STORAGE, settings.deadletter_container)
    # Parked messages and endpoint health live beside the dead letters (same container, same budget).
    return Router(
        routes=routes,
        senders=SenderPool(),
        dead_letters=dead_letters,
        parking=Parking(BlobParking(dead_letters.container)),
        breaker=Breaker(BlobHealth(dead_letters.container)),
    )


def get_router() -> Router:
    global _router
    with _lock:
        if _router is None:
            observability.configure()
            _router = build_router(RouterSettings.from_env())
        return _router


def reset() -> None:
    """Forget the process's router (tests, and settings changed under a running worker)."""
    global _router
    with _lock:
        _router = None


def route_batch(events: Sequence[EventHubEventLike], *, source: str) -> BatchReport:
    report = get_router().route(from_eventhub_events(events, source=source))
    log.info(
        "routed batch",
        extra={
            "source": source,
            "messages": report.messages,
            "delivered": sum(report.delivered.values()),
            "deadLetters": sum(report.dead_letters.values()),
            "unrouted": sum(report.unrouted.values()),
        },
    )
    return report


def redeliver_parked() -> RedeliveryReport:
    """One redelivery run over what is parked (routing/redeliver.py), with the process's own router."""
    router = get_router()
    if router.parking is None or router.breaker is None:
        return RedeliveryReport()  # a local run parks nothing
    report = redeliver(
        store=router.parking.store,
        table=router.routes.current(),
        senders=router.senders,
        dead_letters=router.dead_letters,
        breaker=router.breaker,
        health=router.breaker.store,
    )
    if report.delivered or report.expired or report.dead_lettered or report.parked_messages:
        log.info(
            "redelivery",
            extra={
                "delivered": sum(report.delivered.values()),
                "expired": sum(report.expired.values()),
                "deadLetters": sum(report.dead_lettered.values()),
                "parked": sum(report.parked_messages.values()),
            },
        )
    return report
