"""A call in a second Python process (``multiverse.background``): value, errors, death, cancel, and no re-run of the
caller's script."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from multiverse.background import Background, Done
from multiverse.errors import EvalDataError, QuantizationError
from multiverse.evaldata import load


def _loaded(module: str) -> bool:
    return module in sys.modules


def _preload() -> None:
    import json.tool  # noqa: F401


def test_the_value_comes_from_another_process():
    job = Background().submit(os.getpid)
    assert job.result() not in (os.getpid(), None)
    assert job.result() == job.result()  # kept once received


def test_preload_runs_in_the_child_before_the_call():
    assert Background(preload=_preload).submit(_loaded, "json.tool").result() is True
    assert Background().submit(_loaded, "json.tool").result() is False


def test_its_exception_is_raised_here_with_its_type():
    with pytest.raises(EvalDataError, match="does not exist"):
        Background().submit(load, "/nonexistent/eval.jsonl", "text-classification").result()
    with pytest.raises(ValueError):
        Background().submit(int, "not a number").result()


def test_a_process_that_dies_is_a_quantization_error_naming_its_exit_code():
    with pytest.raises(QuantizationError, match="exited with code 3"):
        Background().submit(os._exit, 3).result()


def test_cancel_ends_a_process_that_waits_or_runs():
    idle = Background()
    idle.cancel()
    assert idle._process.poll() is not None
    job = Background().submit(time.sleep, 60)
    t = time.perf_counter()
    job.cancel()
    assert time.perf_counter() - t < 10 and job._process.poll() is not None
    with pytest.raises(QuantizationError, match="cancelled"):
        job.result()


def test_done_runs_now_and_keeps_a_multiverse_error_for_result():
    assert Done(int, "7").result() == 7
    job = Done(load, "/nonexistent/eval.jsonl", "text-classification")
    with pytest.raises(EvalDataError):
        job.result()
    with pytest.raises(ValueError):  # not a MultiverseError: raised at once
        Done(int, "x")


def test_a_script_without_a_main_guard_is_not_run_again_by_the_child(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        import os
        from multiverse.background import Background
        print("script ran", flush=True)
        print(Background().submit(os.getpid).result() != os.getpid(), flush=True)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["script ran", "True"]


def test_wait_returns_without_raising_and_result_before_submit_is_an_error():
    job = Background().submit(int, "x")
    job.wait()  # the ValueError waits for result()
    with pytest.raises(ValueError):
        job.result()
    idle = Background()
    idle.wait()  # nothing submitted: nothing to wait for
    with pytest.raises(RuntimeError, match="before submit"):
        idle.result()
    idle.cancel()


def test_the_child_ends_with_its_parent_even_on_kill_9(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import time
        from multiverse.background import Background
        job = Background().submit(time.sleep, 120)
        print(job._process.pid, flush=True)
        time.sleep(120)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
            with open(f"/proc/{child}/stat") as fh:  # a zombie (reaped by init soon) counts as ended
                if fh.read().split(") ")[1].startswith("Z"):
                    return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.1)
    os.kill(child, 9)
    raise AssertionError("the child outlived its parent")
