"""The inference engine behind the HTTP routes: it only schedules; the pipeline is ``Predictor``'s.

A route validates its inputs and calls :meth:`Engine.submit` (which answers :class:`Overloaded`
at once when the queue is full) and awaits an ``asyncio.Future`` that the worker thread resolves
with ``loop.call_soon_threadsafe``. The event loop never tokenizes or runs the model.

The worker runs exactly what :meth:`multiverse.inference.Predictor.predict` runs, step by step:
``predictor.encode`` (tokenize, long texts pre-cut), ``predictor.plan`` (the ONNX Runtime runs:
one row per run for dynamic int8, else rows together up to ``max_run_tokens`` padded tokens),
``predictor.run`` on each run's rows (:func:`~multiverse.inference.slice_rows`), and
``predictor.postprocess`` on the joined output (:func:`~multiverse.inference.join_outputs`).
So a request's results equal ``Predictor.predict`` on the same inputs.

Scheduling: requests being worked on take turns **one run at a time** (round robin), and newly
arrived requests join before the current one takes its next turn, so a one-word request waits
for at most one run of a large request, never for the whole of it. While draining (after
:meth:`Engine.stop`) the oldest request is finished first, so the grace period completes some
requests rather than advancing all of them. With ``batch_tokens > 0``,
requests that fit in one run each are merged into one ONNX Runtime run while
``rows × longest row ≤ batch_tokens`` (graphs that run rows together only: merging rows of a
dynamic-int8 graph would make results depend on other clients' texts).

Imports only numpy and the standard library (plus multiverse's own serving-path modules).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import RequestTooLarge
from ..inference import join_outputs, slice_rows
from ..tasks import Encoded, TaskParams

log = logging.getLogger("multiverse.serve")


class Overloaded(Exception):
    """The request queue is full (HTTP 429)."""


class NotRunning(Exception):
    """The engine is stopped, draining past its deadline, or not started (HTTP 503 with ``Retry-After``)."""


@dataclass(frozen=True)
class Result:
    """One request's results and where its time went (milliseconds, ``time.perf_counter``).

    Attributes:
        results: one task result per input, as ``Predictor.predict(...).results``.
        tokenization_ms: tokenizing this request's inputs.
        queue_ms: waiting (before the first run and between this request's runs while others
            took their turn): wall time from submission to result minus ``compute_ms``.
        inference_ms: the ONNX Runtime run(s) this request was part of.
        postprocess_ms: this request's post-processing.
        compute_ms: tokenization + inference + post-processing (the pipeline time, without queueing).
        n_tokens: real (non-pad) tokens of this request.
        batch_rows: most rows in one ONNX Runtime run this request was part of.
    """

    results: list
    tokenization_ms: float
    queue_ms: float
    inference_ms: float
    postprocess_ms: float
    compute_ms: float
    n_tokens: int
    batch_rows: int


class _Job:
    """One request inside the engine: its inputs, tokens, planned runs and outputs so far."""

    __slots__ = ("enc", "enqueued", "future", "inference_ms", "items", "loop", "params", "parts", "runs",
                 "rows", "tok_ms")

    def __init__(self, items: list, params: dict, future: asyncio.Future, loop: asyncio.AbstractEventLoop):
        self.items = items
        self.params = params
        self.future = future
        self.loop = loop
        self.enqueued = time.perf_counter()
        self.enc: Encoded | None = None
        self.runs: deque[tuple[int, int]] = deque()
        self.parts: list[np.ndarray] = []
        self.tok_ms = self.inference_ms = 0.0
        self.rows = 0

    @property
    def width(self) -> int:
        return int(self.enc.arrays["input_ids"].shape[1])

    def one_run(self) -> bool:
        """The whole request is a single, not yet started run."""
        return len(self.runs) == 1 and not self.parts and self.runs[0] == (0, len(self.items))


def _deliver(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _post(job: _Job, value: Any = None, error: BaseException | None = None) -> None:
    """Resolve a job's future on its event loop (from any thread); a closed loop is ignored."""
    try:
        job.loop.call_soon_threadsafe(_deliver, job.future, value, error)
    except RuntimeError:  # the loop is gone (shutdown): nobody is waiting any more
        pass


