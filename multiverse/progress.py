"""Progress reporting the library emits and the CLI renders (rich, on stderr)."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


class Progress:
    """Silent by default; subclass to render. ``stage`` times a pipeline stage."""

    def begin(self, stage: str, description: str) -> None: ...

    def end(self, stage: str, summary: str, seconds: float, ok: bool = True) -> None: ...

    def warn(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...

    @contextlib.contextmanager
    def stage(self, stage: str, description: str) -> Iterator[dict]:
        """Context manager: ``with progress.stage("export", "Exporting") as s: s["summary"] = "..."``."""
        self.begin(stage, description)
        state = {"summary": ""}
        t0 = time.perf_counter()
        try:
            yield state
        except BaseException:
            self.end(stage, "failed", time.perf_counter() - t0, ok=False)
            raise
        self.end(stage, state["summary"], time.perf_counter() - t0)


class RichProgress(Progress):
    """Stage lines with timings on a rich console (stderr)."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._status = None

    def begin(self, stage: str, description: str) -> None:
        self._status = self.console.status(f"[bold]{description}…")
        self._status.start()

    def end(self, stage: str, summary: str, seconds: float, ok: bool = True) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        self.console.print(f"{mark} [bold]{stage:<9}[/bold] {summary} [dim]({seconds:.1f} s)[/dim]", highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {message}")

    def info(self, message: str) -> None:
        self.console.print(f"  {message}", highlight=False)
