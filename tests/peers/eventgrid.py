"""A local Event Grid topic endpoint that `EventGridPublisherClient` publishes to, for tests.

It accepts POSTs on one path (default `/api/events`) over plain http, or https (`tls=True`: a
certificate for 127.0.0.1 from a CA made for the receiver, whose PEM `ca_file` names), checks the
`aeg-sas-key` header against the configured key as Event Grid does, or, when a `token` is configured,
an `Authorization: Bearer <token>` header carrying exactly that token (what a Microsoft Entra
credential sends; the SDK sends a Bearer token over https only), and records every request: its
status, query, headers, content type, size and the parsed events (a JSON array of EventGridEvents
with `application/json`, of CloudEvents with `application/cloudevents-batch+json`). Faults (429, 500,
413, ...) can be queued at runtime, and `black_hole()` reads requests and never answers them.
It runs `http.server` in a background thread on 127.0.0.1 and touches nothing else (the https
certificate's files live in a temporary folder removed on `stop()`).

It refuses what the service refuses, so a sender that passes here passes there (Microsoft's "Post to
custom topic", "Event Grid event schema" and "CloudEvents v1.0 schema" pages; the CloudEvents 1.0 spec):

- 413 for a request, or one event in it, over 1 MB ("Array or event exceeds size limits");
- 400 for an Event Grid schema event without `id`, `subject`, `eventType` or `eventTime` (`data`,
  `dataVersion`, `metadataVersion` and `topic` are optional: the service stamps the last two),
  `metadataVersion` other than "1", `topic` other than this topic's ARM id ("if included, must match
  the Event Grid topic Azure Resource Manager ID exactly"), a time that is not RFC 3339 with an offset;
- 400 for a CloudEvent whose `specversion` is not "1.0", without `id`, `source` or `type`, with a
  `time` that is not RFC 3339, or with an extension attribute outside the CloudEvents type system
  (string, boolean, 32-bit integer; no float, no object, no array) or named other than lower-case
  a-z and 0-9 (a MUST; the spec's 20-character length is a SHOULD, so it is not refused here).

Errors come back in the service's shape, `{"error": {"code", "message", "details": [{"code",
"message"}]}}`; the wording of each message is this receiver's, not the service's.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import ssl
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Self

__all__ = ["DEFAULT_KEY", "DEFAULT_TOPIC", "EventGridReceiver", "ReceivedRequest", "is_rfc3339", "problem_with"]

DEFAULT_KEY = "EVENT_GRID_TEST_KEY"
DEFAULT_TOPIC = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/routing-tests"
    "/providers/Microsoft.EventGrid/topics/test-topic"
)
# Event Grid's limits: 1 MB per request and per event (the docs' "1 MB" is 1,048,576 bytes).
MAX_BYTES = 1024 * 1024
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.\d+)?(?:[Zz]|[+-]\d\d:\d\d)")
_EXTENSION_NAME = re.compile(r"[a-z0-9]+")
_EVENT_GRID_REQUIRED = ("id", "subject", "eventType", "eventTime")
_CLOUD_EVENT_REQUIRED = ("id", "source", "type")
_CLOUD_EVENT_STRINGS = frozenset({"subject", "datacontenttype", "dataschema"})
_CLOUD_EVENT_CONTEXT = frozenset({"specversion", "id", "source", "type", "time", "data", "data_base64"})
_INT32 = range(-(2**31), 2**31)
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
    query: str = ""  # what follows the path's `?`
    size: int  # bytes of the request body
    events: tuple[Mapping[str, object], ...] = ()
    error: str | None = None  # why it was refused (400 and 413)
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

    `key` is the topic key expected in `aeg-sas-key`, `token` (when set) the one Bearer token also
    accepted (401 for anything else); `topic` the topic's ARM id, the only `topic` an Event Grid schema
    event may carry. `max_request_size` and `max_event_size` answer
    413 above them, as Event Grid does above 1 MB; None accepts any size.
    """

    def __init__(
        self,
        *,
        key: str = DEFAULT_KEY,
        path: str = "/api/events",
        host: str = "127.0.0.1",
        topic: str = DEFAULT_TOPIC,
        max_request_size: int | None = MAX_BYTES,
        max_event_size: int | None = MAX_BYTES,
        token: str | None = None,
        tls: bool = False,
    ) -> None:
        self.key = key
        self.token = token
        self.tls = tls
        self._certificates: tempfile.TemporaryDirectory[str] | None = None
        self.topic = topic
        self.max_event_size = max_event_size
        self.path = path
        self.host = host
        self.port = 0
        self.max_request_size = max_request_size
        self._lock = threading.Lock()
        self._requests: list[ReceivedRequest] = []
        self._faults: list[_Fault] = []
        # Every n-th authorised request answered with a status (`fail_every`), counted from when it was set.
        self._every: tuple[int, int] | None = None
        self._counted = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Black-hole mode: requests are read and never answered until `released` is set.
        self._black_hole = False
        self._released = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("the Event Grid receiver is already running")
        server = ThreadingHTTPServer((self.host, 0), _handler_for(self))
        server.daemon_threads = True
        if self.tls:
            server.socket = self._tls_context().wrap_socket(server.socket, server_side=True)
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
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
        if self._certificates is not None:
            self._certificates.cleanup()
            self._certificates = None

    @property
    def ca_file(self) -> str:
        """The PEM of the CA that issued the https certificate (for `REQUESTS_CA_BUNDLE` or `connection_verify`)."""
        if self._certificates is None:
            raise RuntimeError("the Event Grid receiver serves https only when started with tls=True")
        return str(Path(self._certificates.name) / "ca.pem")

    def _tls_context(self) -> ssl.SSLContext:
        self._certificates = tempfile.TemporaryDirectory(prefix="eventgrid-receiver-")
        folder = Path(self._certificates.name)
        _write_certificates(folder, self.host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(folder / "server.pem", folder / "server.key")
        return context

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The URL to give `EventGridPublisherClient`."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}{self.path}"

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
            self._every = None
            self._release()

    # -- faults --------------------------------------------------------------------------------------
    def fail_next(self, status: int, times: int = 1, *, retry_after: float | None = None) -> None:
        """Answer the next `times` authorised requests with `status` (e.g. 429, 500, 413)."""
        with self._lock:
            self._faults.append(_Fault(status, times, retry_after))

    def fail_every(self, every: int, status: int = 500) -> None:
        """From now until `reset_faults()` or `clear()`: answer every `every`-th authorised request (the
        `every`-th, the 2 x `every`-th, ...) with `status`, as a service failing a steady share of requests."""
        with self._lock:
            self._every = (every, status)
            self._counted = 0

    def reset_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._every = None
            self._release()

    def black_hole(self) -> None:
        """From now until `reset_faults()` or `clear()`: read each request and never answer it (the connection
        stays open, silent). Held requests are recorded with status 0 and then closed unanswered."""
        with self._lock:
            self._black_hole = True
            self._released = threading.Event()

    def _release(self) -> None:
        self._black_hole = False
        self._released.set()

    def _held(self) -> threading.Event | None:
        with self._lock:
            return self._released if self._black_hole else None

    # -- called from the server threads ------------------------------------------------------------
    def _authorised(self, key: str | None, authorization: str | None) -> bool:
        if key is not None:
            return key == self.key
        return self.token is not None and authorization == f"Bearer {self.token}"

    def _decide(
        self, path: str, key: str | None, authorization: str | None, body: bytes, content_type: str
    ) -> tuple[int, float | None, str | None]:
        if path != self.path:
            return 404, None, None
        if not self._authorised(key, authorization):
            return 401, None, None
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0:
                    fault.remaining -= 1
                    return fault.status, fault.retry_after, None
            if self._every is not None:
                self._counted += 1
                if self._counted % self._every[0] == 0:
                    return self._every[1], None, None
        if self.max_request_size is not None and len(body) > self.max_request_size:
            return 413, None, f"The request of {len(body)} bytes exceeds the maximum of {self.max_request_size}."
        status, error = problem_with(body, content_type, topic=self.topic, max_event_size=self.max_event_size)
        return status, None, error

    def _record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)


