"""Interleaved timing of candidate graphs at 16 and 128 tokens vs the fused fp32 ORT graph."""
import os, sys, json
from pathlib import Path
sys.path[:0] = ["/work/wt-weakhead"]
import numpy as np
from multiverse.inference import Predictor
from multiverse.candidate_timing import latency_call
from multiverse.timing import interleaved, relative_costs
from multiverse.tuning import NO_SPINNING
from multiverse.evaldata import bbc_articles
W = Path("/tmp/wh/work")
rounds = int(os.environ.get("ROUNDS", "7"))
specs = [("fp32", str(W / "fused/model.onnx"))] + [tuple(a.split("=", 1)) for a in sys.argv[1:]]
md = W / "fp32"
preds = [Predictor(p, md, "text-classification", threads=2, session_config=NO_SPINNING) for _, p in specs]
text = " ".join(body for _, body, _ in bbc_articles()[:3])
res = {"load_before": os.getloadavg()}
for L in (16, 128):
    r = interleaved([latency_call(p, text, seq_len=L) for p in preds], rounds, 10, warmup_runs=5, round_seconds=0.5)
    cpu, wall = relative_costs(r.cpu_ms), relative_costs(r.wall_ms)
    for (n, _), c, w in zip(specs, cpu, wall):
        res[f"{n}@{L}"] = dict(cpu_ms=round(c, 2), wall_ms=round(w, 2), cpu_x=round(cpu[0] / c, 2), wall_x=round(wall[0] / w, 2))
        print(f"{L:4d} {n:30s} cpu {c:6.2f} ms x{cpu[0]/c:.2f}  wall {w:6.2f} ms x{wall[0]/w:.2f}", flush=True)
res["load_after"] = os.getloadavg()
print("load", res["load_before"], res["load_after"])
json.dump(res, open(os.environ.get("OUT", "/tmp/wh/timing.json"), "w"), indent=1)
