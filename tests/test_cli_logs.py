"""CI logs (issue 14, item 9): without a TTY, one unwrapped timestamped line per event, heartbeats during
long stages, `rejected` (never `FAIL`) for candidates, ✗ on a failed stage; plain flags in `--help`.

The subprocess tests run ``multiverse optimize`` exactly as CI does: stdout and stderr are pipes, not a TTY.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from multiverse.cli import app
from multiverse.progress import PlainProgress, Progress, RichProgress, for_console, heartbeat_seconds

LINE = re.compile(r"^\[\s*\d+\.\d+s\] ")


def test_plain_progress_heartbeat_names_stage_and_activity():
    out = io.StringIO()
    p = PlainProgress(out, heartbeat_s=0.2)
    with p.stage("tune", "Quantizing and validating") as s:
        p.activity("validating s8 per-channel on 270 examples")
        time.sleep(0.9)
        s["summary"] = "chose s8"
    lines = out.getvalue().splitlines()
    beats = [line for line in lines if "still running" in line]
    assert len(beats) >= 2, lines
    assert all("tune" in b and "validating s8 per-channel on 270 examples" in b for b in beats)
    assert all(LINE.match(line) for line in lines)
    assert "✓ tune" in lines[-1] and "done: chose s8" in lines[-1]
    n = len(lines)
    time.sleep(0.5)  # no heartbeat once the stage has ended
    assert len(out.getvalue().splitlines()) == n


def test_plain_progress_failed_stage_and_long_lines():
    out = io.StringIO()
    p = PlainProgress(out, heartbeat_s=30)
    with p.stage("tune", "Quantizing") as s:
        s["summary"] = "no candidate passed; best s8: accuracy 0.5"
        s["ok"] = False
    with pytest.raises(ValueError):
        with p.stage("bundle", "Writing"):
            raise ValueError("disk full")
    p.info("x" * 300 + " end")
    p.warn("multi\nline")
    lines = out.getvalue().splitlines()
    assert "✗ tune      failed: no candidate passed" in lines[1] and "✓" not in lines[1]
    assert "✗ bundle    failed (ValueError)" in lines[3]
    assert lines[4].endswith("x end") and len(lines) == 6  # never wrapped, newlines flattened


def test_stage_ok_flag_reaches_every_renderer():
    seen = []

    class Record(Progress):
        def end(self, stage, summary, seconds, ok=True):
            seen.append((stage, ok))

    p = Record()
    with p.stage("a", "A"):
        pass
    with p.stage("b", "B") as s:
        s["ok"] = False
    assert seen == [("a", True), ("b", False)]


def test_terminal_keeps_the_spinner_and_marks_failures():
    from rich.console import Console

    buf = io.StringIO()
    p = for_console(Console(file=buf, force_terminal=True, width=100))
    assert isinstance(p, RichProgress)
    with p.stage("tune", "Quantizing") as s:
        p.activity("validating s8 per-channel")
        s["summary"], s["ok"] = "no candidate passed", False
    out = buf.getvalue()
    assert "✗" in out and "no candidate passed" in out and "✓" not in out
    assert isinstance(for_console(Console(file=io.StringIO(), force_terminal=False)), PlainProgress)


def test_benchmark_progress_lines_are_not_wrapped_in_logs():
    from rich.console import Console

    from multiverse.benchmark.report import RichBenchProgress

    buf = io.StringIO()
    p = RichBenchProgress(Console(file=buf, force_terminal=False, width=80))
    p.log("building the optimum-onnx baseline " + "with a long explanation " * 8 + "end")
    p.start(2)
    p.advance("multiverse 2c seq 512 batch 32 " + "x" * 100)
    p.stop()
    lines = buf.getvalue().splitlines()
    assert any(line.endswith("explanation end") and "building" in line for line in lines), lines
    assert any("[1/2] multiverse 2c seq 512" in line and line.endswith("x" * 100) for line in lines), lines


def test_heartbeat_interval_from_env(monkeypatch):
    monkeypatch.setenv("MULTIVERSE_HEARTBEAT_S", "1.5")
    assert heartbeat_seconds() == 1.5
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv("MULTIVERSE_HEARTBEAT_S", bad)
        with pytest.raises(ValueError, match="MULTIVERSE_HEARTBEAT_S"):
            heartbeat_seconds()
    r = CliRunner().invoke(app, ["optimize", "--out", "nowhere"])
    assert r.exit_code == 2 and "MULTIVERSE_HEARTBEAT_S" in r.output


@pytest.mark.parametrize("command", ["optimize", "inspect", "validate", "targets", "benchmark", "serve"])
def test_help_shows_flags_as_plain_flags(command):
    r = CliRunner().invoke(app, [command, "--help"])
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.output
    if command != "serve":
        assert re.search(r"^\s+--json\s+\S", r.output, re.M), r.output


def test_flag_given_a_value_is_a_usage_error(tmp_path):
    r = CliRunner().invoke(app, ["targets", "--json", "true"])
    assert r.exit_code == 2 and "true" in r.output


# ---- the real command with pipes (how CI sees it) -------------------------------------------------


def _optimize(*args, tmp_path, heartbeat="1"):
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MULTIVERSE_HEARTBEAT_S": heartbeat, "COLUMNS": "80"}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "multiverse.cli", "optimize", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=900)


def _check_plain(stderr: str) -> list[str]:
    """Every stderr line is a timestamped event or one `error:` line: nothing was wrapped or spun."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    bad = [line for line in lines if not LINE.match(line) and not line.startswith("error: ")]
    assert not bad, "unprefixed (wrapped?) lines:\n" + "\n".join(bad)
    assert "\r" not in stderr and "\x1b[" not in stderr  # no spinner redraws, no colour codes
    assert "FAIL" not in stderr
    return lines


def test_failed_gate_log(tiny_checkpoints, tmp_path):
    proc = _optimize(tiny_checkpoints["feature-extraction"], "--tolerance", "0", "--max-trials", "1",
                     "--eval-limit", "60", "--out", tmp_path / "out", tmp_path=tmp_path)
    assert proc.returncode == 3, proc.stderr
    lines = _check_plain(proc.stderr)
    tune = [line for line in lines if " tune " in line and ("✓" in line or "✗" in line)]
    assert len(tune) == 1 and "✗ tune" in tune[0] and "no candidate passed" in tune[0], tune
    assert "rejected" in proc.stderr
    assert any("still running" in line for line in lines)  # heartbeat (1 s here) during the long stages
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Accuracy gate failed" in errors[0] and "Raise --tolerance" in errors[0]
    assert len(errors[0]) > 80  # long, and still one line
    assert list((tmp_path / "tmp").glob("multiverse-*")) == []


def test_passing_run_log(tiny_checkpoints, tmp_path):
    proc = _optimize(tiny_checkpoints["text-classification"], "--max-trials", "1", "--eval-limit", "60",
                     "--out", tmp_path / "out", tmp_path=tmp_path, heartbeat="20")
    assert proc.returncode == 0, proc.stderr
    lines = _check_plain(proc.stderr)
    assert "✗" not in proc.stderr
    for stage in ("resolve", "export", "fuse", "tune", "bundle"):
        assert sum(f"✓ {stage}" in line for line in lines) == 1, stage
    assert max(len(line) for line in lines) > 80  # long lines exist and were not wrapped
    assert proc.stdout.count("\n") == 1 and Path(proc.stdout.strip()).is_dir()  # stdout: the bundle path only
