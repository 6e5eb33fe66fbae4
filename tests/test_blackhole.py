"""The network-fault helpers do what they say, so tests built on them can fail for the right reason."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.request import urlopen

import pytest

from tests.blackhole import Mode, black_hole, proxy


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None: ...


@pytest.fixture
def server_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_a_black_hole_accepts_and_never_answers() -> None:
    with black_hole() as port, socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)


def test_the_proxy_forwards_then_black_holes_refuses_and_resets(server_port: int) -> None:
    with proxy(server_port) as p:
        assert urlopen(f"http://127.0.0.1:{p.port}/", timeout=2).read() == b"hello"
        p.set(Mode.BLACK_HOLE)
        with pytest.raises(TimeoutError):
            urlopen(f"http://127.0.0.1:{p.port}/", timeout=0.5).read()
        p.set(Mode.REFUSE)
        with pytest.raises(OSError):
            urlopen(f"http://127.0.0.1:{p.port}/", timeout=2).read()
        p.set(Mode.FORWARD)
        assert urlopen(f"http://127.0.0.1:{p.port}/", timeout=2).read() == b"hello"
