"""Network faults for tests, on loopback only: a server that accepts connections and never answers (a
black hole), and a TCP proxy in front of a real local server that can be switched to black-hole, refuse
or reset mid-way. Used to show that every call to a dependency gives up within its time budget.

Everything binds 127.0.0.1 on a port the OS picks, runs on daemon threads, and stops on exit.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum

_CHUNK = 64 * 1024


@contextmanager
def black_hole() -> Iterator[int]:
    """A port that accepts every connection (TCP handshake done) and never sends a byte back."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(connection)  # kept open, never read from or written to

    thread = threading.Thread(target=accept, name="black-hole", daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        for connection in held:
            connection.close()
        server.close()


class Mode(Enum):
    FORWARD = "forward"  # a plain proxy
    BLACK_HOLE = "black-hole"  # new connections accepted, and nothing forwarded either way
    REFUSE = "refuse"  # new connections closed at once
    RESET = "reset"  # every connection, open or new, reset (RST)


@dataclass
class Proxy:
    """A TCP proxy to `target_port`; switch `mode` at any time (it applies to open connections too)."""

    target_port: int
    port: int = 0
    mode: Mode = Mode.FORWARD
    connections: int = 0  # connections forwarded
    accepted: int = 0  # connections accepted, whatever the mode: every try to reach the target
    _sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, mode: Mode) -> None:
        self.mode = mode
        if mode is Mode.RESET:
            with self._lock:
                for sock in self._sockets:
                    _reset(sock)
                self._sockets.clear()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                while self.mode is Mode.BLACK_HOLE:  # hold what arrives: the far side sees silence
                    threading.Event().wait(0.05)
                if self.mode is not Mode.FORWARD:
                    break
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _serve(self, client: socket.socket) -> None:
        if self.mode is Mode.REFUSE:
            _reset(client)
            return
        if self.mode is Mode.RESET:
            _reset(client)
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets += [client, upstream]
            self.connections += 1
        threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        # SO_LINGER 0: close sends RST instead of FIN. A pipe thread blocked in recv on this socket would
        # keep it open past close() (the blocked call holds the file), so no RST would go until data came:
        # shutting the read side first wakes it (sending nothing), and the close then resets at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
        sock.close()


@contextmanager
def proxy(target_port: int) -> Iterator[Proxy]:
    """A proxy on a free loopback port in front of `target_port`, stopped (every socket closed) on exit."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    state = Proxy(target_port=target_port, port=server.getsockname()[1])
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with state._lock:
                state.accepted += 1
            threading.Thread(target=state._serve, args=(client,), daemon=True).start()

    thread = threading.Thread(target=accept, name="proxy", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join(timeout=2)
        with state._lock:
            for sock in state._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        server.close()
