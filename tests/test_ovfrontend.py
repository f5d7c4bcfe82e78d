"""OpenVINO's PyTorch frontend (``multiverse.ovfrontend``): the IR the tuner's OpenVINO candidates start from keeps
the ONNX export's input and output names, equals ONNX Runtime on the export for every task, is batch-invariant,
its head and FFN-output nodes are found under the traced names, and a checkpoint it cannot convert falls back to
the ONNX export with a line saying so."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from multiverse.inference import Predictor
from multiverse.tasks import TASKS

TEXTS = ["Thanks!", "The PyTorch frontend traces the same model.", "short", "a b c d e f g h i j k l m n o p"]


@pytest.fixture(scope="module")
def converted(tiny_checkpoints, tmp_path_factory):
    """task → (exported fp32 OnnxModel, PyTorch-frontend fp32 IR as an OnnxModel)."""
    from multiverse import hub
    from multiverse.export import export
    from multiverse.ovfrontend import pytorch_ir

    out = tmp_path_factory.mktemp("ovfrontend")
    built = {}
    for task, path in tiny_checkpoints.items():
        fp32 = export(hub.resolve(str(path)), out / task / "fp32", check=False)
        built[task] = (fp32, pytorch_ir(path, task, fp32, out / task / "ir"))
    return built


@pytest.mark.parametrize("task", TASKS)
def test_pytorch_ir_equals_onnx_runtime_and_keeps_the_export_names(converted, task):
    import onnx
    import openvino as ov

    from multiverse.ovquant import frontend

    fp32, ir = converted[task]
    model = ov.Core().read_model(str(ir.path))
    graph = onnx.load(str(fp32.path), load_external_data=False).graph
    assert [p.get_names() for p in model.inputs] == [{i.name} for i in graph.input]
    assert [p.get_names() for p in model.outputs] == [{o.name} for o in graph.output]  # no pooler_output
    assert frontend(model) == "pytorch" and ir.model_dir == fp32.model_dir
    items = [(t, t[::-1]) for t in TEXTS] if task == "ranking" else TEXTS
    ort = Predictor(fp32.path, fp32.model_dir, task)
    ovp = Predictor(ir.path, ir.model_dir, task)
    assert type(ovp.session).__name__ == "OpenVinoSession"
    enc = ort.encode(items)
    together = ovp.run_batched(enc)
    np.testing.assert_allclose(together, ort.run_batched(enc), atol=2e-5)
    for i, x in enumerate(items):  # padded rows: the traced graph uses the attention mask
        alone = ovp.run_batched(ovp.encode([x]))[0]
        np.testing.assert_allclose(together[i][: alone.shape[0]], alone, atol=1e-5)


def test_head_and_ffn_nodes_match_the_traced_names(converted):
    from multiverse.ovquant import node_names
    from multiverse.ovtuning import ffn_output_nodes, head_nodes, openvino_configs

    fp32, ir = converted["text-classification"]
    names = node_names(ir)
    assert names[0].startswith("__module.") and len(names) == 2 * 6 + len(head_nodes(names))
    assert head_nodes(names) and all("layer." not in n for n in head_nodes(names))
    assert len(ffn_output_nodes(names)) == 2 and all(".output.dense/" in n for n in ffn_output_nodes(names))
    assert head_nodes(node_names(fp32)) and len(ffn_output_nodes(node_names(fp32))) == 2  # ONNX names still match
    configs = openvino_configs(ir)
    assert all(c.ignored_nodes[:len(head_nodes(names))] == tuple(head_nodes(names)) for c in configs)
    # static first, then dynamic with 64-channel activation groups before 32 (cheaper, and faithful on MiniLM)
    assert [(c.mode, c.dynamic_group_size if c.mode == "dynamic" else None) for c in configs] == [
        ("static", None), ("dynamic", 64), ("dynamic", 32), ("static", None)]


def test_quantized_ir_records_its_frontend(converted, tmp_path):
    from multiverse.ovquant import OvInt8Config, int8_nodes, quantize_ov

    fp32, ir = converted["feature-extraction"]
    q = quantize_ov(ir, tmp_path / "dyn", OvInt8Config(mode="dynamic"), [])
    assert q.quantization["frontend"] == "pytorch" and len(int8_nodes(q.path)) == 12
    assert quantize_ov(fp32, tmp_path / "onnx", OvInt8Config(mode="dynamic"), []).quantization["frontend"] == "onnx"


def test_a_checkpoint_the_frontend_cannot_convert_falls_back_to_the_onnx_export(converted, tmp_path):
    from dataclasses import replace

    from multiverse import hub
    from multiverse.ovtuning import openvino_source
    from multiverse.progress import Progress

    fp32, _ = converted["feature-extraction"]
    said = []

    class Recorder(Progress):
        def info(self, message: str) -> None:
            said.append(message)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert"}')  # no weights: transformers cannot load it
    ckpt = replace(hub.from_folder(broken, task="feature-extraction"), path=broken)
    assert openvino_source(ckpt, fp32, tmp_path / "ir", Recorder()) is fp32
    assert said and "start from the ONNX export" in said[0] and "PyTorch frontend could not convert" in said[0]


def test_an_ir_that_differs_from_pytorch_fails_the_conversion_check(converted, tiny_checkpoints, tmp_path, monkeypatch):
    """The check compares OpenVINO with PyTorch's outputs (the export check's, when it ran): a graph of other weights
    under the same names is refused."""
    from multiverse import ovfrontend
    from multiverse.errors import QuantizationError
    from support import tiny_checkpoint

    task = "text-classification"
    fp32, _ = converted[task]
    other = tiny_checkpoint(task, tmp_path / "other", seed=1)
    real = ovfrontend.convert_pytorch
    monkeypatch.setattr(ovfrontend, "convert_pytorch", lambda checkpoint, t, exported: real(other, t, exported))
    with pytest.raises(QuantizationError, match="differs from PyTorch"):
        ovfrontend.pytorch_ir(tiny_checkpoints[task], task, fp32, tmp_path / "ir")
