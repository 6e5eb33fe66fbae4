"""A local Event Grid topic endpoint that `EventGridPublisherClient` publishes to, for tests.

It accepts POSTs on one path (default `/api/events`) over plain http, checks the `aeg-sas-key` header
against the configured key as Event Grid does, and records every request: its status, content type,
size and the parsed events (a JSON array of EventGridEvents with `application/json`, of CloudEvents
with `application/cloudevents-batch+json`). Faults (429, 500, 413, ...) can be queued at runtime.
It runs `http.server` in a background thread on 127.0.0.1 and touches nothing else.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType, TracebackType
from typing import Self

__all__ = ["DEFAULT_KEY", "EventGridReceiver", "ReceivedRequest"]

DEFAULT_KEY = "EVENT_GRID_TEST_KEY"
_ERROR_CODES: Mapping[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}


@dataclass(frozen=True, kw_only=True)
class ReceivedRequest:
    """One POST as it arrived, whatever the answer was."""

    path: str
    status: int
    content_type: str
    size: int  # bytes of the request body
    events: tuple[Mapping[str, object], ...] = ()
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: float | None


class EventGridReceiver:
    """Event Grid's publish endpoint on 127.0.0.1, recording what arrives.

    `key` is the topic key expected in `aeg-sas-key` (401 otherwise). `max_request_size` answers 413
    for larger bodies, as Event Grid does above 1 MB; None accepts any size.
    """

    def __init__(
        self,
        *,
        key: str = DEFAULT_KEY,
        path: str = "/api/events",
        host: str = "127.0.0.1",
        max_request_size: int | None = None,
    ) -> None:
        self.key = key
        self.path = path
        self.host = host
        self.port = 0
        self.max_request_size = max_request_size
        self._lock = threading.Lock()
        self._requests: list[ReceivedRequest] = []
        self._faults: list[_Fault] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("the Event Grid receiver is already running")
        server = ThreadingHTTPServer((self.host, 0), _handler_for(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"eventgrid-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The URL to give `EventGridPublisherClient`."""
        return f"http://{self.host}:{self.port}{self.path}"

    # -- what arrived ------------------------------------------------------------------------------
    def requests(self) -> list[ReceivedRequest]:
        """Every request in arrival order, including the ones answered with an error."""
        with self._lock:
            return list(self._requests)

    def events(self) -> list[Mapping[str, object]]:
        """The events of accepted requests, in arrival order."""
        with self._lock:
            return [e for r in self._requests if r.accepted for e in r.events]

    def clear(self) -> None:
        """Forget recorded requests and switch every fault off."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()

    # -- faults --------------------------------------------------------------------------------------
    def fail_next(self, status: int, times: int = 1, *, retry_after: float | None = None) -> None:
        """Answer the next `times` authorised requests with `status` (e.g. 429, 500, 413)."""
        with self._lock:
            self._faults.append(_Fault(status, times, retry_after))

    def reset_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # -- called from the server threads ------------------------------------------------------------
    def _decide(self, path: str, key: str | None, size: int) -> tuple[int, float | None]:
        if path != self.path:
            return 404, None
        if key != self.key:
            return 401, None
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0:
                    fault.remaining -= 1
                    return fault.status, fault.retry_after
        if self.max_request_size is not None and size > self.max_request_size:
            return 413, None
        return 200, None

    def _record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)


def _parse_events(body: bytes) -> tuple[Mapping[str, object], ...]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return ()
    items = parsed if isinstance(parsed, list) else [parsed]
    return tuple(MappingProxyType(e) for e in items if isinstance(e, dict))


def _handler_for(receiver: EventGridReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            path = self.path.split("?", 1)[0]
            status, retry_after = receiver._decide(path, self.headers.get("aeg-sas-key"), len(body))
            receiver._record(
                ReceivedRequest(
                    path=path,
                    status=status,
                    content_type=self.headers.get("Content-Type", ""),
                    size=len(body),
                    events=_parse_events(body),
                    headers=MappingProxyType({k.lower(): v for k, v in self.headers.items()}),
                )
            )
            self._answer(status, retry_after)

        def _answer(self, status: int, retry_after: float | None) -> None:
            payload = b""
            if status >= 400:
                code = _ERROR_CODES.get(status, "Error")
                error = {"error": {"code": code, "message": f"{code} (Event Grid test receiver)"}}
                payload = json.dumps(error).encode()
            self.send_response(status)
            if payload:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            if retry_after is not None:
                self.send_header("Retry-After", f"{retry_after:g}")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    return Handler
