"""The FastAPI application: Infinity-compatible ``/predict``, TEI and OpenAI routes, health, metrics.

Build it with :func:`create_app`; run it with :func:`multiverse.serve.server.serve` (uvicorn).
The model loads and warms up in a background thread after start-up, so the liveness probe
answers at once and readiness (and every model route) answers 503 until the model is ready.

Hot path: the body is read (size-limited) by a small ASGI guard, parsed and validated in one
step by pydantic-core, checked against the limits on the event loop, then tokenized, run and
post-processed by the engine's worker thread; the answer is serialised with pydantic-core.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import InputError, MultiverseError
from .engine import Engine, NotRunning, Overloaded, Result
from .metrics import Metrics
from .schemas import (
    TASK_ROUTES,
    TIMING_HEADERS,
    TIMING_UNIT,
    ApiError,
    EmbedRequest,
    ErrorBody,
    ModelList,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    PredictRequest,
    PredictResponse,
    RankItem,
    RerankRequest,
    RootEmbedRequest,
    SimilarityInputs,
    SimilarityParameters,
    SimilarityRequest,
    body_schema,
    is_blank,
    parse,
    request_schemas,
)
from .settings import GRACE_MARGIN, ServeSettings

log = logging.getLogger("multiverse.serve")

#: Routes that never need the API key (orchestrator probes).
PUBLIC_PATHS = frozenset({"/health", "/v2/health/live", "/v2/health/ready"})

_JSON = "application/json"
_TRUNCATION_KEYS = ("truncate", "truncation")
_TASK_PARAMS = {
    "text-classification": ("top_k",),
    "feature-extraction": ("normalize",),
    "ranking": ("raw_scores",),
    "token-classification": ("ignore_labels", "aggregation_strategy"),
}

DESCRIPTION = f"""
Multiverse serves one optimised ONNX bundle (one model, one task) on CPU. This document lists only the
routes this model's task can serve.

* `POST /predict` — the Infinity-container contract: `{{"inputs": str | [str] | [[text, text_pair]], "parameters": {{...}}}}`.
  A single string gets a single result, a list gets a list of results.
* `POST /` — dispatched by task as TEI does (what `huggingface_hub.InferenceClient(model=URL)` calls):
  embeddings or sentence similarity (feature-extraction), otherwise as `/predict`.
* TEI-compatible `POST /embed`, `POST /similarity`, `POST /rerank`, `GET /info`, `GET /health`;
  OpenAI-compatible `POST /v1/embeddings`, `GET /v1/models`; infinity-compatible `POST /embeddings`, `GET /models`.
* `GET /v2/health/live`, `GET /v2/health/ready` (503 until the model is loaded and warmed up, and from the start
  of a drain on SIGTERM), `GET /metrics` (Prometheus).

**Timing headers** (pipeline routes), all in {TIMING_UNIT}:
`x-compute-time` (tokenization + inference + post-processing of this request; no queueing),
`x-tokenization-time`, `x-queue-time`, `x-inference-time`, `x-postprocess-time`.
`x-compute-tokens` counts real tokens after truncation, `x-compute-characters` the characters sent.

**Empty input**: a text counts as empty when it has nothing but whitespace, control and format characters
(zero-width space U+200B, BOM U+FEFF ...): 400 `EmptyInput`, on every route.

