"""What the routes share: settings, metrics, the predictor and its engine once loaded, and the request checks.

:class:`ServerState` loads and warms up the model in a background thread, starts the engine, drains on
SIGTERM (503 + ``Retry-After``), validates inputs and task parameters, and queues work on the engine.
Everything task-specific (parameters, routes, ``/info``) comes from the task's
:class:`~multiverse.tasks.Task` class (:attr:`ServerState.spec`), never from comparing task names.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError, MultiverseError, TooManyCharacters
from ..tasks import TASKS, Task, get_task
from .engine import Engine, NotRunning, Overloaded, Result
from .metrics import Metrics
from .schemas import (
    TIMING_UNIT,
    ApiError,
    is_blank,
)
from .settings import GRACE_MARGIN, ServeSettings

log = logging.getLogger("multiverse.serve")


class ServerState:
    """Everything the routes share: settings, metrics, the predictor and its engine once loaded."""

    def __init__(self, source: Any, settings: ServeSettings):
        self.source = source
        self.settings = settings
        self.metrics = Metrics()
        self.predictor = None
        self.engine: Engine | None = None
        self.loader: threading.Thread | None = None  # the background model load (see load)
        self.ready = False
        self.failed: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dim: int | None = None
        self.manifest: dict = {}
        self.task: str | None = None
        self.threads: int | None = settings.threads
        self.streams = 1  # model runs in flight (performance_hint="throughput": see _throughput_predictor)
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

    @property
    def runtime_engine(self) -> str:
        """``onnxruntime`` or ``openvino``: the runtime of the loaded session, else the one the bundle's manifest
        records (ONNX Runtime when it says none)."""
        from ..ovsession import OpenVinoSession  # imports no openvino

        session = getattr(self.predictor, "session", None)
        if session is not None and hasattr(session, "get_inputs"):
            return "openvino" if isinstance(session, OpenVinoSession) else "onnxruntime"
        recorded = ((self.manifest.get("runtime") or {}).get("engine") or {}).get("name")
        return recorded or ("openvino" if str(self.manifest.get("model_file", "")).endswith(".xml") else "onnxruntime")

    def runtime_document(self) -> dict:
        """``/info``'s runtime fields: ``backend`` (``onnxruntime`` | ``openvino``), ``backend_version`` (the version
        this server runs) and ``backend_version_built`` (the version the manifest records under
        ``runtime.engine``: the one that validated the bundle; null when the manifest does not say)."""
        from ..runtime import engine_info

        runtime = engine_info(self.runtime_engine, self.manifest)
        return {"backend": runtime["name"], "backend_version": runtime["version"],
                "backend_version_built": runtime["version_built"]}

    @property
    def spec(self) -> type[Task] | None:
        """The served task's :class:`~multiverse.tasks.Task` class; None until the task is known."""
        return get_task(self.task) if self.task else None

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Load the predictor (unless given), warm it up, start the engine, then report ready."""
        try:
            predictor, pool = self.predictor, None
            if predictor is None:
                if callable(self.source) and not isinstance(self.source, (str, Path)):
                    predictor = self.source()
                elif self.settings.performance_hint == "throughput":
                    predictor, pool = self._throughput_predictor()
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
            if self.spec.capability == "embed" and self.dim is None:
                self.dim = len(predictor.predict(["dim"]).results[0])
            s = self.settings
            engine = pool(predictor) if pool is not None else Engine(
                predictor, max_queue=s.max_queue, batch_tokens=s.batch_tokens, max_rows=s.max_batch,
                max_run_tokens=s.max_run_tokens, max_request_tokens=s.max_batch_tokens)
            engine.start()
            if self.threads is None:
                from ..runtime import physical_cores

                self.threads = physical_cores()
            self.predictor, self.engine = predictor, engine
            self.ready = True
            self.metrics.ready.set(1)
            self.metrics.set_runtime(self.runtime_document())
            log.info("model ready: %s (%s), %s %s threads", self.model_name, self.task, self.threads,
                     getattr(b, "runtime_name", "ONNX Runtime"))
            if b is not None and not b.passed:  # written with --keep-failed
                log.warning("%s FAILED its accuracy gate (kept with --keep-failed); serving it anyway: its outputs "
                            "may differ from the original model's. `multiverse inspect` shows the gap.", b.path)
        except BaseException as exc:
            self.failed = exc
            log.error("could not load the model: %s", exc, exc_info=not isinstance(exc, MultiverseError))
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def _throughput_predictor(self):
        """``performance_hint="throughput"``: the predictor compiled for streams, and a callable making the
        :class:`~multiverse.serve.throughput.EnginePool` around it (see :mod:`multiverse.serve.throughput`)."""
        from . import throughput

        predictor, plan = throughput.load_predictor(self.source, self.settings)
        self.streams = plan.streams
        return predictor, lambda p: throughput.make_engine(p, self.settings, plan.streams, plan.batch_tokens)

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
        if self.spec.requires_pairs:
            half = lambda t: t[: len(t) // 2]
            runs = [[(half(t), half(t)) for t in items] for items in runs]
        for items in runs:
            predictor.predict(items)
        if self.spec.capability == "embed":
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

    def require_capability(self, capability: str, route: str) -> None:
        """422 ``WrongTask`` unless the served task has ``capability`` (``embed``, ``rerank``: see
        :class:`~multiverse.tasks.Task`)."""
        if self.spec.capability != capability:
            wanted = " or ".join(t.name for t in TASKS.values() if t.capability == capability)
            raise ApiError(422, "WrongTask", f"{route} needs a {wanted} model; this server runs a {self.task} "
                                             "model. Use POST /predict.")

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
                    raise TooManyCharacters(f"Input {i} has {n} characters; this server accepts at most {max_chars} "
                                            "per text (its --max-chars), truncated or not: split or shorten the "
                                            "text, or ask the operator to raise --max-chars.")
                n_chars += n
        return items, n_chars

    def check_params(self, params: dict | None) -> dict:
        """The task parameters sent, validated by the task's ``Params`` model (see ``PredictRequest.parameters``).

        Raises InputError (422 ``InvalidInput``) naming the bad or unknown key."""
        return self.spec.Params.read(params, self.task)

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


def check_direction(value: Any) -> None:
    if value is not None and (not isinstance(value, str) or value.lower() != "right"):
        raise ApiError(422, "InvalidInput", "`truncation_direction` must be \"right\" (the only one supported).")


def check_dimensions(dimensions: int | None, dim: int | None) -> None:
    """``dimensions`` may be omitted, null, 0 (infinity's default: the full size) or the model's size."""
    if dimensions is not None and dimensions != 0 and dimensions != dim:
        raise ApiError(422, "InvalidInput", f"`dimensions` must be {dim} (this model's size), 0 or omitted.")


def model_list(state: ServerState, openai: bool) -> dict:
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
        card.update(stats={}, backend=f"multiverse-{state.runtime_engine}", capabilities=[state.spec.capability] if state.task else [])
    return {"object": "list", "data": [card]}


def info_document(state: ServerState) -> dict:
    """TEI's ``GET /info``, with Multiverse's limits and host facts. ``model_type`` is the task's own entry
    (``Task.info``), null until the model is loaded."""
    m = state.manifest
    p = state.predictor
    s = state.settings
    return {
        "model_id": state.model_name,
        "model_sha": (m.get("source") or {}).get("revision"),
        "model_dtype": m.get("precision"),
        "model_type": p.handler.info(state.dim) if p is not None else None,
        "task": state.task,
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
        "performance_hint": s.performance_hint,
        "streams": state.streams,
        **state.runtime_document(),
        "host": state.host_info,
        "ready": state.ready,
        "timing_unit": TIMING_UNIT,
        "version": __version__,
    }

