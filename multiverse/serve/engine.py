"""The inference engine behind the HTTP routes: one shared session, a bounded queue, one worker thread.

The event loop never tokenizes or runs the model: a route validates its inputs, calls
:meth:`Engine.submit` (which answers :class:`Overloaded` at once when the queue is full) and
awaits an ``asyncio.Future`` that the worker resolves with ``loop.call_soon_threadsafe``.

The worker takes the oldest request, tokenizes it, and, when batching is on
(``batch_tokens > 0``), also takes the requests already waiting while the merged batch
stays within the padded-token budget (``rows × longest sequence``). It does not wait for
more requests to arrive: under light load every request runs alone at full speed, under
heavy load batches form by themselves. Each request is post-processed on its own rows
with its own parameters, so its result equals ``Predictor.predict`` on the same inputs
(bit for bit without batching; to float rounding with batching).

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
        inference_ms: the ONNX Runtime run this request was part of.
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
    __slots__ = ("items", "params", "future", "loop", "enqueued", "enc", "tok_ms")

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


class Engine:
    """Bounded queue + one worker thread around a :class:`multiverse.inference.Predictor`.

    Args:
        predictor: a loaded predictor (its session is shared; only the worker calls it).
        max_queue: requests that may wait; :meth:`submit` raises :class:`Overloaded` beyond.
        batch_tokens: padded-token budget per merged run; 0 disables cross-request batching.
        max_rows: most rows in one merged run.
    """

    def __init__(self, predictor, *, max_queue: int = 128, batch_tokens: int = 0, max_rows: int = 256):
        self.predictor = predictor
        self.max_queue = int(max_queue)
        self.batch_tokens = int(batch_tokens)
        self.max_rows = int(max_rows)
        self._queue: deque[_Job] = deque()
        self._cv = threading.Condition(threading.Lock())
        self._running = True  # accepting requests; they wait in the queue until start()
        self._thread: threading.Thread | None = None
        self._pad_id = int(getattr(getattr(predictor, "tokenizer", None), "pad_id", 0) or 0)

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
            job.enc = self.predictor.encode(job.items)
        except BaseException as exc:  # noqa: BLE001 - delivered to the request
            job.loop.call_soon_threadsafe(_deliver, job.future, None, exc)
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
            except BaseException as exc:  # noqa: BLE001 - the worker must survive anything
                log.exception("inference failed")
                for j in batch:
                    j.loop.call_soon_threadsafe(_deliver, j.future, None, exc)

    def _run(self, batch: list[_Job]) -> None:
        predictor = self.predictor
        if len(batch) == 1:
            enc = batch[0].enc
        else:
            enc = Encoded(arrays=_merge([j.enc.arrays for j in batch], self._pad_id), encodings=[], texts=[],
                          n_tokens=sum(j.enc.n_tokens for j in batch))
        t_run = time.perf_counter()
        output = predictor.run(enc)
        t_done = time.perf_counter()
        inference_ms = (t_done - t_run) * 1e3
        rows = int(output.shape[0])
        postprocess = predictor.handler.postprocess
        start = 0
        for j in batch:
            n = len(j.items)
            out = output if len(batch) == 1 else output[start:start + n]
            start += n
            if out.ndim == 3 and out.shape[1] != j.enc.arrays["input_ids"].shape[1]:
                out = out[:, : j.enc.arrays["input_ids"].shape[1]]
            t0 = time.perf_counter()
            try:
                results = postprocess(out, j.enc, j.params)
            except BaseException as exc:  # noqa: BLE001
                log.exception("post-processing failed")
                j.loop.call_soon_threadsafe(_deliver, j.future, None, exc)
                continue
            post_ms = (time.perf_counter() - t0) * 1e3
            queue_ms = max(0.0, (t_run - j.enqueued) * 1e3 - j.tok_ms)
            res = Result(results, j.tok_ms, queue_ms, inference_ms, post_ms, j.tok_ms + inference_ms + post_ms,
                         j.enc.n_tokens, rows)
            j.enc = None
            j.loop.call_soon_threadsafe(_deliver, j.future, res, None)


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
