"""``optimize``'s worker process (``multiverse.background``): the PyTorch reference and candidate graphs it computes are
the ones computed in process, errors come back as raised, and a dead worker leaves the work to the caller."""

from __future__ import annotations

import os

import onnx
import pytest
from test_tuning_units import _graph_with_head

from multiverse import background as bg
from multiverse.background import BackgroundBuilds, start_quantize
from multiverse.errors import QuantizationError
from multiverse.quantize import quantize
from multiverse.targets import QuantConfig

CONFIG = QuantConfig(op_types=("MatMul", "Gather"))


def _initializers(path):
    return {t.name: t.raw_data for t in onnx.load(str(path)).graph.initializer}


def test_a_graph_built_in_the_background_is_the_one_built_in_process(tmp_path, monkeypatch):
    fused = _graph_with_head(tmp_path / "model.onnx")
    with BackgroundBuilds() as background:
        start_quantize(background, fused, tmp_path / "small", CONFIG)  # under BACKGROUND_BYTES: not started
        assert background.take(CONFIG.model_dump_json()) is None
        monkeypatch.setattr(bg, "BACKGROUND_BYTES", 0)
        start_quantize(background, fused, tmp_path / "bg", CONFIG)
        built = background.take(CONFIG.model_dump_json())
        assert background.take(CONFIG.model_dump_json()) is None  # taken once
    direct = quantize(fused, tmp_path / "direct", CONFIG)
    assert built.path == tmp_path / "bg" / "q-early" / "model.onnx"
    assert built.quantization == direct.quantization and built.stage == "int8"
    assert _initializers(built.path) == _initializers(direct.path)


def test_errors_come_back_as_raised_and_a_dead_worker_leaves_the_build_to_the_caller(tmp_path):
    fused = _graph_with_head(tmp_path / "model.onnx")
    with BackgroundBuilds() as background:
        background.submit("convs", quantize, fused, tmp_path / "out", QuantConfig(op_types=("Conv",)))
        with pytest.raises(QuantizationError, match="quantized no op of"):  # the graph has no Conv
            background.take("convs")
        background.submit("dies", os._exit, 1)  # the worker process ends mid-build (killed for memory, say)
        assert background.take("dies") is None
        background.submit("after", os.getpid)  # no new worker: what killed that one would kill it too
        assert background.take("after") is None and background.broken


def test_the_reference_computed_in_the_worker_is_the_one_the_tuner_computes(tiny_checkpoints, tmp_path, monkeypatch):
    """``start_reference`` reads the checkpoint's files as the export copies them; the tuner's own reference reads the
    export's folder, which holds the checkpoint's tokenizer and config files: the same outputs (one intra-op thread
    against two: rounding)."""
    import numpy as np

    from multiverse import evaldata, hub
    from multiverse.background import REFERENCE, start_reference
    from multiverse.export import export
    from multiverse.validate import by_length, reference_outputs

    ckpt = hub.resolve(str(tiny_checkpoints["token-classification"]))
    data = by_length(evaldata.load(None, ckpt.task, limit=40))
    with BackgroundBuilds() as background:
        assert not start_reference(background, ckpt, data, tmp_path / "work")  # a tiny model: not worth a worker
        monkeypatch.setattr(bg, "BACKGROUND_BYTES", 0)
        assert start_reference(background, ckpt, data, tmp_path / "work")
        early = background.take(REFERENCE)
    here = reference_outputs(ckpt, data, export(ckpt, tmp_path / "fp32", check=False).model_dir, 2)
    assert all(np.array_equal(a, b) for a, b in zip(early.values, here.values)) and early.entities == here.entities
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(early.logits, here.logits))
    for missing in ("tokenizer.json", "tokenizer_config.json"):  # optimum writes the one the bundle uses: not known
        (partial := tmp_path / f"without-{missing}").mkdir()                 # before the export
        for f in ckpt.path.iterdir():
            if f.name != missing:
                (partial / f.name).write_bytes(f.read_bytes())
        with BackgroundBuilds() as background:
            assert not start_reference(background, hub.resolve(str(partial)), data, tmp_path / "work"), missing


