"""Experiment: OpenVINO static int8 variants on the weak BBC head, as the tuner builds them."""
import json, os, sys, time
from pathlib import Path
import numpy as np
ROOT = Path("/work/wt-weakhead"); sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from multiverse import evaldata, hub
from multiverse.export import export
from multiverse.fuse import fuse
from multiverse.inference import Predictor
from multiverse.progress import Progress
from multiverse.targets import get_target
from multiverse.tuning import NO_SPINNING, by_length
from multiverse.validate import reference_outputs, candidate_outputs, score
from multiverse.tasks.text_classification import expected_flip_rate
from multiverse import ovtuning
from multiverse.ovquant import OvInt8Config, quantize_ov, node_names
from multiverse.export import OnnxModel
from support import bbc_weak_classifier
from support.pytest_fixtures import fixture_cache_root

W = Path(os.environ.get("WH_WORK", "/tmp/wh/work")); W.mkdir(parents=True, exist_ok=True)
folder = bbc_weak_classifier(fixture_cache_root() / "bbc-weak-classifier")
ckpt, target = hub.resolve(str(folder)), get_target("native")
t0 = time.time()
fp32 = export(ckpt, W / "fp32", check=False)
fused = fuse(fp32, W / "fused", ckpt, target, check=False)
src = ovtuning.openvino_source(ckpt, fp32, W / "openvino-fp32", Progress())
print("export+fuse+ov", time.time() - t0, src.path, flush=True)
val = by_length(evaldata.load(str(folder / "eval-validation.jsonl"), ckpt.task))
test = by_length(evaldata.load(str(folder / "eval-test.jsonl"), ckpt.task))
refs = {"val": reference_outputs(ckpt, val, fused.model_dir, 2), "test": reference_outputs(ckpt, test, fused.model_dir, 2)}
np.savez(W / "refs.npz", val=refs["val"].values, test=refs["test"].values)
def pred(path, cfg=None):
    return Predictor(path, fused.model_dir, ckpt.task, threads=2, session_config={**NO_SPINNING, **(cfg or {})})
fp = pred(fused.path)
calib = ovtuning.calibration_feeds(fp, val)
names = node_names(src)
json.dump(names, open(W / "names.json", "w"), indent=1)
head = tuple(ovtuning.head_nodes(names)); ffn = tuple(ovtuning.ffn_output_nodes(names))
print("head", head); print("ffn", ffn)
def evaluate(tag, p):
    row = {}
    for split, d in (("val", val), ("test", test)):
        out = candidate_outputs(p, d)
        rep = score(d, refs[split], out, fp.config, 0.005)
        pr, se = expected_flip_rate(refs[split].values, out.values)
        row[split] = dict(agree=round(float((out.values.argmax(-1) == refs[split].values.argmax(-1)).mean()), 4),
                          expected=round(1 - pr, 4), se=round(se, 4), passed=rep.passed,
                          fails=[c.name for c in rep.checks if not c.passed])
        np.save(W / f"logits-{tag}-{split}.npy", out.values)
    print(f"{tag:40s} val {row['val']} test {row['test']}", flush=True)
    return row
if __name__ == "__main__":
    which = sys.argv[1:]
    configs = {"A": OvInt8Config(ignored_nodes=head), "B": OvInt8Config(ignored_nodes=head + ffn)}
    res = {}
    for tag, cfg in configs.items():
        if which and tag not in which: continue
        t = time.time()
        m = quantize_ov(src, W / f"ov-{tag}", cfg, calib)
        print(tag, "built in", round(time.time() - t, 1), flush=True)
        res[tag] = evaluate(tag, pred(m.path))
