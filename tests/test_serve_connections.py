"""Hostile connections against the server ``multiverse serve`` runs (``build_server``), with raw sockets on
loopback: silent, trickling, stalled-body and surplus connections are answered or closed within their
timeouts. Every loop is bounded in count and in time; each test takes 2-4 s."""

from __future__ import annotations

import select
import socket
import time

import pytest
from serve_fixtures import ThreadServer
from test_serve_unit import FakePredictor

from multiverse.serve.app import create_app
from multiverse.serve.settings import ServeSettings

SLACK = 1.5  # seconds allowed past a timeout (event-loop ticks on a loaded 2-core machine)


def _server(**kw) -> ThreadServer:
    settings = ServeSettings(warmup=False, **kw)
    return ThreadServer(create_app(FakePredictor(), settings), settings)


def _connect(srv: ThreadServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=5)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Wait up to ``seconds`` for the peer to close; returns (closed, bytes received before the close)."""
    got = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def test_a_connection_that_sends_nothing_is_closed_within_the_header_timeout():
    with _server(header_timeout=1.0) as srv:
        srv.wait_ready()
        with _connect(srv) as sock:
            t0 = time.monotonic()
            closed, got = _closed_within(sock, 1.0 + SLACK + 3)
            elapsed = time.monotonic() - t0
        assert closed and got == b"" and 0.8 <= elapsed <= 1.0 + SLACK, (closed, got, elapsed)


def test_a_connection_that_trickles_header_lines_is_closed():
    with _server(header_timeout=1.0) as srv:
        srv.wait_ready()
        with _connect(srv) as sock:
            t0 = time.monotonic()
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            closed = False
            for i in range(40):  # one header line every 0.1 s: at most 4 s
                try:
                    sock.sendall(f"X-Slow-{i}: y\r\n".encode())
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                closed, _ = _closed_within(sock, 0.1)
                if closed:
                    break
            elapsed = time.monotonic() - t0
        assert closed and elapsed <= 1.0 + SLACK, (closed, elapsed)


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout():
    with _server(header_timeout=1.0, keep_alive_timeout=1.0) as srv:
        srv.wait_ready()
        with _connect(srv) as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            _, got = _closed_within(sock, 0.5)
            assert got.startswith(b"HTTP/1.1 200")
            t0 = time.monotonic()
            closed, _ = _closed_within(sock, 1.0 + SLACK + 3)
            elapsed = time.monotonic() - t0
        assert closed and elapsed <= 1.0 + SLACK, elapsed


@pytest.mark.parametrize("declared,status", [(5 << 20, b"408"), (9 << 20, b"413")])
def test_a_declared_body_that_never_comes_is_answered_within_the_body_timeout(declared, status):
    # 5 MB within the 6 MB limit: 408; 9 MB over it (but small enough to drain for a clean 413): 413.
    with _server(body_timeout=1.0, header_timeout=5.0, max_body_bytes=6 << 20) as srv:
        srv.wait_ready()
        with _connect(srv) as sock:
            t0 = time.monotonic()
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(declared).encode() + b"\r\n\r\n" + b'{"inputs": "' + b"a" * 1000)
            closed, got = _closed_within(sock, 1.0 + SLACK + 3)
            elapsed = time.monotonic() - t0
        assert got.startswith(b"HTTP/1.1 " + status), got[:200]
        assert b"connection: close" in got.lower() and closed and elapsed <= 1.0 + SLACK, (closed, elapsed)


def test_the_connection_cap_holds_and_frees_up():
    with _server(max_connections=4, header_timeout=20.0) as srv:
        srv.wait_ready()
        held = [_connect(srv) for _ in range(4)]
        try:
            time.sleep(0.2)  # let the server register them
            with _connect(srv) as extra:
                closed, got = _closed_within(extra, 3)
            assert closed and got.startswith(b"HTTP/1.1 503"), got[:200]
            assert b"retry-after: 1" in got.lower() and b'"error_type": "Overloaded"' in got
            held[0].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")  # the held ones still work
            _, got = _closed_within(held[0], 0.5)
            assert got.startswith(b"HTTP/1.1 200")
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.3)
        with srv.client() as c:
            assert c.get("/v2/health/live").status_code == 200