class Engine:
    """Bounded queue + one worker thread around a :class:`multiverse.inference.Predictor`.

    Args:
        predictor: a loaded predictor (its session is shared; only the worker calls it).
        max_queue: requests that may wait to be started; :meth:`submit` raises :class:`Overloaded` beyond.
        batch_tokens: padded-token budget (rows × longest row) of requests merged into one run;
            0 disables cross-request batching (always off for graphs that run one row per run).
        max_rows: most rows merged into one run.
        max_run_tokens: padded-token cap of one ONNX Runtime run (``Predictor.plan``); larger
            requests are split into several runs, which also bounds the session's memory arena.
        max_request_tokens: real tokens (after truncation) one request may carry, as TEI's
            ``max_batch_tokens``; more fails the request with :class:`~multiverse.errors.RequestTooLarge`
            (HTTP 413). 0 = no limit.

    A request whose params say ``truncate`` (or ``truncation``) false fails with
    :class:`~multiverse.errors.InputTooLong` (HTTP 422) when one of its texts was truncated
    (:meth:`~multiverse.tasks.Encoded.check_fits`), before any model run.
    """

    def __init__(self, predictor, *, max_queue: int = 128, batch_tokens: int = 0, max_rows: int = 256,
                 max_run_tokens: int = 4096, max_request_tokens: int = 0):
        self.predictor = predictor
        self.max_queue = int(max_queue)
        self.batch_tokens = 0 if getattr(predictor, "per_row", False) else int(batch_tokens)
        self.max_rows = int(max_rows)
        self.max_run_tokens = int(max_run_tokens)
        self.max_request_tokens = int(max_request_tokens)
        self._queue: deque[_Job] = deque()   # submitted, not tokenized yet
        self._active: deque[_Job] = deque()  # tokenized, taking turns (worker thread only)
        self._cv = threading.Condition(threading.Lock())
        self._running = True  # accepting requests; they wait in the queue until start()
        self._deadline: float | None = None  # set by stop(): unfinished work after it gets NotRunning
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- control
    def start(self) -> None:
        """Start the worker thread (idempotent). Requests submitted before wait in the queue."""
        with self._cv:
            if self._thread is not None or not self._running:
                return
            self._thread = threading.Thread(target=self._work, name="multiverse-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain: refuse new requests at once, let queued and running requests finish for up to ``timeout``
        seconds, then fail every request still unfinished with :class:`NotRunning`; join the worker."""
        with self._cv:
            self._running = False
            self._deadline = time.perf_counter() + max(0.0, float(timeout))
            self._cv.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, float(timeout)) + 0.5)
        # The worker fails what is left when it sees the deadline; if it is stuck in a long run, do it here.
        with self._cv:
            left = list(self._queue) + (list(self._active) if thread is None or thread.is_alive() else [])
            self._queue.clear()
        for job in left:
            _post(job, error=NotRunning("The server is shutting down; retry on another instance."))

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the worker thread to end (after :meth:`stop`); True when it has."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(max(0.0, float(timeout)))
        return thread is None or not thread.is_alive()

    @property
    def draining(self) -> bool:
        """True once :meth:`stop` was called."""
        return not self._running

    @property
    def queue_size(self) -> int:
        """Requests submitted and not finished yet (waiting or taking turns)."""
        return len(self._queue) + len(self._active)

    # ----------------------------------------------------------------- submit
    def submit(self, items: list, params: dict, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """Queue already-validated inputs; returns a future resolved with a :class:`Result`.

        Must be called on ``loop``'s thread. Raises :class:`Overloaded` when ``max_queue``
        requests are already waiting and :class:`NotRunning` when stopped or draining. The
        future fails with the pipeline's exception (``InputError``, ``RequestTooLarge`` ...) if
        the request itself is bad, and with :class:`NotRunning` if draining ends before it is done.
        """
        future = loop.create_future()
        job = _Job(items, params, future, loop)
        with self._cv:
            if not self._running:
                raise NotRunning("The server is shutting down; retry on another instance.")
            if len(self._queue) >= self.max_queue:
                raise Overloaded(f"{len(self._queue)} requests are already waiting.")
            self._queue.append(job)
            self._cv.notify()
        return future

    # ----------------------------------------------------------------- worker
    def _admit(self, wait: bool) -> bool:
        """Move submitted jobs to the active list (tokenized, runs planned). Returns False when the worker should
        exit: stopped with nothing left, or past the drain deadline."""
        with self._cv:
            while wait and not self._queue and self._running:
                self._cv.wait()
            new = list(self._queue)
            self._queue.clear()
            past_deadline = self._deadline is not None and time.perf_counter() > self._deadline
        if past_deadline:
            for job in new + list(self._active):
                _post(job, error=NotRunning("The server is shutting down; retry on another instance."))
            self._active.clear()
            return False
        for job in new:
            if not job.future.cancelled() and self._tokenize(job):
                self._active.append(job)
        return bool(self._active) or self._running or bool(self._queue)

    def _tokenize(self, job: _Job) -> bool:
        t0 = time.perf_counter()
        try:
            job.enc = self.predictor.encode(job.items)
            if not TaskParams.truncates(job.params):
                job.enc.check_fits(self.predictor.max_length)
            limit = self.max_request_tokens
            if limit and job.enc.n_tokens > limit:
                raise RequestTooLarge(
                    f"The request has {job.enc.n_tokens} tokens after truncation; the limit is {limit} "
                    f"(max_batch_tokens). Split it into smaller batches.")
            job.runs = deque(self.predictor.plan(job.enc, self.max_run_tokens))
        except BaseException as exc:  # noqa: BLE001 - delivered to the request
            _post(job, error=exc)
            return False
        job.tok_ms = (time.perf_counter() - t0) * 1e3
        return True

    def _work(self) -> None:
        while True:
            if not self._admit(wait=not self._active):
                return
            if not self._active:
                continue
            job = self._active.popleft()
            if job.future.cancelled():
                continue
            batch = [job]
            if self.batch_tokens > 0 and job.one_run():
                batch = self._merge_with(job)
            try:
                self._run(batch)
            except BaseException as exc:
                log.exception("inference failed")
                for j in batch:
                    _post(j, error=exc)
                continue
            # New arrivals join the round before this request's next turn. While draining, requests are
            # finished oldest first instead, so the grace period completes some rather than none.
            self._admit(wait=False)
            for j in reversed(batch) if not self._running else batch:
                if not j.runs:
                    self._finish(j)
                elif self._running:
                    self._active.append(j)
                else:
                    self._active.appendleft(j)

    def _merge_with(self, job: _Job) -> list[_Job]:
        """``job`` plus waiting single-run jobs while rows × longest row stays within ``batch_tokens``."""
        batch, rows, longest = [job], len(job.items), job.width
        for other in list(self._active):
            if not other.one_run():
                continue
            n_rows, n_longest = rows + len(other.items), max(longest, other.width)
            if n_rows > self.max_rows or n_rows * n_longest > self.batch_tokens:
                break
            self._active.remove(other)
            batch.append(other)
            rows, longest = n_rows, n_longest
        return batch

    def _run(self, batch: list[_Job]) -> None:
        """One ONNX Runtime run: the next planned rows of one job, or whole single-run jobs merged."""
        if len(batch) == 1:
            job = batch[0]
            a, b = job.runs.popleft()
            sub = slice_rows(job.enc, a, b)
            t0 = time.perf_counter()
            out = self.predictor.run(sub)
            job.inference_ms += (time.perf_counter() - t0) * 1e3
            job.rows = max(job.rows, b - a)
            job.parts.append(out)
            return
        pieces = [slice_rows(j.enc, 0, len(j.items)) for j in batch]
        merged = Encoded(arrays=_merge([p.arrays for p in pieces], _pad_id(self.predictor)), encodings=[], texts=[],
                         n_tokens=sum(p.n_tokens for p in pieces))
        t0 = time.perf_counter()
        out = self.predictor.run(merged)
        run_ms = (time.perf_counter() - t0) * 1e3
        offset = 0
        for j, piece in zip(batch, pieces):
            n = len(j.items)
            part = out[offset:offset + n]
            offset += n
            if part.ndim >= 3:
                part = part[:, :piece.arrays["input_ids"].shape[1]]
            j.runs.popleft()
            j.parts.append(part)
            j.inference_ms += run_ms
            j.rows = max(j.rows, int(out.shape[0]))

    def _finish(self, job: _Job) -> None:
        t0 = time.perf_counter()
        try:
            output = join_outputs(job.parts, job.width)
            results = self.predictor.postprocess(output, job.enc, job.params)
        except BaseException as exc:  # noqa: BLE001 - delivered to the request
            log.exception("post-processing failed")
            _post(job, error=exc)
            return
        now = time.perf_counter()
        post_ms = (now - t0) * 1e3
        compute_ms = job.tok_ms + job.inference_ms + post_ms
        queue_ms = max(0.0, (now - job.enqueued) * 1e3 - compute_ms)
        _post(job, Result(results, job.tok_ms, queue_ms, job.inference_ms, post_ms, compute_ms,
                          job.enc.n_tokens, job.rows))
        job.enc, job.parts = None, []


def _pad_id(predictor) -> int:
    return int(getattr(getattr(predictor, "tokenizer", None), "pad_id", 0) or 0)


def _merge(parts: list[dict[str, np.ndarray]], pad_id: int) -> dict[str, np.ndarray]:
    """Concatenate right-padded int64 batches along rows, padding each to the longest sequence."""
    longest = max(p["input_ids"].shape[1] for p in parts)
    merged = {}
    for name in parts[0]:
        fill = pad_id if name == "input_ids" else 0
        arrays = []
        for p in parts:
            a = p[name]
            if a.shape[1] < longest:
                if name == "position_ids":
                    a = np.broadcast_to(np.arange(longest, dtype=a.dtype), (a.shape[0], longest))
                else:
                    a = np.pad(a, ((0, 0), (0, longest - a.shape[1])), constant_values=fill)
            arrays.append(a)
        merged[name] = np.ascontiguousarray(np.concatenate(arrays, axis=0))
    return merged
