"""The inference engine behind the HTTP routes: one shared session, a bounded queue, one worker thread.

The event loop never tokenizes or runs the model: a route validates its inputs, calls
:meth:`Engine.submit` (which answers :class:`Overloaded` at once when the queue is full) and
awaits an ``asyncio.Future`` that the worker resolves with ``loop.call_soon_threadsafe``.

The worker takes the oldest request, tokenizes it, and, when batching is on
(``batch_tokens > 0``), also takes the requests already waiting while the merged batch
stays within the padded-token budget (``rows × longest sequence``). It does not wait for
more requests to arrive: under light load every request runs alone at full speed, under
heavy load batches form by themselves. Rows are then run in ONNX Runtime runs of at most
``max_run_tokens`` padded tokens (a bigger request is split, in order), which bounds the
memory the session's arena grows to. Each request is post-processed on its own rows with
its own parameters, so its result equals ``Predictor.predict`` on the same inputs: bit for
bit when it ran alone in one run, to float rounding when batched or split.

Very long texts are first cut by :class:`~multiverse.serve.precut.PreCutter` (same tokens,
without the tokenizer's quadratic cost on long pairs).

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

from ..tasks import Encoded
from .precut import PreCutter

log = logging.getLogger("multiverse.serve")


class Overloaded(Exception):
    """The request queue is full (HTTP 429)."""


class NotRunning(Exception):
    """The engine is stopped or not started yet (HTTP 503)."""


@dataclass(frozen=True)
class Result:
    """One request's results and where its time went (milliseconds, ``time.perf_counter``).

    Attributes:
        results: one task result per input, as ``Predictor.predict(...).results``.
        tokenization_ms: tokenizing this request's inputs.
        queue_ms: waiting before the model run (for the worker, and for the other requests
            of the same batch to be tokenized).
        inference_ms: the ONNX Runtime run(s) this request was part of.
        postprocess_ms: this request's post-processing.
        compute_ms: tokenization + inference + post-processing (the pipeline time, without queueing).
        n_tokens: real (non-pad) tokens of this request.
        batch_rows: rows in the ONNX Runtime run (> the request's inputs when batched with others).
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
    __slots__ = (
        "done_rows",
        "enc",
        "enqueued",
        "failed",
        "future",
        "inference_ms",
        "items",
        "loop",
        "params",
        "post_ms",
        "results",
        "rows",
        "tok_ms",
    )

    def __init__(self, items: list, params: dict, future: asyncio.Future, loop: asyncio.AbstractEventLoop):
        self.items = items
        self.params = params
        self.future = future
        self.loop = loop
        self.enqueued = time.perf_counter()
        self.enc: Encoded | None = None
        self.tok_ms = 0.0


def _deliver(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _post(job: _Job, value: Any = None, error: BaseException | None = None) -> None:
    """Resolve a job's future on its event loop (from the worker thread); a closed loop is ignored."""
    try:
        job.loop.call_soon_threadsafe(_deliver, job.future, value, error)
    except RuntimeError:  # the loop is gone (shutdown): nobody is waiting any more
        pass


class Engine:
    """Bounded queue + one worker thread around a :class:`multiverse.inference.Predictor`.

    Args:
        predictor: a loaded predictor (its session is shared; only the worker calls it).
        max_queue: requests that may wait; :meth:`submit` raises :class:`Overloaded` beyond.
        batch_tokens: padded-token budget (rows × longest sequence) of the requests merged into
            one batch; 0 disables cross-request batching.
        max_rows: most rows merged into one batch.
        max_run_tokens: padded-token cap of one ONNX Runtime run. Larger requests (or merged
            batches) are split into several runs, in order, each trimmed to its own longest
            row, which bounds the memory the session's arena grows to.
    """

    def __init__(self, predictor, *, max_queue: int = 128, batch_tokens: int = 0, max_rows: int = 256,
                 max_run_tokens: int = 4096):
        self.predictor = predictor
        self.max_run_tokens = int(max_run_tokens)
        self.max_queue = int(max_queue)
        self.batch_tokens = int(batch_tokens)
        self.max_rows = int(max_rows)
        self._queue: deque[_Job] = deque()
        self._cv = threading.Condition(threading.Lock())
        self._running = True  # accepting requests; they wait in the queue until start()
        self._thread: threading.Thread | None = None
        text_tokenizer = getattr(predictor, "tokenizer", None)
        self._pad_id = int(getattr(text_tokenizer, "pad_id", 0) or 0)
        raw = getattr(text_tokenizer, "tokenizer", None)
        self._precut = PreCutter(raw, int(predictor.max_length)) if raw is not None else None

    # ----------------------------------------------------------------- control
    def start(self) -> None:
        """Start the worker thread (idempotent). Requests submitted before wait in the queue."""
        with self._cv:
            if self._thread is not None or not self._running:
                return
        self._thread = threading.Thread(target=self._work, name="multiverse-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new requests, let the worker finish the queued ones, and join it (at most ``timeout`` s)."""
        with self._cv:
            self._running = False
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def queue_size(self) -> int:
        """Requests waiting for the worker (not counting the batch being run)."""
        return len(self._queue)

    # ----------------------------------------------------------------- submit
    def submit(self, items: list, params: dict, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """Queue already-validated inputs; returns a future resolved with a :class:`Result`.

        Must be called on ``loop``'s thread. Raises :class:`Overloaded` when ``max_queue``
        requests are already waiting and :class:`NotRunning` when stopped. The future fails
        with the pipeline's exception (``InputError`` ... ) if the request itself is bad.
        """
        future = loop.create_future()
        job = _Job(items, params, future, loop)
        with self._cv:
            if not self._running:
                raise NotRunning("The inference engine is not running.")
            if len(self._queue) >= self.max_queue:
                raise Overloaded(f"{len(self._queue)} requests are already waiting.")
            self._queue.append(job)
            self._cv.notify()
        return future

    # ----------------------------------------------------------------- worker
    def _next(self) -> _Job | None:
        with self._cv:
            while not self._queue:
                if not self._running:
                    return None
                self._cv.wait()
            return self._queue.popleft()

    def _pop_nowait(self) -> _Job | None:
        with self._cv:
            return self._queue.popleft() if self._queue else None

    def _tokenize(self, job: _Job) -> bool:
        t0 = time.perf_counter()
        try:
            if self._precut is not None:
                job.items = [self._precut.item(item) for item in job.items]
            job.enc = self.predictor.encode(job.items)
        except BaseException as exc:  # noqa: BLE001 - delivered to the request
            _post(job, error=exc)
            return False
        job.tok_ms = (time.perf_counter() - t0) * 1e3
        return True

    def _work(self) -> None:
        carry: _Job | None = None  # a job taken (and tokenized) that did not fit the previous batch
        while True:
            if carry is not None:
                job, carry = carry, None
            else:
                job = self._next()
                if job is None:
                    return
                if job.future.cancelled() or not self._tokenize(job):
                    continue
            batch = [job]
            if self.batch_tokens > 0:
                rows = len(job.items)
                longest = job.enc.arrays["input_ids"].shape[1]
                while rows < self.max_rows:
                    nxt = self._pop_nowait()
                    if nxt is None:
                        break
                    if nxt.future.cancelled() or not self._tokenize(nxt):
                        continue
                    n_rows = rows + len(nxt.items)
                    n_longest = max(longest, nxt.enc.arrays["input_ids"].shape[1])
                    if n_rows > self.max_rows or n_rows * n_longest > self.batch_tokens:
                        carry = nxt
                        break
                    batch.append(nxt)
                    rows, longest = n_rows, n_longest
            try:
                self._run(batch)
            except BaseException as exc:
                log.exception("inference failed")
                for j in batch:
                    _post(j, error=exc)

    def _run(self, batch: list[_Job]) -> None:
        """Run the jobs' rows in ORT runs of at most ``max_run_tokens`` padded tokens, then post-process each job."""
        predictor = self.predictor
        t_start = time.perf_counter()
        for j in batch:
            j.inference_ms = 0.0
            j.post_ms = 0.0
            j.results = []
            j.rows = 0
            j.failed = False
        for run in self._plan(batch):
            if len(run) == 1 and run[0][1] == 0 and run[0][2] == len(run[0][0].items):
                job = run[0][0]
                pieces = [(job, job.enc)]
                enc = job.enc
            else:
                pieces = [(job, _slice(job.enc, a, b)) for job, a, b in run]
                enc = Encoded(arrays=_merge([p[1].arrays for p in pieces], self._pad_id), encodings=[], texts=[],
                              n_tokens=sum(p[1].n_tokens for p in pieces))
            t0 = time.perf_counter()
            output = predictor.run(enc)
            run_ms = (time.perf_counter() - t0) * 1e3
            rows = int(output.shape[0])
            offset = 0
            for job, sub in pieces:
                n = sub.arrays["input_ids"].shape[0]
                out = output if len(pieces) == 1 else output[offset:offset + n]
                offset += n
                width = sub.arrays["input_ids"].shape[1]
                if out.ndim == 3 and out.shape[1] != width:
                    out = out[:, :width]
                job.inference_ms += run_ms
                job.rows = max(job.rows, rows)
                if job.failed:
                    continue
                t1 = time.perf_counter()
                try:
                    job.results.extend(predictor.handler.postprocess(out, sub, job.params))
                except BaseException as exc:
                    log.exception("post-processing failed")
                    job.failed = True
                    _post(job, error=exc)
                    continue
                job.post_ms += (time.perf_counter() - t1) * 1e3
                job.done_rows += n
                if job.done_rows == len(job.items):
                    queue_ms = max(0.0, (t_start - job.enqueued) * 1e3 - job.tok_ms)
                    res = Result(job.results, job.tok_ms, queue_ms, job.inference_ms, job.post_ms,
                                 job.tok_ms + job.inference_ms + job.post_ms, job.enc.n_tokens, job.rows)
                    _post(job, res)
                    job.enc = None

    def _plan(self, batch: list[_Job]) -> list[list[tuple[_Job, int, int]]]:
        """Group the batch's rows, in order, into runs with rows × longest real length ≤ ``max_run_tokens``.

        A job that fits in one run is never split; a bigger one is split greedily.
        Each run is a list of ``(job, first_row, end_row)`` pieces.
        """
        budget = self.max_run_tokens
        runs: list[list[tuple[_Job, int, int]]] = []
        current: list[tuple[_Job, int, int]] = []
        rows = longest = 0
        for job in batch:
            job.done_rows = 0
            lengths = job.enc.arrays["attention_mask"].sum(axis=1).tolist()
            n_rows, job_longest = len(lengths), max(lengths)
            if n_rows * job_longest <= budget:
                if current and (rows + n_rows) * max(longest, job_longest) > budget:
                    runs.append(current)
                    current, rows, longest = [], 0, 0
                current.append((job, 0, n_rows))
                rows, longest = rows + n_rows, max(longest, job_longest)
                continue
            if current:
                runs.append(current)
                current, rows, longest = [], 0, 0
            start = 0
            for i, n in enumerate(lengths):
                if rows and (rows + 1) * max(longest, n) > budget:
                    runs.append([(job, start, i)])
                    start, rows, longest = i, 0, 0
                rows, longest = rows + 1, max(longest, n)
            current = [(job, start, n_rows)]
        if current:
            runs.append(current)
        return runs


def _slice(enc: Encoded, a: int, b: int) -> Encoded:
    """Rows ``a:b`` of a right-padded batch, trimmed to their longest real length."""
    width = max(1, int(enc.arrays["attention_mask"][a:b].sum(axis=1).max()))
    arrays = {k: v[a:b, :width] for k, v in enc.arrays.items()}
    return Encoded(arrays=arrays, encodings=enc.encodings[a:b], texts=enc.texts[a:b],
                   n_tokens=int(arrays["attention_mask"].sum()))


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
