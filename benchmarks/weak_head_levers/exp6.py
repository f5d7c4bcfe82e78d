import sys, json, shutil
sys.argv, args = sys.argv[:1], sys.argv[1:]
from exp import *
from multiverse.tuning import _Tuner, phase1_configs
from multiverse.graphnodes import head_nodes as ort_head
tuner = _Tuner(ckpt, fused, target, evaldata.load(str(folder / "eval-validation.jsonl"), ckpt.task), 0.005, W / "tuner6", 2, Progress())
hd = ort_head(fused, target.quantization)
cfg = [c for c in phase1_configs(target, hd) if c.smooth_alpha == 0.8][0]
s = json.load(open("/tmp/wh/work5/ort-sens.json")); cost = json.load(open("/tmp/wh/work5/costs.json"))["cost"]
fl = s["flip_rate"]; floor = 0.01 * max(cost.values())
orders = {"f2c": sorted(cost, key=lambda n: -fl[n] ** 2 / max(cost[n], floor)),
          "fc": sorted(cost, key=lambda n: -fl[n] / max(cost[n], floor))}
for a in args:
    name, k = a.split(":"); k = int(k)
    c = cfg.model_copy(update={"nodes_to_exclude": tuple(cfg.nodes_to_exclude) + tuple(orders[name][:k])})
    m = tuner.build(c)
    shutil.copytree(m.path.parent, W / f"ort-{name}{k}", dirs_exist_ok=True)
    evaluate(f"ort-{name}{k}", pred(m.path))
