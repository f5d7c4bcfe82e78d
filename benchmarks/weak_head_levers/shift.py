import sys
sys.path[:0] = ["/work/wt-weakhead"]
import numpy as np
from pathlib import Path
from multiverse.inference import Predictor
from multiverse.validate import candidate_outputs
from multiverse.evaldata import builtin
from multiverse.tuning import NO_SPINNING, by_length
W = Path("/tmp/wh/work")
data = by_length(builtin("text-classification"))
def pred(p): return Predictor(p, W / "fp32", "text-classification", threads=2, session_config=NO_SPINNING)
f = candidate_outputs(pred(W / "fused/model.onnx"), data).values
np.save(W / "builtin-fp32.npy", f)
refs = np.load(W / "refs.npz")
for tag in sys.argv[1:]:
    q = candidate_outputs(pred(W / f"ov-{tag}/model.xml"), data).values
    d = (q[:, 1] - q[:, 0]) - (f[:, 1] - f[:, 0])
    out = []
    for split in ("val", "test"):
        l = np.load(W / f"logits-{tag}-{split}.npy"); r = refs[split]
        ds = (l[:, 1] - l[:, 0]) - (r[:, 1] - r[:, 0])
        out.append(f"{split} shift {ds.mean():+.4f} std {ds.std():.4f}")
    print(f"{tag}: builtin shift {d.mean():+.4f} (median {np.median(d):+.4f}) std {d.std():.4f} | " + " | ".join(out))
