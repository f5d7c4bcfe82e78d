"""Run the HTTP server: check the bundle, then uvicorn with graceful shutdown on SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import replace
from pathlib import Path

from ..errors import MultiverseError
from .settings import ServeSettings

log = logging.getLogger("multiverse.serve")


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8080, threads: int | None = None,
          api_key: str | None = None, *, allow_isa_mismatch: bool = False, settings: ServeSettings | None = None,
          manifest_sha256: str | None = None, **overrides) -> None:
    """Serve a bundle over HTTP until SIGTERM or SIGINT.

    The bundle is checked before the port is bound (schema, sha256 of every file, CPU flags),
    so a broken bundle fails at once. The ONNX Runtime session is then created and warmed up
    in the background; ``/v2/health/ready`` answers 503 until it is done. On SIGTERM the server
    stops accepting connections, lets in-flight requests finish (at most
    ``settings.graceful_timeout`` s) and returns normally (exit code 0 from the CLI).

    Args:
        bundle: the bundle folder ``multiverse optimize`` printed.
        host, port: where to listen (loopback by default).
        threads: ONNX Runtime intra-op threads (default: physical cores within the CPU quota).
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
    import uvicorn

    from ..bundle import load
    from .app import create_app

    settings = replace(settings or ServeSettings(), host=host, port=port, threads=threads, api_key=api_key,
                       allow_isa_mismatch=allow_isa_mismatch, **overrides)
    b = load(bundle, expect_manifest_sha256=manifest_sha256)  # schema, digests, sha256 of every file; BundleError
    b.session_config(allow_isa_mismatch=settings.allow_isa_mismatch)  # raises IsaMismatchError early
    app = create_app(b, settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, lifespan="on", timeout_graceful_shutdown=settings.graceful_timeout,
                            server_header=False, proxy_headers=False, timeout_keep_alive=30)
    server = uvicorn.Server(config)
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
        raise MultiverseError(f"Could not start the server on {settings.host}:{settings.port} (see the log above); "
                              "is the port in use? Choose another --port.") from exc
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if failures:
        exc = failures[0]
        if isinstance(exc, MultiverseError):
            raise exc
        raise MultiverseError(f"The model failed to load: {exc}. Check the bundle with `multiverse inspect`.") from exc


def _log_to_stderr(level: str) -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level.upper())


def _graceful(signum, frame) -> None:  # pragma: no cover - only reached after uvicorn's shutdown
    log.info("stopped by signal %s", signum)
