"""ORT fallback: flip-ranked vs NMSE-ranked k nodes fp32 on SQ 0.8 (head fp32)."""
import sys, json, time
sys.argv, args = sys.argv[:1], sys.argv[1:]
from exp import *
from multiverse.tuning import _Tuner, phase1_configs
from multiverse.graphnodes import head_nodes as ort_head
tuner = _Tuner(ckpt, fused, target, evaldata.load(str(folder / "eval-validation.jsonl"), ckpt.task), 0.005, W / "tuner", 2, Progress())
hd = ort_head(fused, target.quantization)
cfg = [c for c in phase1_configs(target, hd) if c.smooth_alpha == 0.8][0]
base = tuner.build(cfg)
t = time.time()
sens = tuner.sensitivity(cfg, base)
print("sensitivity", round(time.time() - t), "s", flush=True)
json.dump(sens, open(W / "ort-sens.json", "w"), indent=1)
by_nmse = sorted(sens["output_nmse"], key=lambda n: -sens["output_nmse"][n])
print("flip order", [(n, round(sens["flip_rate"][n], 5)) for n in sens["order"][:10]])
print("nmse order", by_nmse[:10])
for name, order in (("flip", sens["order"]), ("nmse", by_nmse)):
    for k in map(int, args or [4, 6]):
        c = cfg.model_copy(update={"nodes_to_exclude": tuple(cfg.nodes_to_exclude) + tuple(order[:k])})
        m = tuner.build(c)
        import shutil; shutil.copytree(m.model_dir if False else m.path.parent, W / f"ort-{name}{k}", dirs_exist_ok=True)
        evaluate(f"ort-{name}{k}", pred(m.path))
