"""Work of ``optimize`` done in a worker process while the main one does other work (build time only).

Much of a build runs on one core: optimum's export traces the model in Python, ONNX Runtime's transformer optimizer
fuses in Python, ``quantize_dynamic`` quantizes weights channel by channel in Python (3.9 s for a DistilBERT-base
shape, 41,476 calls of ``quantize_data``), and NNCF's graph passes and statistics aggregation are Python too. On 2
cores the other one idles meanwhile. A worker process (not a thread: these are GIL-bound) computes the PyTorch
reference on the eval data while export and fusion run (:func:`start_reference`), then builds phase 1's first ONNX
Runtime candidate while NNCF calibrates the OpenVINO one (:func:`start_quantize`).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from contextlib import contextmanager
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Self

#: Models at least this large (bytes: the fp32 graph, the checkpoint's weights) use the worker. Below it the worker's
#: start costs more than it saves: a fresh interpreter importing torch, transformers and multiverse.validate took
#: 5.4-5.5 CPU seconds (user + system, two runs, load 3).
BACKGROUND_BYTES = 20 * 2**20
#: The worker runs this much nicer than the build (Linux CFS: weight 110 against 1024, about 1:9), so that it takes
#: a core the build leaves idle rather than one the build's 2-thread phases (PyTorch, ONNX Runtime) wait for.
WORKER_NICENESS = 10
REFERENCE = "pytorch-reference"  # the key of :func:`start_reference`'s result


class BackgroundBuilds:
    """At most one worker process (``spawn``: the tuner's process has torch, ONNX Runtime and OpenVINO thread pools
    running, which a forked child must not inherit), started at the first :meth:`submit`; a context manager that
    ends it. ``spawn`` imports the main module in the worker, so a script that calls ``optimize`` needs the usual
    ``if __name__ == "__main__":`` guard; without it ``pipeline.optimize`` refuses to run in the worker (it
    raises UsageError while multiprocessing imports the script), the worker dies, and the build does its work itself."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[str, Future] = {}
        self.broken = False  # the worker died: later submits run nothing, and take() returns None

    def submit(self, key: str, fn: Callable, *args) -> None:
        """Start ``fn(*args)`` in the worker (``fn`` and ``args`` must pickle), for :meth:`take` ``key``. Starts nothing
        once the worker died (``BrokenProcessPool``, here or at a :meth:`take`)."""
        if self.broken:
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker)
        try:
            with _sigint_blocked():  # the first submit starts the worker, which inherits the mask
                self._futures[key] = self._pool.submit(fn, *args)
        except BrokenProcessPool:  # it died while nothing was taken from it: the caller builds this itself
            self.broken = True

    def take(self, key: str):
        """The result of the build submitted as ``key`` (waits for it), or None when none was, or when the worker
        died (``BrokenProcessPool``: killed for memory, say); then the caller builds it itself. An error ``fn``
        raised is raised here, as if called directly."""
        future = self._futures.pop(key, None)
        if future is None:
            return None
        try:
            return future.result()
        except BrokenProcessPool:  # no new worker: what killed this one (memory, a script without a main guard) stays
            self.broken = True
            return None

    def close(self) -> None:
        """End the worker at once (``SIGTERM``): a build not taken by now is not wanted, and an idle worker's own exit
        (torch and transformers imported) took 0.73 s of the build's wall time, terminated 0.02 s."""
        if self._pool is None:
            return
        workers = getattr(self._pool, "_processes", None) or {}  # Python 3.11-3.13 have no terminate_workers()
        for process in list(workers.values()):
            process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool, self._futures = None, {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def _sigint_blocked():
    """SIGINT blocked in the calling thread meanwhile (``pthread_sigmask``; a no-op where there is none). A process
    started meanwhile inherits the mask through fork and exec, so Ctrl-C cannot interrupt the worker while it starts and
    imports the build's main module, before :func:`_init_worker` ignores SIGINT; the build's own Ctrl-C stays pending
    here and is delivered when the block ends."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def in_worker_start() -> bool:
    """True while multiprocessing imports the main module in a new worker (``spawn``), as
    ``multiprocessing.spawn._check_not_importing_main`` tells it: a script without a main guard is running again."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def _init_worker() -> None:
    """The worker's niceness: ``WORKER_NICENESS`` above the build's, where the OS has ``os.nice``. It ignores SIGINT
    (blocked until here, :func:`_sigint_blocked`): Ctrl-C reaches the terminal's whole process group, and the build,
    unwinding, ends the worker (:meth:`close`); a KeyboardInterrupt in the worker came back as a build's error, or
    printed its traceback into the build's output.
    It ends itself when the build's process ends without ending it (``kill -9``, the OOM killer): it holds both
    ends of its queues, so it never reads EOF there, and stayed blocked for good (idle, or writing a result).
    """
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked since the start (_sigint_blocked): a pending Ctrl-C is dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if hasattr(os, "nice"):
        os.nice(WORKER_NICENESS)
    parent = multiprocessing.parent_process()  # its sentinel becomes ready when the build's process ends
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(sentinel) -> None:
    """Wait until ``sentinel`` (a process's) is ready, then end this process at once."""
    from multiprocessing.connection import wait

    wait([sentinel])
    os._exit(1)


def start_reference(background: BackgroundBuilds, ckpt, data, workdir) -> bool:
    """Start ``validate.reference_outputs`` of ``ckpt`` on ``data`` (an ``EvalSet`` as the tuner validates on it,
    ``validate.by_length``) in the worker, on one intra-op thread, for ``_Tuner`` to take (key :data:`REFERENCE`).
    Only for a checkpoint with its own ``tokenizer.json`` and ``tokenizer_config.json`` (the export writes them when
    missing, and the reference must tokenize as the bundle) and at least ``BACKGROUND_BYTES`` of weights. The worker
    reads the tokenizer, config and sentence-transformers module files the export copies (``copy_model_files``
    into ``workdir/reference-files``: a Dense module's ``pytorch_model.bin`` converted to ``model.safetensors``), so
    the bundle tokenizes and pools as the reference does. Returns whether it started."""
    from pathlib import Path

    from .bundle_writer import copy_model_files
    from .validate import reference_outputs

    folder = Path(ckpt.path)
    weights = sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin"))
    own = all((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))  # else optimum writes them
    if not own or weights < BACKGROUND_BYTES:
        return False
    (files := Path(workdir) / "reference-files").mkdir(parents=True, exist_ok=True)
    copy_model_files(folder, files)
    background.submit(REFERENCE, reference_outputs, ckpt, data, files, 1)
    return True


def start_quantize(background: BackgroundBuilds, fused, workdir, config) -> None:
    """Start ``quantize.quantize`` of ``fused`` (an ``OnnxModel`` of at least ``BACKGROUND_BYTES``) with ``config``
    (a ``QuantConfig`` without smoothing) into ``workdir/q-early`` in the worker, for ``_Tuner.build`` to take (key:
    ``config.model_dump_json()``)."""
    from pathlib import Path

    from .quantize import quantize

    if config.smooth_alpha is None and fused.size_bytes >= BACKGROUND_BYTES:
        background.submit(config.model_dump_json(), quantize, fused, Path(workdir) / "q-early", config)
