"""One function call in a second Python process, for build stages that can overlap the tuner's other work.

The tuner starts an OpenVINO candidate's NNCF run here (``tuning._Tuner.build(..., ahead=True)``) while this process
computes the PyTorch reference and validates and times the candidates before it. NNCF's calibration is mostly
single-threaded Python (statistics of every quantized node per sample, ~15 s on a DistilBERT-base shape), so on a
2-core host the two overlap instead of taking turns. The child is a fresh interpreter (``sys.executable -c``), never
a fork of a process whose torch, ONNX Runtime and OpenVINO thread pools are running, and it does not import the
caller's ``__main__`` (as ``multiprocessing``'s spawn would: a script without a ``__name__`` guard would run again).
Its CPU time is the child's, so the tuner's process-CPU-time measurements never include it. POSIX only (the result
comes back on an inherited pipe).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
from typing import Any, Callable

from .errors import MultiverseError, QuantizationError

# The child reads the parent's sys.path before importing anything of Multiverse, then waits for the call on stdin.
_CHILD = ("import pickle, sys; path, preload = pickle.load(sys.stdin.buffer); sys.path[:] = path; "
          "from multiverse.background import _child; _child(int(sys.argv[1]), int(sys.argv[2]), preload)")
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a Linux process gets when its parent dies


def _end_with_parent(parent: int) -> None:
    """In the child: ignore SIGINT (a terminal's Ctrl-C reaches the whole process group; the parent ends the child)
    and, on Linux, get SIGTERM when the parent dies (kill -9 included), so no orphan keeps computing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _child(fd: int, parent: int, preload: bytes) -> None:
    """In the child (``sys.path`` already the parent's, process ``parent``): run the pickled ``preload`` (a function
    or None), then read ``(fn, args)`` pickled on stdin (nothing: cancelled), run ``fn(*args)`` and write
    ``(True, value)`` or ``(False, exception)`` pickled to file descriptor ``fd``."""
    _end_with_parent(parent)
    out: tuple[bool, Any] | None = None
    fn: Any = "preload"
    try:
        ready = pickle.loads(preload)
        if ready is not None:
            ready()
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent, which raises it there
        out = (False, exc)
    call = sys.stdin.buffer.read()
    if not call:
        return
    if out is None:
        try:
            fn, args = pickle.loads(call)
            out = (True, fn(*args))
        except Exception as exc:  # noqa: BLE001
            out = (False, exc)
    try:
        data = pickle.dumps(out)
    except Exception as exc:  # noqa: BLE001 - an exception (or value) that does not pickle
        data = pickle.dumps((False, QuantizationError(
            f"{getattr(fn, '__name__', fn)} failed in a background process: {type(out[1]).__name__}: {out[1]} ({exc})")))
    with os.fdopen(fd, "wb") as sink:
        sink.write(data)


class Background:
    """A fresh Python process, started now, that runs one call: :meth:`submit` ``fn(*args)``, then :meth:`result`
    waits for it and returns its value or raises its exception (the same type, e.g. ``QuantizationError``).
    ``preload`` (a module-level function, e.g. one that imports what ``fn`` needs) runs in the child at once, so the
    process is ready by the time the call comes. ``fn`` must be a module-level function; it, ``args`` and its value
    must pickle. :meth:`cancel` ends the process (the tuner's ``close``, on any exit)."""

    def __init__(self, preload: Callable[[], object] | None = None):
        read, write = os.pipe()
        try:
            # the child's stdout is this process's stderr: stdout carries only the command's own output (--json)
            self._process = subprocess.Popen([sys.executable, "-c", _CHILD, str(write), str(os.getpid())],
                                             stdin=subprocess.PIPE, stdout=2, pass_fds=(write,))
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        self._read, self.name = read, None  # name: the submitted function's
        self._outcome: tuple[bool, Any] | None = None
        self._write(pickle.dumps((list(sys.path), pickle.dumps(preload))), close=False)

    def _write(self, data: bytes, close: bool) -> None:
        try:
            self._process.stdin.write(data)
            self._process.stdin.flush()
            if close:
                self._process.stdin.close()
        except (BrokenPipeError, ValueError):  # the child died (result() says so) or was cancelled
            pass

    def submit(self, fn: Callable, *args: Any) -> "Background":
        """Run ``fn(*args)`` in the process (once; returns self). The arguments are written from a thread, so this
        returns at once even while the child is still preloading."""
        self.name = getattr(fn, "__name__", str(fn))
        data = pickle.dumps((fn, args))
        threading.Thread(target=self._write, args=(data, True), daemon=True, name="multiverse-background").start()
        return self

    def wait(self) -> None:
        """Wait for the call to end (nothing is raised: :meth:`result` does); nothing to wait for before :meth:`submit`."""
        try:
            if self.name is not None:
                self.result()
        except Exception:  # noqa: BLE001 - kept for result()
            pass

    def result(self) -> Any:
        """The call's value (waits for it). Raises its exception, QuantizationError when the process died, or
        RuntimeError before :meth:`submit`."""
        if self.name is None and self._outcome is None:
            raise RuntimeError("Background.result() before submit(): nothing runs")
        if self._outcome is None:
            with os.fdopen(self._read, "rb") as source:
                data = source.read()
            code = self._process.wait()
            self._outcome = pickle.loads(data) if data else (False, QuantizationError(
                f"the background process running {self.name} exited with code {code} before returning (out of "
                "memory?); rerun, or use --runtime onnxruntime."))
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def cancel(self) -> None:
        """End the process if it still runs (its work is dropped)."""
        if self._outcome is None and self._process.poll() is None:
            self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._outcome is None:
            os.close(self._read)
            self._outcome = (False, QuantizationError(f"the background process ({self.name or 'idle'}) was cancelled"))


class Done:
    """``fn(*args)`` run now in this process, with :class:`Background`'s interface: :meth:`result` returns its value or
    raises the ``MultiverseError`` it raised (other exceptions propagate at once)."""

    def __init__(self, fn: Callable, *args: Any):
        try:
            self._outcome: tuple[bool, Any] = (True, fn(*args))
        except MultiverseError as exc:
            self._outcome = (False, exc)

    def result(self) -> Any:
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def wait(self) -> None:
        """Nothing to wait for."""

    def cancel(self) -> None:
        """Nothing to end."""
