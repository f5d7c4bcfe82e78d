"""benchmarks/peers_goals.py: the goal table's met / not met / not measured from measurements (pure Python)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import peers_goals  # noqa: E402


def _row(system, seq, p50, p99=None):
    return {"system": system, "seq_len": seq, "batch_size": 1, "status": "ok",
            "stats": {"p50_ms": p50, "p99_ms": p99 if p99 is not None else p50 * 1.2}}


def _model(task="feature-extraction", **kw):
    rows = [_row("transformers", 8, 18.0), _row("optimum", 8, 2.7), _row("openvino", 8, 2.8), _row("multiverse", 8, 1.9),
            _row("transformers", 64, 37.0), _row("optimum", 64, 11.9), _row("openvino", 64, 7.3),
            _row("multiverse", 64, 10.6, 20.0),
            {"system": "openvino", "seq_len": 512, "batch_size": 1, "status": "skipped", "reason": "too long"}]
    fid = {"multiverse": {"n": 270, "mean_cosine": 0.9977, "min_cosine": 0.9869},
           "openvino": {"n": 270, "mean_cosine": 0.9933, "min_cosine": 0.7137}}
    return {"label": "M", "task": task, "rows": rows, "fidelity": fid, "throughput": None, "builds": {}, **kw}


def _by_goal(rows, text):
    [row] = [r for r in rows if text in r["goal"]]
    return row


def test_speed_rows_compare_with_the_best_peer():
    rows = {r["seq_len"]: r for r in peers_goals.speed_rows(_model())}
    assert rows[8]["best_peer"] == "optimum" and round(rows[8]["vs_best"], 3) == round(2.7 / 1.9, 3)
    assert rows[8]["met"] is True                      # 1.9 ≤ 0.9 × 2.7
    assert rows[64]["best_peer"] == "openvino" and rows[64]["met"] is False
    assert 512 not in rows                             # skipped cells are not rows
    md = peers_goals.speed_markdown(_model())
    assert "0.69× (slower) vs OpenVINO + NNCF | not met" in md and "1.42× (faster) vs optimum O2 + vnni | met" in md


def test_goal_rows_say_met_not_met_and_not_measured():
    d = _model(builds={"multiverse": {"fresh": True, "seconds": 600.0}, "optimum": {"fresh": True, "seconds": 179.0},
                       "openvino": {"fresh": True, "seconds": 220.0}})
    d["throughput"] = {"seq_len": 128, "req_per_s": {"multiverse (serve: 1 engine × 2 threads)": 80.0,
                                                     "multiverse (2 engines × 1 thread)": 95.0,
                                                     "openvino (THROUGHPUT hint)": 120.0}}
    rows = peers_goals.goals({"distilbert": d, "minilm": _model(label="L")})
    assert _by_goal(rows, "M: Multiverse p50 ≤ 0.9").get("status") == "not met"
    assert "short at 64: 0.69×" in _by_goal(rows, "M: Multiverse p50 ≤ 0.9")["measured"]
    assert _by_goal(rows, "M: Multiverse meets the fidelity gate")["status"] == "not met"  # min 0.9869 < 0.99
    assert _by_goal(rows, "M: p50 ≤ 2 ms at 8")["status"] == "met"
    assert _by_goal(rows, "M: p50 ≤ 6 ms at 64")["status"] == "not met"
    assert _by_goal(rows, "M: p99")["status"] == "not met" and "64: 1.89" in _by_goal(rows, "M: p99")["measured"]
    assert _by_goal(rows, "M: throughput")["measured"] == "95.0 vs 120.0 req/s"
    assert _by_goal(rows, "L: throughput")["status"] == "not measured"
    build = _by_goal(rows, "Build time")
    assert build == {"goal": build["goal"], "status": "not met",
                     "measured": "600 s vs 179 s (3.4×); OpenVINO convert + NNCF 220 s"}
    d["builds"]["multiverse"]["max_trials"] = 4  # --quick: not the default settings
    assert _by_goal(peers_goals.goals({"distilbert": d}), "Build time")["status"] == "not measured"
    d["builds"]["multiverse"]["max_trials"] = None
    d["builds"]["optimum"]["fresh"] = False  # a cached build was not timed in this run
    assert _by_goal(peers_goals.goals({"distilbert": d}), "Build time")["status"] == "not measured"
    assert _by_goal(rows, "picks right")["status"] == "not measured"
    assert "**not met**" in peers_goals.goals_markdown(rows)


def test_classifier_gate_is_label_agreement():
    m = _model(task="text-classification")
    m["fidelity"] = {"multiverse": {"n": 270, "label_agreement": 0.985}, "optimum": {"n": 270, "label_agreement": 0.97}}
    assert peers_goals.passes_gate(m["task"], m["fidelity"]["multiverse"]) is True
    assert peers_goals.passes_gate(m["task"], m["fidelity"]["optimum"]) is False
    md = peers_goals.fidelity_markdown(m)
    assert "| Multiverse | 0.985 | met |" in md and "| OpenVINO + NNCF | - | not measured |" in md
