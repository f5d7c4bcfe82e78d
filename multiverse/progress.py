"""Progress reporting the library emits and the CLI renders on stderr.

Two renderers: :class:`RichProgress` (a terminal: rich spinner while a stage runs, one line when it
ends) and :class:`PlainProgress` (no terminal, e.g. a CI log: one unwrapped line per event, each
prefixed with the elapsed time, and a heartbeat line while a long stage runs). :func:`for_console`
picks one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Iterator, TextIO

HEARTBEAT_ENV = "MULTIVERSE_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 20.0


class Progress:
    """Silent by default; subclass to render. ``stage`` times a pipeline stage.

    Events: ``begin``/``end`` of a stage (``ok=False`` renders as a failed stage), ``warn``, ``info``
    (one logged line each) and ``activity`` (what the running stage is doing right now: shown by the
    spinner or the heartbeat, not logged as an event of its own).
    """

    def begin(self, stage: str, description: str) -> None: ...

    def end(self, stage: str, summary: str, seconds: float, ok: bool = True) -> None: ...

    def warn(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...

    def activity(self, message: str) -> None: ...

    @contextlib.contextmanager
    def stage(self, stage: str, description: str) -> Iterator[dict]:
        """Context manager: ``with progress.stage("export", "Exporting") as s: s["summary"] = "..."``.

        Set ``s["ok"] = False`` for a stage that finished but failed (e.g. no candidate passed the gate):
        it then ends marked as failed. An exception ends it as failed too, and propagates.
        """
        self.begin(stage, description)
        state = {"summary": "", "ok": True}
        t0 = time.perf_counter()
        try:
            yield state
        except BaseException as exc:
            self.end(stage, _failure_summary(exc), time.perf_counter() - t0, ok=False)
            raise
        self.end(stage, state["summary"], time.perf_counter() - t0, ok=bool(state.get("ok", True)))


def _failure_summary(exc: BaseException) -> str:
    from .errors import Interrupted

    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        return "interrupted"
    return f"failed ({type(exc).__name__})"


class RichProgress(Progress):
    """For a terminal: a rich spinner while a stage runs, then one ✓/✗ line with its time (stderr)."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._status = None
        self._stage = ""

    def begin(self, stage: str, description: str) -> None:
        self._stage = stage
        self._status = self.console.status(f"[bold]{description}…")
        self._status.start()

    def activity(self, message: str) -> None:
        if self._status is not None:
            self._status.update(f"[bold]{self._stage}:[/bold] {message}…")

    def end(self, stage: str, summary: str, seconds: float, ok: bool = True) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        self.console.print(f"{mark} [bold]{stage:<9}[/bold] {summary} [dim]({seconds:.1f} s)[/dim]", highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    def info(self, message: str) -> None:
        self.console.print(f"  {message}", highlight=False)


def heartbeat_seconds() -> float:
    """Heartbeat interval (s) of :class:`PlainProgress`: ``$MULTIVERSE_HEARTBEAT_S``, else 20 s.

    Raises ValueError (from the CLI, a UsageError) when the variable is not a positive number."""
    raw = os.environ.get(HEARTBEAT_ENV)
    if raw is None or raw == "":
        return DEFAULT_HEARTBEAT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{HEARTBEAT_ENV}={raw!r} must be a positive number of seconds; unset it for the default "
                         f"({DEFAULT_HEARTBEAT_S:g} s).")
    return value


class PlainProgress(Progress):
    """For logs without a terminal (CI): one line per event, never wrapped, with the elapsed time.

    Every line starts with ``[ELAPSED s]`` (seconds since this object was made, ``time.monotonic``).
    A stage logs a start line and an end line (``✓ stage done: summary (s)`` or ``✗ stage failed: ...``).
    While a stage runs and nothing else was logged for ``heartbeat_s`` seconds, a heartbeat line names
    the stage, how long it has run and what it is doing (the last :meth:`activity`, else its description),
    so a log never goes quiet for longer than ``heartbeat_s`` (default ``$MULTIVERSE_HEARTBEAT_S`` or 20 s).
    """

    def __init__(self, stream: TextIO | None = None, heartbeat_s: float | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.heartbeat_s = heartbeat_seconds() if heartbeat_s is None else float(heartbeat_s)
        self._t0 = time.monotonic()
        self._last_line = self._t0
        self._lock = threading.Lock()
        self._stage: tuple[str, str, float] | None = None  # name, description, start (monotonic)
        self._doing = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, text: str) -> None:
        with self._lock:
            now = time.monotonic()
            self._last_line = now
            line = f"[{now - self._t0:7.1f}s] {text}".replace("\r", " ").replace("\n", " ")
            try:
                try:
                    self.stream.write(line + "\n")
                except UnicodeEncodeError:  # an ASCII-only log: ✓/✗ become ?
                    enc = getattr(self.stream, "encoding", None) or "ascii"
                    self.stream.write(line.encode(enc, "replace").decode(enc) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # closed or broken log pipe: progress must not kill the run
                pass

    def begin(self, stage: str, description: str) -> None:
        self._stage, self._doing = (stage, description, time.monotonic()), ""
        self._write(f"· {stage:<9} start: {description}")
        if self.heartbeat_s > 0 and (self._thread is None or not self._thread.is_alive()):
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="multiverse-heartbeat", daemon=True)
            self._thread.start()

    def end(self, stage: str, summary: str, seconds: float, ok: bool = True) -> None:
        self._stage = None
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        word = "done" if ok else "failed"
        if not ok and summary.startswith(("failed", "interrupted")):
            text = summary
        else:
            text = f"{word}: {summary}" if summary else word
        self._write(f"{'✓' if ok else '✗'} {stage:<9} {text} ({seconds:.1f} s)")

    def warn(self, message: str) -> None:
        self._write(f"warning: {message}")

    def info(self, message: str) -> None:
        self._write(f"  {message}")

    def activity(self, message: str) -> None:
        self._doing = message

    def _beat(self) -> None:
        tick = min(1.0, self.heartbeat_s / 4)
        while not self._stop.wait(tick):
            current = self._stage
            if current is None:
                return
            now = time.monotonic()
            if now - self._last_line >= self.heartbeat_s:
                name, description, started = current
                self._write(f"· {name:<9} still running ({now - started:.0f} s): {self._doing or description}")


def for_console(console=None) -> Progress:
    """:class:`RichProgress` when ``console`` (default: a rich stderr console) is a terminal, else
    :class:`PlainProgress` on ``console.file``. Raises ValueError for a bad ``$MULTIVERSE_HEARTBEAT_S``."""
    from rich.console import Console

    console = console or Console(stderr=True)
    if console.is_terminal:
        return RichProgress(console)
    return PlainProgress(console.file)