def test_optimize_validates_against_the_reference_from_the_worker(tiny_checkpoints, tmp_path, monkeypatch):
    from multiverse import tuning
    from multiverse.pipeline import optimize

    monkeypatch.setattr(bg, "BACKGROUND_BYTES", 0)
    computed_here = []
    real = tuning.reference_outputs
    monkeypatch.setattr(tuning, "reference_outputs", lambda *a: computed_here.append(a) or real(*a))
    b = optimize(str(tiny_checkpoints["text-classification"]), "native", out=tmp_path, runtime="onnxruntime",
                 max_trials=1, tolerance=0.2)
    assert computed_here == [] and b.manifest["validation"]["n"] > 0


def test_a_script_without_a_main_guard_still_builds_and_is_told_why_the_worker_failed(tiny_checkpoints, tmp_path):
    """``spawn`` runs the script again in the worker; there ``optimize`` refuses at once (no second build), the worker
    dies and the build computes the reference itself."""
    import subprocess
    import sys

    script = tmp_path / "build.py"
    script.write_text(
        "import multiverse.background as bg\n"
        "from multiverse.pipeline import optimize\n"
        "bg.BACKGROUND_BYTES = 0\n"
        f"optimize({str(tiny_checkpoints['text-classification'])!r}, 'native', out={str(tmp_path / 'out')!r}, "
        "runtime='onnxruntime', max_trials=1, tolerance=0.2)\n"
        "print('built')\n", encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("built") == 1
    assert 'put the call under `if __name__ == "__main__":`' in done.stderr


def test_the_worker_reference_reads_a_dense_module_stored_as_a_pickle_as_the_export_does(tiny_checkpoints, tmp_path,
                                                                                          monkeypatch):
    """Older sentence-transformers checkpoints keep ``2_Dense/pytorch_model.bin``; the export converts it to
    ``model.safetensors`` (``bundle_writer.copy_model_files``), which is all the pooling code reads. The worker's
    reference, computed before the export exists, gets the same embeddings as the tuner's own reference."""
    import json
    import shutil

    import numpy as np
    import torch

    from multiverse import evaldata, hub
    from multiverse.background import REFERENCE, start_reference
    from multiverse.export import export
    from multiverse.validate import by_length, reference_outputs

    folder = tmp_path / "st-dense-pickle"
    shutil.copytree(tiny_checkpoints["feature-extraction"], folder)
    (folder / "2_Dense").mkdir()
    gen = torch.Generator().manual_seed(0)
    torch.save({"linear.weight": torch.randn(16, 32, generator=gen), "linear.bias": torch.randn(16, generator=gen)},
               folder / "2_Dense" / "pytorch_model.bin")
    (folder / "2_Dense" / "config.json").write_text(json.dumps(
        {"in_features": 32, "out_features": 16, "bias": True,
         "activation_function": "torch.nn.modules.activation.Tanh"}))
    modules = json.loads((folder / "modules.json").read_text())
    modules = [m for m in modules if "Normalize" not in m["type"]] + [
        {"idx": len(modules), "name": "dense", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    ckpt = hub.resolve(str(folder))
    data = by_length(evaldata.load(None, ckpt.task, limit=20))
    monkeypatch.setattr(bg, "BACKGROUND_BYTES", 0)
    with BackgroundBuilds() as background:
        assert start_reference(background, ckpt, data, tmp_path / "work")
        early = background.take(REFERENCE)
    here = reference_outputs(ckpt, data, export(ckpt, tmp_path / "fp32", check=False).model_dir, 2)
    assert here.values[0].shape[-1] == 16  # the Dense module is applied
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(early.values, here.values))


def test_ctrl_c_leaves_the_worker_to_the_build_that_ends_it(tmp_path):
    """Ctrl-C sends SIGINT to the terminal's whole process group, the worker included. The build unwinds and
    terminates the worker itself (``close``); a worker that died of KeyboardInterrupt printed ``Process
    SpawnProcess-1:`` and its traceback into the build's output meanwhile."""
    import signal
    import time

    with BackgroundBuilds() as background:
        background.submit("pid", os.getpid)
        worker = background.take("pid")
        for _ in range(3):  # the worker is idle, waiting for its next build
            os.kill(worker, signal.SIGINT)
            time.sleep(0.3)
        background.submit("after", os.getpid)
        assert background.take("after") == worker and not background.broken


def test_a_worker_that_died_before_the_next_submit_leaves_that_build_to_the_caller(tmp_path):
    """The worker can die while nothing is taken from it (killed for memory while it computes the reference, or a
    script without a main guard): the next ``submit`` (``start_quantize``) must not raise, its ``take`` is None."""
    import time

    with BackgroundBuilds() as background:
        background.submit("dies", os._exit, 1)
        deadline = time.monotonic() + 60
        while not background._pool._broken and time.monotonic() < deadline:  # noticed by the pool's own thread
            time.sleep(0.1)
        background.submit("after", os.getpid)
        assert background.take("after") is None and background.take("dies") is None and background.broken


def test_the_worker_ends_when_the_build_is_killed(tmp_path):
    """``kill -9`` (or the OOM killer) of the build runs no cleanup; the worker holds both ends of its queues, so it
    never sees the build go, and stayed blocked (idle, or writing a result nobody reads) with torch loaded."""
    import subprocess
    import sys
    import time

    script = tmp_path / "killed.py"
    script.write_text(
        "import os, signal\n"
        "from multiverse.background import BackgroundBuilds\n"
        "if __name__ == '__main__':\n"
        "    background = BackgroundBuilds()\n"
        "    background.submit('pid', os.getpid)\n"
        "    print(background.take('pid'), flush=True)\n"
        "    background.submit('large', os.urandom, 1 << 20)  # more than a pipe holds: nobody will read it\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n", encoding="utf-8")
    with open(tmp_path / "out.txt", "w") as out:  # a file, not a pipe: the worker holds the script's stdout
        subprocess.run([sys.executable, str(script)], stdout=out, stderr=subprocess.DEVNULL, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    worker = int((tmp_path / "out.txt").read_text().split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(worker, 9)  # the test's own orphan
    pytest.fail(f"worker {worker} still runs 30 s after its build was killed")


def test_ctrl_c_while_the_worker_starts_prints_no_traceback(tmp_path):
    """Ctrl-C reaches the worker before its initializer ignores SIGINT too: while the new interpreter starts and
    imports the build's main module (here made slow, as a script importing torch is). It printed ``Process
    SpawnProcess-1:`` and a KeyboardInterrupt traceback into the build's output."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "starting.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from multiverse.background import BackgroundBuilds\n"
        "if __name__ == '__mp_main__':  # spawn imports the main module under this name in the worker\n"
        "    print('worker starting', flush=True)\n"
        "    time.sleep(2)  # the worker imports this module: the window Ctrl-C falls in\n"
        "def busy(*_):  # the build sees Ctrl-C when its C call (export, fusion) returns\n"
        "    time.sleep(1)\n"
        "    raise KeyboardInterrupt\n"
        "if __name__ == '__main__':\n"
        "    signal.signal(signal.SIGINT, busy)\n"
        "    try:\n"
        "        with BackgroundBuilds() as background:\n"
        "            background.submit('pid', os.getpid)\n"
        "            print('worker', background.take('pid'), flush=True)\n"
        "    except KeyboardInterrupt:\n"
        "        print('interrupted', flush=True)\n"
        "        sys.exit(130)\n", encoding="utf-8")
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,  # its own process group, as a terminal's job
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert process.stdout.readline().strip() == "worker starting"
    time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted" in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
