"""Temporary work folders that never outlive their run, and signal handling that lets them be removed.

``optimize`` writes 90-180 MB of intermediate graphs into a work folder under the temp root
(``tempfile.gettempdir()``: ``$TMPDIR``, else ``/tmp``). Three ways it could leak, and what removes it:

- an exception: the ``finally`` of :func:`work_folder`;
- SIGTERM / SIGINT: :func:`unwind_on_signals` turns the signal into :class:`~multiverse.errors.Interrupted`,
  which unwinds through that ``finally``;
- ``kill -9``, OOM kill or power loss: nothing can run then, so the next ``optimize`` removes folders
  whose owner is gone (:func:`remove_stale`, called when it starts and again by :func:`work_folder`).

Ownership is an ``flock`` held on ``<folder>/.owner.lock`` for the whole run. The kernel drops the lock
when the owning process dies however it dies (the lock belongs to the open file, which exec'd children do
not inherit, and a recycled PID cannot take it over), so "the lock can be taken" means "the owner is dead". The owner's PID is also in the folder name (``multiverse-<pid>-…``),
which only covers the instant between creating the folder and locking it: such a folder without a lock
file is left alone while that PID is alive. Folders of other programs or of older versions (no PID in
the name) are never touched. Without ``fcntl`` (Windows) stale folders are not swept.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from .errors import Interrupted

PREFIX = "multiverse-"
LOCK_NAME = ".owner.lock"
_NAME = re.compile(re.escape(PREFIX) + r"(\d+)-[A-Za-z0-9_]+$")

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _lock_free(lock: Path) -> bool:
    """True when nobody holds the flock on ``lock`` (its owner is dead). Takes and drops the lock."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def remove_stale(root: str | Path | None = None) -> list[Path]:
    """Remove ``multiverse-<pid>-*`` work folders in ``root`` (default: the temp root) whose owner is dead.

    A folder is stale when its lock file's ``flock`` can be taken, or, with no lock file, when the PID in
    its name is not alive. Live runs' folders (lock held) are kept, whatever their PID says.
    Returns the removed folders. Never raises for I/O problems (another sweeper may race us).
    """
    if fcntl is None:  # pragma: no cover
        return []
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for path in entries:
        m = _NAME.match(path.name)
        if m is None:
            continue
        try:
            if not path.is_dir() or path.is_symlink():
                continue
            lock = path / LOCK_NAME
            stale = _lock_free(lock) if lock.exists() else not _pid_alive(int(m.group(1)))
        except OSError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    return removed


@contextlib.contextmanager
def work_folder(root: str | Path | None = None) -> Iterator[Path]:
    """A fresh ``<root>/multiverse-<pid>-XXXX`` folder, removed on exit (also on exceptions and
    :class:`~multiverse.errors.Interrupted`). ``root`` defaults to ``tempfile.gettempdir()`` (``$TMPDIR``).

    Before creating it, removes stale folders of dead runs (:func:`remove_stale`). The folder is locked
    (``flock`` on ``.owner.lock``) while in use so that other runs leave it alone.
    Raises OSError when the temp root is not writable.
    """
    root = Path(root or tempfile.gettempdir())
    remove_stale(root)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root))
    fd = None
    try:
        if fcntl is not None:
            fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def unwind_on_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """While active, SIGTERM and SIGINT raise :class:`~multiverse.errors.Interrupted` in the main thread,
    so ``finally`` blocks run (work folders are removed) before the process exits; the caller maps it to
    exit code ``Interrupted.exit_code`` (143 SIGTERM, 130 SIGINT). Previous handlers are restored on exit.

    Python runs signal handlers between bytecodes of the main thread: a signal that arrives inside a
    long native call (one ONNX Runtime run, a torch export step) takes effect when that call returns.
    Outside the main thread this does nothing (signal handlers can only be set there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, _raise) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