**Errors** are JSON `{{"error": "...", "error_type": "..."}}`: 400 empty input or a body that is not JSON
(not UTF-8, malformed, nested too deeply), 401 missing or wrong API key, 404/405 unknown route or method,
408 `RequestTimeout` (the body did not arrive within `--body-timeout`), 413 `PayloadTooLarge` (body larger than
`--max-body`, or more real tokens in one request than `--max-batch-tokens`: split the batch), 422 invalid input
(wrong types or shape, unknown fields or parameters, more inputs than `--max-client-batch-size`, text too long, pairs
sent to a single-text model, a route that does not fit the model's task), 429 overloaded (bounded queue; retry
after a moment), 503 not ready, or `ShuttingDown` with `Retry-After` while draining on SIGTERM (retry on another
instance), 500 internal error (details only in the server log).
Texts longer than the model's token limit are truncated, not rejected.
"""


class _State:
    """Everything the routes share: settings, metrics, the predictor and its engine once loaded."""

    def __init__(self, source: Any, settings: ServeSettings):
        self.source = source
        self.settings = settings
        self.metrics = Metrics()
        self.predictor = None
        self.engine: Engine | None = None
        self.ready = False
        self.failed: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dim: int | None = None
        self.manifest: dict = {}
        self.task: str | None = None
        self.threads: int | None = settings.threads
        self.host_info: dict = {}
        self.draining = False
        self._drain_expired = False
        self._pending: set[asyncio.Future] = set()  # engine futures awaited by requests
        if _is_predictor(source):
            self.predictor = source
            self.task = source.task
            self.manifest = dict(getattr(getattr(source, "bundle", None), "manifest", {}) or {})
        elif not callable(source):
            from ..bundle import Bundle, read_manifest

            self.manifest = source.manifest if isinstance(source, Bundle) else read_manifest(source)
            self.task = self.manifest.get("task")
        src = self.manifest.get("source") or {}
        self.model_name = settings.model_name or src.get("repo_id") or (
            Path(str(src.get("local_path"))).name if src.get("local_path") else None) or "multiverse-model"

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Load the predictor (unless given), warm it up, start the engine, then report ready."""
        try:
            predictor = self.predictor
            if predictor is None:
                if callable(self.source) and not isinstance(self.source, (str, Path)):
                    predictor = self.source()
                else:
                    from ..inference import Predictor

                    predictor = Predictor.from_bundle(self.source, threads=self.settings.threads,
                                                      allow_isa_mismatch=self.settings.allow_isa_mismatch)
                self.manifest = self.manifest or dict(getattr(getattr(predictor, "bundle", None), "manifest", {}) or {})
            self.task = predictor.task
            b = getattr(predictor, "bundle", None)
            if b is not None:
                self.host_info = {"missing_flags": b.missing_flags(),
                                  "session_config": b.session_config(self.settings.allow_isa_mismatch)}
            if self.settings.warmup:
                self._warmup(predictor)
            if self.task == "feature-extraction" and self.dim is None:
                self.dim = len(predictor.predict(["dim"]).results[0])
            s = self.settings
            engine = Engine(predictor, max_queue=s.max_queue, batch_tokens=s.batch_tokens, max_rows=s.max_batch,
                            max_run_tokens=s.max_run_tokens, max_request_tokens=s.max_batch_tokens)
            engine.start()
            if self.threads is None:
                from ..runtime import physical_cores

                self.threads = physical_cores()
            self.predictor, self.engine = predictor, engine
            self.ready = True
            self.metrics.ready.set(1)
            log.info("model ready: %s (%s), %s ORT threads", self.model_name, self.task, self.threads)
        except BaseException as exc:
            self.failed = exc
            log.error("could not load the model: %s", exc, exc_info=not isinstance(exc, MultiverseError))
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def _warmup(self, predictor) -> None:
        """A few runs before ready: short single texts, a small batch, then runs at the ``max_run_tokens`` budget
        for several sequence lengths (longest first), so the session's memory arena reaches its working size now
        rather than under load."""
        texts = ["Warm-up.", "The quick brown fox jumps over the lazy dog near the river bank. " * 3,
                 "Multiverse makes transformer encoders fast on CPUs."]
        word = "warm "  # one token per word in common vocabularies; truncation caps the rest
        budget, max_len, max_rows = self.settings.max_run_tokens, predictor.max_length, self.settings.max_batch
        runs = [[texts[0]], [texts[1]], texts * 3]
        for seq in (max_len, max(16, max_len // 4)):
            runs.append([word * (seq - 2)] * max(1, min(max_rows, budget // seq)))
        if self.task == "ranking":
            half = lambda t: t[: len(t) // 2]
            runs = [[(half(t), half(t)) for t in items] for items in runs]
        for items in runs:
            predictor.predict(items)
        if self.task == "feature-extraction":
            self.dim = len(predictor.predict(runs[0]).results[0])

    def shutdown(self) -> None:
        """Lifespan end: stop the engine (at once when a drain already ran, else within ``graceful_timeout`` s)."""
        self.ready = False
        self.metrics.ready.set(0)
        if self.engine is not None:
            self.engine.stop(0.0 if self.draining else self.settings.graceful_timeout)
            # Let the worker finish the ONNX Runtime run it is in (its jobs are cancelled or failed by now):
            # a process that exits while a thread is inside ORT aborts ("FATAL: exception not rethrown").
            if not self.engine.join(GRACE_MARGIN):
                log.warning("the inference worker is still in a model run after %.0f s", GRACE_MARGIN)

    def begin_drain(self) -> None:
        """Start draining (thread-safe; idempotent): readiness and new requests answer 503 from now on,
        the engine finishes queued and running work for ``graceful_timeout`` s, and every request still
        waiting then is answered 503 with ``Retry-After`` (never left for uvicorn to cancel, which is a 500)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._begin_drain()
        else:
            loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        self.metrics.ready.set(0)
        timeout = self.settings.graceful_timeout
        log.info("draining: %d request(s) in flight get up to %.1f s; new requests get 503", len(self._pending),
                 timeout)
        if self.engine is not None:
            threading.Thread(target=self.engine.stop, args=(timeout,), name="multiverse-drain", daemon=True).start()
        # The engine fails what it has not finished at the deadline with NotRunning; this is the backstop
        # for a run that is still going then.
        self.loop.call_later(timeout + 0.5, self._fail_pending)

    def _fail_pending(self) -> None:
        """Answer every request still waiting 503: its engine future is cancelled, so the worker skips it."""
        self._drain_expired = True
        left = [f for f in self._pending if not f.done()]
        if left:
            log.warning("drain timeout: answering %d unfinished request(s) 503", len(left))
        for future in left:
            future.cancel()

    # ------------------------------------------------------------------ request helpers
    def require_ready(self) -> None:
        if self.draining:
            raise _shutting_down()
        if not self.ready:
            if self.failed is not None:
                raise ApiError(503, "NotReady", "The model failed to load; see the server log.")
            raise ApiError(503, "NotReady", "The model is loading; retry in a moment.", {"retry-after": "1"})

    def require_task(self, task: str, route: str) -> None:
        if self.task != task:
            raise ApiError(422, "WrongTask", f"{route} needs a {task} model; this server runs a {self.task} model. "
                                             "Use POST /predict.")

    def check_items(self, inputs: Any, field: str = "inputs") -> tuple[list, int]:
        """Validated inputs as a list of texts or (text, text_pair) tuples, and their character count.

        ``field`` names the request field in error messages. Every text is checked with the one
        empty-input rule (:func:`~multiverse.serve.schemas.is_blank`: nothing but whitespace,
        control and format characters such as ``\\u200b`` → 400 ``EmptyInput``)."""
        if not isinstance(inputs, str):
            if len(inputs) == 0:
                raise ApiError(400, "EmptyInput", f"`{field}` is empty: send at least one text.")
            if len(inputs) > self.settings.max_batch:
                raise ApiError(422, "BatchTooLarge", f"{len(inputs)} inputs in one request; the limit is "
                                                     f"{self.settings.max_batch} (--max-client-batch-size). "
                                                     "Split the batch.")
        try:
            items = self.predictor.normalize(inputs)
        except InputError as exc:
            raise ApiError(422, "InvalidInput", str(exc)) from None
        max_chars = self.settings.max_chars
        n_chars = 0
        for i, item in enumerate(items):
            for text in ((item,) if isinstance(item, str) else item):
                n = len(text)
                if is_blank(text):
                    raise ApiError(400, "EmptyInput", f"Input {i} of `{field}` is empty (nothing but whitespace, "
                                                      "control or zero-width characters); send some text.")
                if n > max_chars:
                    raise ApiError(422, "InputTooLong", f"Input {i} has {n} characters; the limit is {max_chars} "
                                                        "(texts longer than the model's token limit are truncated).")
                n_chars += n
        return items, n_chars

    def check_params(self, params: dict | None) -> dict:
        """Validated task parameters (see ``PredictRequest.parameters``)."""
        if not params:
            return {}
        allowed = _TASK_PARAMS.get(self.task, ())
        clean: dict = {}
        for key, value in params.items():
            if key in _TRUNCATION_KEYS:
                if not isinstance(value, bool):
                    raise ApiError(422, "InvalidInput", f"`{key}` must be true or false.")
            elif key == "truncation_direction":
                _check_direction(value)
            elif key not in allowed:
                raise ApiError(422, "InvalidInput", f"Unknown parameter `{str(key)[:64]}` for a {self.task} model; "
                                                    f"accepted: {', '.join(allowed + _TRUNCATION_KEYS)}, "
                                                    "truncation_direction.")
            elif key == "top_k":
                if isinstance(value, float) and value.is_integer():  # JSON Schema: 2.0 is an integer
                    value = int(value)
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                    raise ApiError(422, "InvalidInput", "`top_k` must be an integer ≥ 1, or null for all labels.")
                clean[key] = value
            elif key in ("normalize", "raw_scores"):
                if not isinstance(value, bool):
                    raise ApiError(422, "InvalidInput", f"`{key}` must be true or false.")
                clean[key] = value
            elif key == "aggregation_strategy":
                if not isinstance(value, str) or value.lower() != "simple":
                    raise ApiError(422, "InvalidInput", "`aggregation_strategy` must be \"simple\" (the only one "
                                                        "supported: B-/I- tags grouped, scores averaged).")
            elif key == "ignore_labels":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ApiError(422, "InvalidInput", "`ignore_labels` must be a list of label strings.")
                clean[key] = value
        return clean

    async def run(self, items: list, params: dict) -> Result:
        """Queue validated inputs and await the engine's result.

        Raises ApiError: 429 when the queue is full; 503 with ``Retry-After`` when the server is
        draining (before or while the request waits); the ``http_status``/``error_type`` of an
        ``InputError`` the pipeline raised (default 422 ``InvalidInput``; ``RequestTooLarge`` is
        413 ``PayloadTooLarge``); 500 for anything else (details only in the log).
        """
        if self.draining:
            raise _shutting_down()
        try:
            future = self.engine.submit(items, params, self.loop)
        except Overloaded:
            raise ApiError(429, "Overloaded", "The server is at capacity; retry in a moment.",
                           {"retry-after": "1"}) from None
        except NotRunning:
            raise _shutting_down() from None
        self._pending.add(future)
        try:
            result = await future
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._drain_expired and future.cancelled() and not (task is not None and task.cancelling()):
                raise _shutting_down() from None  # cancelled by the drain's deadline, not this request's task
            raise
        except NotRunning:
            raise _shutting_down() from None
        except InputError as exc:
            raise ApiError(getattr(exc, "http_status", 422), getattr(exc, "error_type", "InvalidInput"),
                           str(exc)) from None
        except Exception:
            log.exception("pipeline failed")
            raise ApiError(500, "InternalServerError", "Internal server error; see the server log.") from None
        finally:
            self._pending.discard(future)
        self.metrics.observe_result(result, len(items))
        return result


def _shutting_down() -> ApiError:
    return ApiError(503, "ShuttingDown", "The server is shutting down; retry (on another instance).",
                    {"retry-after": "1"})


def _is_predictor(obj: Any) -> bool:
    return hasattr(obj, "handler") and hasattr(obj, "encode") and hasattr(obj, "run")


def _check_direction(value: Any) -> None:
    if value is not None and (not isinstance(value, str) or value.lower() != "right"):
        raise ApiError(422, "InvalidInput", "`truncation_direction` must be \"right\" (the only one supported).")


def _timing_headers(res: Result, n_chars: int) -> dict[str, str]:
    return {
        "x-compute-time": f"{res.compute_ms:.3f}",
        "x-tokenization-time": f"{res.tokenization_ms:.3f}",
        "x-queue-time": f"{res.queue_ms:.3f}",
        "x-inference-time": f"{res.inference_ms:.3f}",
        "x-postprocess-time": f"{res.postprocess_ms:.3f}",
        "x-compute-tokens": str(res.n_tokens),
        "x-compute-characters": str(n_chars),
    }


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(to_json(payload), status_code=status, media_type=_JSON, headers=headers)


def _error(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": message, "error_type": error_type}, status, headers)


_STATUS_TYPES = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed",
                 413: "PayloadTooLarge", 415: "UnsupportedMediaType", 422: "InvalidInput", 429: "Overloaded",
                 503: "NotReady"}


class _Guard:
    """Pure-ASGI outer layer: API key, body size limit and read deadline (the body is read here, once),
    request metrics."""

    def __init__(self, app, state: _State):
        self.app = app
        self.state = state
        key = state.settings.api_key
        self.key = key.encode() if key else None
        self.max_body = state.settings.max_body_bytes
        self.body_timeout = state.settings.body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            path = scope["path"]
            if self.key is not None and path not in PUBLIC_PATHS and not self._authorized(scope):
                await _send_error(send_tracked, 401, "Unauthorized",
                                  "Missing or wrong API key: send `Authorization: Bearer <key>`.",
                                  [(b"www-authenticate", b"Bearer")])
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_body(scope, receive, send_tracked)
                if body is None:
                    return
                delivered = False

                async def replay():
                    nonlocal delivered
                    if not delivered:
                        delivered = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                await self.app(scope, replay, send_tracked)
            else:
                await self.app(scope, receive, send_tracked)
        finally:
            self.state.metrics.observe_request(scope["path"], status[0], time.perf_counter() - t0)

    def _authorized(self, scope) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
                    break
            elif name == b"x-api-key":
                given = value.strip()
                break
        return hmac.compare_digest(given, self.key)

    async def _read_body(self, scope, receive, send) -> bytes | None:
        """The whole body, or None once an answer was sent (413 too large, 408 not sent in time) or the client left.

        The body must arrive within ``body_timeout`` s of the request head: a client that declares a
        body and stalls gets 408 (or 413, when it had declared too much) and the connection is closed."""
        limit = self.max_body
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        progress = {"too_large": declared is not None and declared > limit, "more": True}
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await self._receive_body(receive, limit, declared, progress)
        except TimeoutError:
            if progress["too_large"]:
                await _send_error(send, 413, "PayloadTooLarge", f"The request body is larger than {limit} bytes; "
                                  "send smaller batches.", [(b"connection", b"close")])
            else:
                await _send_error(send, 408, "RequestTimeout", f"The request body did not arrive within "
                                  f"{self.body_timeout:g} s (--body-timeout); send it at once.",
                                  [(b"connection", b"close")])
            return None
        if body is _TOO_LARGE:
            await _send_error(send, 413, "PayloadTooLarge",
                              f"The request body is larger than {limit} bytes; send smaller batches.",
                              [(b"connection", b"close")] if progress["more"] else [])
            return None
        return body

    @staticmethod
    async def _receive_body(receive, limit: int, declared: int | None, progress: dict):
        """Read the body (bytes), or drain a too-large one (``_TOO_LARGE``), or None on disconnect."""
        chunks: list[bytes] = []
        size = 0
        if not progress["too_large"]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                more = progress["more"] = message.get("more_body", False)
                if not chunks and not more and len(chunk) <= limit:
                    return chunk
                size += len(chunk)
                if size > limit:
                    progress["too_large"] = True
                    break
                chunks.append(chunk)
                if not more:
                    return b"".join(chunks)
            chunks.clear()
        # Too large: read and discard up to 8× the limit, so the client sees the 413 instead of a reset.
        drained, cap = size, 8 * limit
        if progress["more"] and (declared is None or declared <= cap):
            while drained <= cap:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                drained += len(message.get("body", b""))
                if not message.get("more_body", False):
                    progress["more"] = False
                    break
        return _TOO_LARGE


_TOO_LARGE = object()


async def _send_error(send, status: int, error_type: str, message: str, extra: list | None = None) -> None:
    body = to_json({"error": message, "error_type": error_type})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _responses(ok_model: Any, description: str) -> dict:
    headers = {name: {"description": doc, "schema": {"type": "string"}} for name, doc in TIMING_HEADERS.items()}
    out: dict = {200: {"model": ok_model, "description": description, "headers": headers}}
    for code, what in ((400, "Empty input or malformed body"), (401, "Missing or wrong API key"),
                       (408, "The body did not arrive in time (--body-timeout)"),
                       (413, "Body too large (--max-body), or too many tokens in one request (--max-batch-tokens)"),
                       (422, "Invalid input"), (429, "Overloaded"),
                       (503, "Not ready, or shutting down (with Retry-After)")):
        out[code] = {"model": ErrorBody, "description": what}
    return out


def create_app(source: Any, settings: ServeSettings | None = None) -> FastAPI:
    """Build the HTTP application for one model.

    Args:
        source: a bundle folder (``str``/``Path``) or loaded ``multiverse.bundle.Bundle`` (loaded with
            ``Predictor.from_bundle`` in the background at start-up), a ready
            ``multiverse.inference.Predictor``, or a zero-argument callable returning one.
        settings: limits and knobs (:class:`ServeSettings`; defaults when omitted).

    Returns a FastAPI app. ``app.state.multiverse`` holds the shared state; set its ``on_fatal``
    callback to learn about a failed model load. Raises BundleError when ``source`` is a folder
    without a readable manifest.
    """
    settings = settings or ServeSettings()
    state = _State(source, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.loop = asyncio.get_running_loop()
        threading.Thread(target=state.load, name="multiverse-load", daemon=True).start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, state.shutdown)

    app = FastAPI(title="Multiverse", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.multiverse = state

    # ----------------------------------------------------------------- errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.error_type, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error."
        return _error(exc.status_code, _STATUS_TYPES.get(exc.status_code, "HTTPError"), message,
                      dict(exc.headers) if exc.headers else None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _error(422, "InvalidInput", "Invalid request.")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return _error(500, "InternalServerError", "Internal server error; see the server log.")

    # ----------------------------------------------------------------- routes
    async def predict_body(body: bytes, wrap_single: bool = False) -> Response:
        state.require_ready()
        req = parse(PredictRequest, body)
        items, n_chars = state.check_items(req.inputs)
        params = state.check_params(req.parameters)
        if req.raw_scores is not None:
            params.update(state.check_params({"raw_scores": req.raw_scores}) if req.raw_scores else {})
        _check_direction(req.truncation_direction)
        res = await state.run(items, params)
        single = isinstance(req.inputs, str)
        payload = ([res.results[0]] if wrap_single else res.results[0]) if single else res.results
        return _json(payload, headers=_timing_headers(res, n_chars))

    async def embed_body(req: EmbedRequest) -> Response:
        _check_direction(req.truncation_direction)
        if req.prompt_name is not None:
            raise ApiError(422, "InvalidInput", "`prompt_name` is not supported; prepend the prompt to the text.")
        _check_dimensions(req.dimensions, state.dim)
        items, n_chars = state.check_items(req.inputs)
        res = await state.run(items, {"normalize": req.normalize})
        return _json(res.results, headers=_timing_headers(res, n_chars))

    async def similarity_body(inputs: SimilarityInputs, params: SimilarityParameters | None) -> Response:
        if params is not None:
            _check_direction(params.truncation_direction)
            if params.prompt_name is not None:
                raise ApiError(422, "InvalidInput", "`prompt_name` is not supported; prepend the prompt to the text.")
        if is_blank(inputs.source_sentence):
            raise ApiError(400, "EmptyInput", "`source_sentence` is empty (nothing but whitespace, control or "
                                              "zero-width characters); send some text.")
        if not inputs.sentences:
            raise ApiError(400, "EmptyInput", "`sentences` is empty: send at least one sentence to compare.")
        items, n_chars = state.check_items([inputs.source_sentence, *inputs.sentences], "sentences")
        res = await state.run(items, {"normalize": True})
        vectors = np.asarray(res.results, dtype=np.float32)
        scores = (vectors[1:] @ vectors[0]).tolist()  # unit vectors: dot product = cosine similarity
        return _json(scores, headers=_timing_headers(res, n_chars))

    async def openai_body(body: bytes, route: str) -> Response:
        state.require_ready()
        state.require_task("feature-extraction", route)
        req = parse(OpenAIEmbeddingRequest, body)
        _check_dimensions(req.dimensions, state.dim)
        items, n_chars = state.check_items(req.input, "input")
        res = await state.run(items, {})
        if req.encoding_format == "base64":
            data = [{"object": "embedding", "index": i,
                     "embedding": base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")}
                    for i, v in enumerate(res.results)]
        else:
            data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(res.results)]
        payload = {"object": "list", "data": data, "model": state.model_name,
                   "usage": {"prompt_tokens": res.n_tokens, "total_tokens": res.n_tokens}}
        return _json(payload, headers=_timing_headers(res, n_chars))

    @app.post("/", summary="Run the model, dispatched by task (TEI; huggingface_hub.InferenceClient)",
              response_class=Response, openapi_extra=body_schema(PredictRequest),
              responses=_responses(PredictResponse, "feature-extraction: as `/embed`, or as `/similarity` when "
                                   "`inputs` is {source_sentence, sentences}; text-classification: a list of label "
                                   "lists (one per input, also for a single string); token-classification and "
                                   "ranking: as `/predict`."))
    async def root(request: Request):
        body = await request.body()
        state.require_ready()
        if state.task != "feature-extraction":
            return await predict_body(body, wrap_single=state.task == "text-classification")
        req = parse(RootEmbedRequest, body)
        if isinstance(req.inputs, SimilarityInputs):
            _check_direction(req.truncation_direction)
            _check_dimensions(req.dimensions, state.dim)
            if req.prompt_name is not None:
                raise ApiError(422, "InvalidInput", "`prompt_name` is not supported; prepend the prompt to the text.")
            return await similarity_body(req.inputs, req.parameters)
        if req.parameters is not None:
            _check_direction(req.parameters.truncation_direction)
            if req.parameters.prompt_name is not None:
                raise ApiError(422, "InvalidInput", "`prompt_name` is not supported; prepend the prompt to the text.")
        return await embed_body(req)

    @app.post("/predict", summary="Run the model (Infinity contract; TEI /predict)", response_class=Response,
              openapi_extra=body_schema(PredictRequest), responses=_responses(PredictResponse, "Task results: "
              "labels and scores (text-classification), embeddings (feature-extraction), entities "
              "(token-classification), one score per pair (ranking). One result for a string input, a list "
              "for a list input."))
    async def predict(request: Request):
        return await predict_body(await request.body())

    @app.post("/embed", summary="Embeddings (TEI)", response_class=Response, openapi_extra=body_schema(EmbedRequest),
              responses=_responses(list[list[float]], "One embedding per input (always a list)."))
    async def embed(request: Request):
        body = await request.body()
        state.require_ready()
        state.require_task("feature-extraction", "/embed")
        return await embed_body(parse(EmbedRequest, body))

    @app.post("/similarity", summary="Sentence similarity (TEI)", response_class=Response,
              openapi_extra=body_schema(SimilarityRequest),
              responses=_responses(list[float], "Cosine similarity of `source_sentence` to each sentence, in order."))
    async def similarity(request: Request):
        body = await request.body()
        state.require_ready()
        state.require_task("feature-extraction", "/similarity")
        req = parse(SimilarityRequest, body)
        return await similarity_body(req.inputs, req.parameters)

    @app.post("/rerank", summary="Rerank passages for a query (TEI)", response_class=Response,
              openapi_extra=body_schema(RerankRequest),
              responses=_responses(list[RankItem], "Passages sorted by score, best first."))
    async def rerank(request: Request):
        body = await request.body()
        state.require_ready()
        state.require_task("ranking", "/rerank")
        req = parse(RerankRequest, body)
        _check_direction(req.truncation_direction)
        if not req.texts:
            raise ApiError(400, "EmptyInput", "`texts` is empty: send at least one passage.")
        if is_blank(req.query):
            raise ApiError(400, "EmptyInput", "`query` is empty (nothing but whitespace, control or zero-width "
                                              "characters); send some text.")
        items, n_chars = state.check_items([[req.query, t] for t in req.texts], "texts")
        res = await state.run(items, {"raw_scores": req.raw_scores})
        order = sorted(range(len(res.results)), key=lambda i: -res.results[i])
        if req.return_text:
            payload = [{"index": i, "score": res.results[i], "text": req.texts[i]} for i in order]
        else:
            payload = [{"index": i, "score": res.results[i]} for i in order]
        return _json(payload, headers=_timing_headers(res, n_chars))

    @app.post("/v1/embeddings", summary="Embeddings (OpenAI)", response_class=Response,
              openapi_extra=body_schema(OpenAIEmbeddingRequest),
              responses=_responses(OpenAIEmbeddingResponse, "OpenAI embeddings list."))
    async def openai_embeddings(request: Request):
        return await openai_body(await request.body(), "/v1/embeddings")

    @app.post("/embeddings", summary="Embeddings (infinity; same as /v1/embeddings)", response_class=Response,
              openapi_extra=body_schema(OpenAIEmbeddingRequest),
              responses=_responses(OpenAIEmbeddingResponse, "OpenAI embeddings list."))
    async def infinity_embeddings(request: Request):
        return await openai_body(await request.body(), "/embeddings")

    @app.get("/v1/models", summary="The served model (OpenAI)", response_class=Response,
             responses={200: {"model": ModelList, "description": "One model: this server's."}})
    async def openai_models():
        return _json(_models(state, openai=True))

    @app.get("/models", summary="The served model (infinity)", response_class=Response,
             responses={200: {"model": ModelList, "description": "One model: this server's."}})
    async def infinity_models():
        return _json(_models(state, openai=False))

    @app.get("/info", summary="Model and server information (TEI)")
    async def info():
        return _json(_info(state))

    @app.get("/health", summary="200 when the model is ready, else 503 (TEI; 503 from the start of a drain)",
             responses={503: {"model": ErrorBody, "description": "Not ready, or shutting down"}})
    async def health():
        state.require_ready()
        return _json({"status": "ok"})

    @app.get("/v2/health/live", summary="Liveness: 200 while the process serves HTTP")
    async def live():
        return _json({"live": True})

    @app.get("/v2/health/ready", summary="Readiness: 200 once the model is loaded and warmed up, else 503 "
                                         "(also from the start of a drain, on SIGTERM)",
             responses={503: {"model": ErrorBody, "description": "Not ready, or shutting down"}})
    async def ready():
        state.require_ready()
        return _json({"ready": True})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        m = state.metrics
        m.queue_size.set(state.engine.queue_size if state.engine is not None else 0)
        return Response(m.render(), media_type=m.content_type)

    _strict_openapi(app, state)
    _make_routes_lean(app)
    app.add_middleware(_Guard, state=state)
    return app


def _strict_openapi(app: FastAPI, state: _State) -> None:
    """Serve an OpenAPI document as strict as the server: only the routes the model's task serves, and
    request bodies from :func:`~multiverse.serve.schemas.request_schemas` (lengths, counts, parameters,
    the empty-text rule). Built on each call until the model is ready (the task and the embedding size
    are known then), cached after."""
    from fastapi.openapi.utils import get_openapi

    cache: list[dict] = []

    def openapi() -> dict:
        if cache:
            return cache[0]
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        task, s = state.task, state.settings
        bodies = request_schemas(task, s.max_batch, s.max_chars, state.dim)
        hidden = set().union(*TASK_ROUTES.values()) - TASK_ROUTES.get(task, set()) if task else set()
        for path in list(spec["paths"]):
            if path in hidden:
                del spec["paths"][path]
                continue
            post = spec["paths"][path].get("post")
            if post is not None and path in bodies:
                post["requestBody"] = {"required": True, "content": {"application/json": {"schema": bodies[path]}}}
        if state.ready:
            cache.append(spec)
        return spec

    app.openapi = openapi


def _make_routes_lean(app: FastAPI) -> None:
    """Call our endpoints directly (they take only the Request), skipping FastAPI's dependency solving.

    The routes stay ``APIRoute`` objects, so the OpenAPI document is unchanged.
    """
    from fastapi.routing import APIRoute
    from starlette.routing import request_response

    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.endpoint.__module__ == __name__:
            endpoint = route.endpoint
            if endpoint.__code__.co_argcount == 1:
                route.app = request_response(endpoint)
            else:
                route.app = request_response(_no_request(endpoint))


def _no_request(endpoint):
    async def call(request: Request):
        return await endpoint()

    return call


def _check_dimensions(dimensions: int | None, dim: int | None) -> None:
    """``dimensions`` may be omitted, null, 0 (infinity's default: the full size) or the model's size."""
    if dimensions is not None and dimensions != 0 and dimensions != dim:
        raise ApiError(422, "InvalidInput", f"`dimensions` must be {dim} (this model's size), 0 or omitted.")


_CAPABILITIES = {"feature-extraction": ["embed"], "text-classification": ["classify"],
                 "token-classification": ["classify"], "ranking": ["rerank"]}


def _models(state: _State, openai: bool) -> dict:
    """The ``/v1/models`` (OpenAI: ``owned_by``) or ``/models`` (infinity: ``stats``, ``backend``,
    ``capabilities``) list of the one served model."""
    created = 0
    stamp = state.manifest.get("created_at")
    if stamp:
        try:
            created = int(datetime.fromisoformat(str(stamp)).timestamp())
        except ValueError:
            created = 0
    card: dict = {"id": state.model_name, "object": "model", "created": created}
    if openai:
        card["owned_by"] = "multiverse"
    else:
        card.update(stats={}, backend="multiverse-onnxruntime", capabilities=_CAPABILITIES.get(state.task, []))
    return {"object": "list", "data": [card]}


def _info(state: _State) -> dict:
    m = state.manifest
    p = state.predictor
    task = state.task
    config = getattr(p, "config", {}) or {}
    labels = {str(k): v for k, v in (config.get("id2label") or {}).items()}
    if task == "feature-extraction":
        pooling = getattr(getattr(p, "handler", None), "pooling", None)
        model_type: dict = {"embedding": {"pooling": getattr(pooling, "mode", "mean"), "dim": state.dim}}
    elif task == "ranking":
        model_type = {"reranker": {"id2label": labels}}
    elif task == "token-classification":
        model_type = {"token_classifier": {"id2label": labels}}
    else:
        model_type = {"classifier": {"id2label": labels, "label2id": {v: int(k) for k, v in labels.items()}}}
    s = state.settings
    return {
        "model_id": state.model_name,
        "model_sha": (m.get("source") or {}).get("revision"),
        "model_dtype": m.get("precision"),
        "model_type": model_type,
        "task": task,
        "target": (m.get("target") or {}).get("name"),
        "max_input_length": getattr(p, "max_length", None) or m.get("max_sequence_length"),
        "max_concurrent_requests": s.max_queue,
        "max_batch_tokens": s.max_batch_tokens,
        "batch_tokens": s.batch_tokens,
        "max_run_tokens": s.max_run_tokens,
        "max_client_batch_size": s.max_batch,
        "max_input_characters": s.max_chars,
        "max_body_bytes": s.max_body_bytes,
        "tokenization_workers": 1,
        "threads": state.threads,
        "host": state.host_info,
        "ready": state.ready,
        "timing_unit": TIMING_UNIT,
        "version": __version__,
    }
