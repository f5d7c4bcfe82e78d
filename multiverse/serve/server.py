"""Run the HTTP server: check the bundle, then uvicorn with graceful shutdown on SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import replace
from pathlib import Path

from ..errors import MultiverseError
from .settings import GRACE_MARGIN, ServeSettings

log = logging.getLogger("multiverse.serve")


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8080, threads: int | None = None,
          api_key: str | None = None, *, allow_isa_mismatch: bool = False, settings: ServeSettings | None = None,
          manifest_sha256: str | None = None, **overrides) -> None:
    """Serve a bundle over HTTP until SIGTERM or SIGINT.

    The bundle is checked before the port is bound (schema, sha256 of every file, CPU flags),
    so a broken bundle fails at once. The ONNX Runtime session is then created and warmed up
    in the background; ``/v2/health/ready`` answers 503 until it is done. On SIGTERM the server
    drains: readiness answers 503 at once, it stops accepting connections, lets queued and
    running requests finish for at most ``settings.graceful_timeout`` s, answers the rest 503
    with ``Retry-After``, and returns normally (exit code 0 from the CLI). See
    :func:`build_server` for the connection timeouts and cap.

    Args:
        bundle: the bundle folder ``multiverse optimize`` printed.
        host, port: where to listen (loopback by default).
        threads: inference threads, ONNX Runtime intra-op or OpenVINO ``INFERENCE_NUM_THREADS`` (default: physical
            cores within the CPU quota).
        api_key: require ``Authorization: Bearer <key>`` on every route but the health probes.
        allow_isa_mismatch: serve a bundle built for CPU flags this host lacks.
        manifest_sha256: refuse the bundle unless its ``multiverse.json`` has this sha256 (hex).
        settings: the other limits (:class:`ServeSettings`); explicit arguments and
            ``overrides`` (``max_batch=...``, ``batch_tokens=...`` ...) take precedence.

    Raises:
        BundleError: missing, corrupted, unknown-schema or not the pinned (``manifest_sha256``) bundle.
        IsaMismatchError: the host lacks the target's CPU flags (without ``allow_isa_mismatch``).
        MultiverseError: the port cannot be bound, or the model failed to load.
        UsageError: an invalid setting.
    """
    from ..bundle import load
    from .app import create_app

    settings = replace(settings or ServeSettings(), host=host, port=port, threads=threads, api_key=api_key,
                       allow_isa_mismatch=allow_isa_mismatch, **overrides)
    b = load(bundle, expect_manifest_sha256=manifest_sha256)  # schema, digests, sha256 of every file; BundleError
    b.session_config(allow_isa_mismatch=settings.allow_isa_mismatch)  # raises IsaMismatchError early
    run_app(create_app(b, settings), settings)


def run_app(app, settings: ServeSettings) -> None:
    """Run ``app`` (from :func:`multiverse.serve.app.create_app` with the same ``settings``) in the server
    of :func:`build_server` until SIGTERM or SIGINT, then drain and return normally.

    Raises MultiverseError when the port cannot be bound or the model failed to load.
    """
    server = build_server(app, settings)
    failures: list[BaseException] = []

    def fatal(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    app.state.multiverse.on_fatal = fatal
    _log_to_stderr(settings.log_level)
    in_main = threading.current_thread() is threading.main_thread()
    # uvicorn re-raises the signal it caught after its graceful shutdown; with this no-op handler
    # installed underneath, SIGTERM ends in a normal return (exit code 0) instead of death by signal.
    previous = signal.signal(signal.SIGTERM, _graceful) if in_main else None
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        _settle(app.state.multiverse)
        raise MultiverseError(f"Could not start the server on {settings.host}:{settings.port} (see the log above): "
                              "the port is in use or the address cannot be bound on this host. Choose another "
                              "--port or --host.") from exc
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if failures:
        exc = failures[0]
        if isinstance(exc, MultiverseError):
            raise exc
        raise MultiverseError(f"The model failed to load: {exc}. Check the bundle with `multiverse inspect`.") from exc


def _settle(state, timeout: float = 300.0) -> None:
    """After a failed start: wait for the background model load and stop the engine it may have started, so the
    process never exits while a thread is inside ONNX Runtime (which aborts it with SIGABRT, exit 134)."""
    loader = getattr(state, "loader", None)
    if loader is not None and loader.is_alive():
        loader.join(timeout)
    state.shutdown()


def build_server(app, settings: ServeSettings):
    """The ``uvicorn.Server`` that runs ``app`` (from :func:`multiverse.serve.app.create_app`) with ``settings``.

    On top of uvicorn's own settings (``timeout_keep_alive`` = ``keep_alive_timeout`` s), the HTTP
    protocol is uvicorn's (httptools, else h11) with :class:`ConnectionGuard` mixed in: a connection
    gets ``header_timeout`` s to send a complete request head, and connections beyond
    ``max_connections`` are answered 503 and closed. The body read deadline (``body_timeout``, 408)
    lives in the app's ASGI guard. On shutdown (SIGTERM, SIGINT or ``should_exit``) the app's drain
    starts before uvicorn waits for connections, and uvicorn's ``timeout_graceful_shutdown`` is
    ``graceful_timeout + GRACE_MARGIN`` s, so the drain answers every request before uvicorn would
    cancel it (a cancelled request reaches the client as a 500).
    """
    import uvicorn

    state = app.state.multiverse
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, lifespan="on", server_header=False, proxy_headers=False,
                            timeout_graceful_shutdown=int(settings.graceful_timeout + GRACE_MARGIN + 0.999),
                            timeout_keep_alive=settings.keep_alive_timeout, http=_protocol_class(settings))

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            state.begin_drain()
            await super().shutdown(sockets)

    return DrainingServer(config)


def _protocol_class(settings: ServeSettings) -> type:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - httptools is a dependency of the serve extra
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return type("GuardedHttpProtocol", (ConnectionGuard, base),
                {"header_timeout": float(settings.header_timeout), "max_connections": int(settings.max_connections),
                 "idle_timeout": float(settings.keep_alive_timeout)})


_BUSY_BODY = (b'{"error": "Too many open connections; retry in a moment.", "error_type": "Overloaded"}')
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
         b"connection: close\r\ncontent-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


class ConnectionGuard:
    """Mix-in for uvicorn's HTTP protocol classes: request-head deadline and connection cap.

    uvicorn never closes a connection that sends nothing or trickles its headers (its keep-alive
    timer starts only after a first response). Here a timer is armed when the connection opens
    (``header_timeout`` s) and after each response (``idle_timeout + header_timeout`` s; uvicorn's
    keep-alive timer closes a silent connection first); when it fires and no new request head has
    arrived since it was armed, and no request is running, the connection is closed. A connection
    beyond ``max_connections`` open ones gets a 503 JSON answer with ``Retry-After: 1`` and is closed.

    Relies on what uvicorn's httptools and h11 protocols share: ``connection_made``,
    ``connection_lost``, ``on_response_complete``, ``self.cycle`` (set when a request head is
    parsed), ``self.connections``, ``self.transport`` and ``self.loop``.
    """

    header_timeout: float = 10.0
    idle_timeout: float = 30.0
    max_connections: int = 512
    _head_timer = None
    _head_cycle = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_BUSY)
            transport.close()
            return
        self._arm(self.header_timeout)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm(self.idle_timeout + self.header_timeout)

    def connection_lost(self, exc) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_cycle = self.cycle
        self._head_timer = self.loop.call_later(seconds, self._head_deadline)

    def _head_deadline(self) -> None:
        self._head_timer = None
        cycle = self.cycle
        idle = cycle is None or cycle.response_complete
        if idle and cycle is self._head_cycle and not self.transport.is_closing():
            log.debug("closing a connection that sent no complete request head in time")
            self.transport.close()


def _log_to_stderr(level: str) -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level.upper())


def _graceful(signum, frame) -> None:  # pragma: no cover - only reached after uvicorn's shutdown
    log.info("stopped by signal %s", signum)