def is_rfc3339(value: object) -> bool:
    """An RFC 3339 date-time with its offset (what Event Grid's `eventTime` and CloudEvents' `time` are)."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value.upper())  # ranges: no month 13, no hour 24
    except ValueError:
        return False
    return True


def problem_with(
    body: bytes, content_type: str, *, topic: str = DEFAULT_TOPIC, max_event_size: int | None = MAX_BYTES
) -> tuple[int, str | None]:
    """The status Event Grid answers a request with (200, 400 or 413) and, when refused, why."""
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        return 400, f"The request body is not valid JSON: {exc}."
    media = content_type.split(";", 1)[0].strip().lower()
    cloud_events = media in {"application/cloudevents-batch+json", "application/cloudevents+json"}
    if media == "application/cloudevents+json" and isinstance(parsed, dict):
        parsed = [parsed]  # structured mode: one event
    elif media not in {"application/json", "application/cloudevents-batch+json"}:
        return 400, f"Content type '{content_type}' is not supported."
    if not isinstance(parsed, list):
        return 400, f"The request body must be a JSON array of events, not a JSON {type(parsed).__name__}."
    for index, event in enumerate(parsed):
        if max_event_size is not None and (size := len(json.dumps(event).encode())) > max_event_size:
            return 413, f"Event {index} is {size} bytes, over the maximum of {max_event_size}."
        if not isinstance(event, dict):
            return 400, f"Event {index} is not a JSON object."
        error = _cloud_event_problem(event) if cloud_events else _event_grid_problem(event, topic)
        if error is not None:
            return 400, f"Event {index}: {error}"
    return 200, None


def _event_grid_problem(event: Mapping[str, object], topic: str) -> str | None:
    for name in _EVENT_GRID_REQUIRED:
        if not isinstance(event.get(name), str) or not event[name]:
            return f"Required property '{name}' was not set (or is not a string)."
    if not is_rfc3339(event["eventTime"]):
        return f"Property 'eventTime' ({event['eventTime']!r}) is not an RFC 3339 date-time with an offset."
    version = event.get("metadataVersion")
    if version is not None and version != "1":
        return f"Property 'metadataVersion' was set to {version!r}, but must be absent or '1'."
    if event.get("topic") is not None and event["topic"] != topic:
        return f"Property 'topic' was set to {event['topic']!r}, but must be absent or this topic's id '{topic}'."
    if event.get("dataVersion") is not None and not isinstance(event["dataVersion"], str):
        return "Property 'dataVersion' must be a string."
    return None


def _cloud_event_problem(event: Mapping[str, object]) -> str | None:
    if event.get("specversion") != "1.0":
        return f"Attribute 'specversion' is {event.get('specversion')!r}; only '1.0' is supported."
    for name in _CLOUD_EVENT_REQUIRED:
        if not isinstance(event.get(name), str) or not event[name]:
            return f"Required attribute '{name}' was not set (or is not a string)."
    if event.get("time") is not None and not is_rfc3339(event["time"]):
        return f"Attribute 'time' ({event['time']!r}) is not an RFC 3339 timestamp."
    if "data" in event and "data_base64" in event:
        return "An event may carry 'data' or 'data_base64', not both."
    for name, value in event.items():
        if name in _CLOUD_EVENT_CONTEXT or value is None:  # null: the attribute is absent
            continue
        if name in _CLOUD_EVENT_STRINGS:
            if not isinstance(value, str):
                return f"Attribute '{name}' must be a string."
            continue
        if not _EXTENSION_NAME.fullmatch(name):
            return f"Extension attribute name '{name}' must consist of lower-case letters a-z and digits 0-9."
        if isinstance(value, bool | str) or (isinstance(value, int) and value in _INT32):
            continue
        what = "an integer outside the 32-bit range" if isinstance(value, int) else f"a {type(value).__name__}"
        return f"Extension attribute '{name}' is {what}: only strings, booleans and 32-bit integers are allowed."
    return None


def _parse_events(body: bytes) -> tuple[Mapping[str, object], ...]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return ()
    items = parsed if isinstance(parsed, list) else [parsed]
    return tuple(MappingProxyType(e) for e in items if isinstance(e, dict))


def _write_certificates(folder: Path, host: str) -> None:
    """A CA (`ca.pem`) and a certificate it issued for `host` (`server.pem`, `server.key`), valid a day."""
    from cryptography import x509  # noqa: PLC0415 - only for https
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)

    def issue(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None
    ) -> x509.Certificate:
        issuer_name, signer = issuer or (subject, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if issuer is None:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False
            )
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("Event Grid receiver test CA", ca_key, None)
    server = issue(host, server_key, ("Event Grid receiver test CA", ca_key))
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _handler_for(receiver: EventGridReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            path, _, query = self.path.partition("?")
            content_type = self.headers.get("Content-Type", "")
            held = receiver._held()
            if held is not None:
                receiver._record(ReceivedRequest(path=path, status=0, content_type=content_type, size=len(body)))
                held.wait()  # no answer until the black hole ends; then the connection closes unanswered
                self.close_connection = True
                return
            status, retry_after, error = receiver._decide(
                path, self.headers.get("aeg-sas-key"), self.headers.get("Authorization"), body, content_type
            )
            receiver._record(
                ReceivedRequest(
                    path=path,
                    status=status,
                    content_type=content_type,
                    query=query,
                    size=len(body),
                    events=_parse_events(body),
                    error=error,
                    headers=MappingProxyType({k.lower(): v for k, v in self.headers.items()}),
                )
            )
            self._answer(status, retry_after, error)

        def _answer(self, status: int, retry_after: float | None, message: str | None) -> None:
            payload = b""
            if status >= 400:
                code = _ERROR_CODES.get(status, "Error")
                message = message or f"{code} (Event Grid test receiver)"
                detail = {"400": "InputJsonInvalid", "413": "PayloadTooLarge"}.get(str(status), code)
                error = {"error": {"code": code, "message": message, "details": [{"code": detail, "message": message}]}}
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
