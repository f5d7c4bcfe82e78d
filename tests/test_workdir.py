"""Work folders never outlive their run: removed on SIGTERM/SIGINT, swept after kill -9 (issue 14, item 8).

The subprocess tests run the real ``multiverse optimize`` with ``TMPDIR`` pointing at a test folder, so they
never look at (or sweep) the real temp root that other processes use.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from multiverse import workdir


def _dead_pid() -> int:
    """A PID that certainly belonged to a process that has exited (reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_remove_stale_keeps_live_and_foreign_folders(tmp_path):
    dead = tmp_path / f"multiverse-{_dead_pid()}-dead1"          # no lock file, owner PID dead: stale
    dead.mkdir()
    (dead / "model.onnx").write_bytes(b"x" * 1000)
    starting = tmp_path / f"multiverse-{os.getpid()}-start1"    # no lock yet, owner alive: being created
    starting.mkdir()
    reused = tmp_path / f"multiverse-{os.getpid()}-reuse1"      # lock free although the PID is alive (PID reuse)
    reused.mkdir()
    (reused / workdir.LOCK_NAME).touch()
    live = tmp_path / f"multiverse-{_dead_pid()}-live1"          # lock held: a live run, whatever its name says
    live.mkdir()
    fd = os.open(live / workdir.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    old_style = tmp_path / "multiverse-abc123"                  # no PID in the name (older version): never touched
    old_style.mkdir()
    other = tmp_path / "something-else-1"
    other.mkdir()
    try:
        removed = workdir.remove_stale(tmp_path)
    finally:
        os.close(fd)
    assert sorted(removed) == sorted([dead, reused])
    assert not dead.exists() and not reused.exists()
    assert starting.is_dir() and live.is_dir() and old_style.is_dir() and other.is_dir()


def test_work_folder_is_locked_while_used_and_removed_after(tmp_path):
    with pytest.raises(RuntimeError):
        with workdir.work_folder(tmp_path) as path:
            assert path.parent == tmp_path and path.name.startswith(f"multiverse-{os.getpid()}-")
            (path / "big.onnx").write_bytes(b"x" * 1000)
            # another sweeper (even in this process) sees the lock held and keeps the folder
            assert workdir.remove_stale(tmp_path) == [] and path.is_dir()
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_work_folder_defaults_to_tmpdir(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what $TMPDIR sets at first use
    with workdir.work_folder() as path:
        assert path.parent == tmp_path


UNWIND = """
import os, signal, time
from multiverse import workdir
from multiverse.errors import Interrupted
before = signal.getsignal(signal.SIGTERM)
try:
    with workdir.unwind_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
except Interrupted as exc:
    print(exc.exit_code, "SIGTERM" in str(exc), signal.getsignal(signal.SIGTERM) is before)
"""


def test_unwind_on_signals_raises_interrupted_and_restores_handlers():
    # in a fresh interpreter: the pytest process has native threads and handlers left by earlier tests, and a
    # SIGTERM to it crashed it twice in CI (segfault without a faulthandler dump; not reproduced in a smaller run)
    proc = subprocess.run([sys.executable, "-c", UNWIND], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["143", "True", "True"], proc.stdout + proc.stderr


# ---- the real command in a subprocess -------------------------------------------------------------


def _env(tmpdir: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmpdir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _start_optimize(checkpoint: Path, tmpdir: Path, out: Path, logs: Path) -> tuple[subprocess.Popen, Path]:
    """Start ``multiverse optimize`` and wait until its work folder holds the export's output folder."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "multiverse.cli", "optimize", str(checkpoint), "--out", str(out)],
                            env=_env(tmpdir), stdout=open(logs / "stdout", "w"), stderr=open(logs / "stderr", "w"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        found = [p for p in tmpdir.glob(f"multiverse-{proc.pid}-*") if (p / "fp32").exists()]
        if found:
            return proc, found[0]
        assert proc.poll() is None, (logs / "stderr").read_text()
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("optimize did not start exporting within 180 s")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_optimize_leaves_no_work_folder(signum, code, tiny_checkpoints, tmp_path):
    proc, work = _start_optimize(tiny_checkpoints["feature-extraction"], tmp_path / "tmp", tmp_path / "out", tmp_path)
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == code, (tmp_path / "stderr").read_text()
    err = (tmp_path / "stderr").read_text()
    assert f"interrupted by {signal.Signals(signum).name}" in err and "✗" in err
    assert not work.exists() and list((tmp_path / "tmp").glob("multiverse-*")) == []
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_folder_left_by_kill9_is_removed_by_the_next_run(tiny_checkpoints, tmp_path):
    tmpdir = tmp_path / "tmp"
    proc, leftover = _start_optimize(tiny_checkpoints["feature-extraction"], tmpdir, tmp_path / "out", tmp_path)
    proc.kill()  # SIGKILL: nothing runs, the folder stays behind
    proc.wait(timeout=60)
    assert leftover.is_dir()
    # a live run's folder (lock held by another process) must survive the sweep
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from multiverse import workdir\n"
                               "with workdir.work_folder() as p:\n print(p, flush=True); time.sleep(600)"],
                              env=_env(tmpdir), stdout=subprocess.PIPE, text=True)
    try:
        live = Path(holder.stdout.readline().strip())
        assert live.is_dir()
        # the next start of optimize sweeps first thing, even one that then stops on a bad option
        run = subprocess.run([sys.executable, "-m", "multiverse.cli", "optimize", str(tiny_checkpoints["text-classification"]),
                              "--out", str(tmp_path / "out2"), "--tolerance", "5"],
                             env=_env(tmpdir), capture_output=True, text=True, timeout=600)
        assert run.returncode == 2 and "--tolerance 5" in run.stderr, run.stderr
        assert not leftover.exists(), "the kill -9 leftover was not swept"
        assert live.is_dir(), "a live run's work folder was removed"
        assert [p for p in tmpdir.glob("multiverse-*")] == [live]
    finally:
        holder.kill()
        holder.wait()
