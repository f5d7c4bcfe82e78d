"""Does the NER gate's validation loss predict the held-out loss? Every candidate the tuner can build for the test
suite's WNUT-16 token classifier (``tests/support``), each scored on the held-out test split.

The build is ``benchmarks/tasks.py``'s token-classification build (``multiverse.pipeline.optimize`` on ``wnut16``
validation, τ = 1 %, 2 threads) with every candidate tried: phase 1's SmoothQuant variant skip off
(``tuning.VARIANT_TIME_FLOOR`` = 0) and every OpenVINO configuration built. Each validated candidate is then
revalidated (``multiverse.validate.validate``) on the 459 test tweets against the same PyTorch reference.

Writes ``--out`` (JSON): per candidate its validation and held-out relative entity-F1 loss, entity agreement F1 with
the reference, token agreement and logit NMSE; and ``metric_step`` of each split (relative F1 change of one entity:
1 / the reference's true positives).

    PYTHONPATH=. python benchmarks/ner_candidates.py [--out benchmarks/results/ner_candidates.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("MULTIVERSE_FIXTURE_CACHE", Path.home() / ".cache" / "multiverse-fixtures"))


def run(work: Path) -> dict:
    """Build every candidate in ``work`` and score each on the test split; the JSON document (see the module)."""
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import support as fx
    from pick_right import collect

    from multiverse import evaldata, hub
    from multiverse.inference import Predictor
    from multiverse.ovsession import precision_config
    from multiverse.validate import reference_outputs, validate

    path = fx.wnut_ner(CACHE / "wnut-ner")
    built = collect(str(path), work, "native", eval_data="wnut16", eval_split="validation", tolerance=0.01, threads=2)
    ckpt = hub.resolve(str(path))
    test = evaldata.load("wnut16", "token-classification", split="test")
    reference, rows = None, []
    for label, c in built["candidates"].items():
        p = Predictor(c["path"], c["model_dir"], "token-classification", threads=2,
                      session_config=precision_config(c["quantization"]))
        reference = reference if reference is not None else reference_outputs(ckpt, test, p.model_dir, 2)
        held = validate(ckpt, p, test, 0.01, reference=reference).to_dict()
        v = c["validation"] or {}

        def pick(d):
            return {"relative_loss": d.get("relative_loss"), "passed": d.get("passed"),
                    **{k: d.get("details", {}).get(k) for k in ("entity_agreement_f1", "token_agreement", "logit_nmse",
                                                                  "metric_step")}}

        rows.append({"label": label, "validation": pick(v), "held_out": pick(held)})
        print(f"{label:40s} validation {v.get('relative_loss', float('nan')):+.4f}  held out {held['relative_loss']:+.4f}"
              f"  agreement F1 {held['details']['entity_agreement_f1']:.4f}  NMSE {held['details']['logit_nmse']:.4f}",
              file=sys.stderr, flush=True)
    return {"model": "tests/support wnut_ner (WNUT-16 token classifier)", "tolerance": 0.01,
            "shipped": built["quiet_choice"], "reason": built["quiet_reason"], "candidates": rows,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_1m": os.getloadavg()[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ner_candidates.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="mv-ner-") as tmp:
        doc = run(Path(tmp))
    args.out.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
