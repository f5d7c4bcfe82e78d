"""Which candidates the tuner builds: a kind that cannot ship beside a faster one that passed with margin is not
built (build time), with the rule checked against :func:`multiverse.choice.choose` itself."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from multiverse.choice import Trial, choose
from multiverse.ovtuning import openvino_rest
from multiverse.tuning import VARIANT_TIME_FLOOR, _Tuner
from multiverse.validate import Check, ValidationReport


def _trial(label, config, cpu_ms, *, loss=0.0, nmse=0.01, passed=True):
    """``cpu_ms``: one cost (ms) at both timed lengths, or ``{length: ms}``."""
    check = Check("relative loss of accuracy", loss, 0.01, passed, loss)
    v = ValidationReport("d", "text-classification", 1, "accuracy", 1.0, 1.0 - loss, loss, 0.01, passed, (check,),
                         {"logit_nmse": nmse})
    by_len = cpu_ms if isinstance(cpu_ms, dict) else {16: cpu_ms, 128: cpu_ms}
    mean = (by_len[16] * by_len[128]) ** 0.5
    return Trial(label, config, v, p50_ms=mean, cpu_ms=mean, cpu_ms_by_len=by_len)


class FakeTuner:
    """What ``_Tuner.phase1`` and ``openvino_rest`` use: the trials, an INC loop that 'runs' configs, ``retime``
    (here: records which trials it was asked to add; the costs are the trials' own)."""

    def __init__(self, trials, costs):
        self.trials, self.costs, self.loops, self.notes, self.retimed = list(trials), costs, [], [], []
        self.progress = SimpleNamespace(info=self.notes.append)

    def retime(self, also=()):
        self.retimed.append(tuple(also))

    def inc_loop(self, configs, budget, phase, stop_at_first=True, keep_last_for=None, **kw):
        self.loops.append(list(configs))
        for c in configs[:budget]:
            self.trials.append(_trial(c, {"name": c}, self.costs[c]))



def _run_phase1(costs, anchor_cost):
    fp32 = _trial("fp32", None, 30.0)
    static = _trial("ov static", {"runtime": "openvino", "mode": "static"}, anchor_cost)
    t = FakeTuner([fp32, static], costs)
    _Tuner.phase1(t, ["plain", "a0.7", "a0.6"], budget=12, anchor=1)
    return t


def test_smoothed_variants_are_not_built_when_the_first_is_too_slow_to_ship_beside_the_anchor():
    t = _run_phase1({"plain": 11.5, "a0.7": 11.6, "a0.6": 11.4}, anchor_cost=8.2)  # 1.40x: DistilBERT-base measured
    assert [x.label for x in t.trials] == ["fp32", "ov static", "plain"]
    assert "not trying its 2 smoothed variant(s): plain takes 1.40× / 1.40× the time of ov static" in t.notes[0]
    assert t.retimed == [(1, 2)]  # judged on one interleaved timing of the anchor and the first, with the passing ones
    # had they been built (each costs ≥ 0.99x plain), choose() would not have shipped any of them
    full = t.trials + [_trial("a0.7", {"name": "a0.7"}, 11.6, nmse=0.001), _trial("a0.6", {"name": "a0.6"}, 11.4)]
    assert choose(full)[0] == 1


def test_smoothed_variants_are_built_when_they_could_ship():
    t = _run_phase1({"plain": 8.9, "a0.7": 9.1, "a0.6": 9.0}, anchor_cost=8.2)  # 1.09x: within FIDELITY_TRADE
    assert [x.label for x in t.trials] == ["fp32", "ov static", "plain", "a0.7", "a0.6"]
    assert t.notes == ["plain takes 1.09× / 1.09× the time of ov static at 16 / 128 tokens: its smoothed variants "
                       "could ship"]


def test_a_first_candidate_close_at_one_length_only_does_not_build_variants_that_could_not_ship():
    # measured under load 6-8 (DistilBERT-base shape, 1-thread CPU time): 1.22x OpenVINO static at 16 tokens,
    # 1.43x at 128. Each variant would be ≥ 1.29x at 128 even at VARIANT_TIME_FLOOR: no choose() rule reaches it.
    costs = {"plain": {16: 5.09, 128: 24.87}, "a0.7": {16: 4.92, 128: 25.78}, "a0.6": {16: 5.06, 128: 24.88}}
    t = _run_phase1(costs, anchor_cost={16: 4.18, 128: 17.43})
    assert [x.label for x in t.trials] == ["fp32", "ov static", "plain"] and "not trying" in t.notes[0]
    # the variants as that build measured them (α=0.7 at 0.97x plain at 16 tokens), most faithful: none ships
    full = t.trials + [_trial(k, {"name": k}, costs[k], nmse=0.0001) for k in ("a0.7", "a0.6")]
    assert choose(full)[0] == 1
    assert 0 < VARIANT_TIME_FLOOR < 0.97


def test_a_floor_of_zero_builds_every_variant(monkeypatch):  # what a benchmark that wants every candidate sets
    from multiverse import tuning

    monkeypatch.setattr(tuning, "VARIANT_TIME_FLOOR", 0.0)
    t = _run_phase1({"plain": 11.5, "a0.7": 11.6, "a0.6": 11.4}, anchor_cost=8.2)
    assert [x.label for x in t.trials] == ["fp32", "ov static", "plain", "a0.7", "a0.6"]


def test_variants_are_built_when_the_first_is_faster_than_the_anchor_at_one_length():
    t = _run_phase1({"plain": {16: 6.5, 128: 10.7}, "a0.7": 9.0, "a0.6": 9.0}, anchor_cost=8.2)  # 0.79x / 1.30x
    assert [x.label for x in t.trials] == ["fp32", "ov static", "plain", "a0.7", "a0.6"]


def test_without_an_anchor_phase1_is_one_loop_over_every_configuration():
    t = FakeTuner([_trial("fp32", None, 30.0)], {"plain": 11.5, "a0.7": 11.6})
    _Tuner.phase1(t, ["plain", "a0.7"], budget=12, anchor=None)
    assert t.loops == [["plain", "a0.7"]]


def test_openvino_dynamic_and_ffn_variants_only_when_static_did_not_pass_with_margin():
    t = FakeTuner([_trial("fp32", None, 30.0)], {"dynamic": 12.0, "ffn": 10.0})
    openvino_rest(t, ["static", "dynamic", "ffn"], budget=12, static=1)
    assert t.loops == []
    openvino_rest(t, ["static", "dynamic", "ffn"], budget=12, static=None)
    assert t.loops == [["dynamic", "ffn"]]



@dataclass(frozen=True)
class _Model:
    """What the tuner's OpenVINO steps read of a trial's model."""

    quantization: dict | None


class _OrderTuner(_Tuner):
    """A ``_Tuner`` without models: ``run``/``inc_loop`` append made-up trials (costs from ``COSTS``); ``retime``
    records which trials it would time together, by the real rules (``to_retime``; nothing new: no re-timing)."""

    COSTS = {"fp32 (fused)": 30.0, "ov static": 8.0, "ov static bf16": 7.9, "plain": 11.5, "a0.7": 11.6}

    def __init__(self, ckpt, fused, target, *args, **kw):
        from multiverse.progress import Progress

        self.target, self.progress, self.trials, self.models = target, Progress(), [], []
        self.retimings, self._timed_together, self.served_clock, self.early = [], set(), None, []

    def build_early(self, config):
        self.early.append(config.label)

    def run(self, label, model, config, phase):
        self.trials.append(_trial(label, config, self.COSTS[label]))
        self.models.append(_Model(config))

    def inc_loop(self, configs, budget, phase, stop_at_first=True, keep_last_for=None, **kw):
        for c in configs[:budget]:
            self.run(c, None, {"name": c}, phase) if isinstance(c, str) else self.run(c.label, None, c.config, phase)

    def retime(self, rounds=5, also=()):
        from multiverse.candidate_timing import to_retime

        timed = to_retime(self.trials, also)
        if len(timed) >= 2 and not set(timed) <= self._timed_together:
            self.retimings.append([self.trials[i].label for i in timed])
            self._timed_together = set(timed)


def test_a_static_openvino_anchor_takes_its_bf16_twin_into_phase_1s_retiming(monkeypatch, tmp_path):
    """On a bf16 target, OpenVINO static int8 that passed with margin is followed by its bf16 twin at once, so that
    phase 1's re-timing (anchor, first ONNX Runtime candidate) also times the twin and no second re-timing runs:
    measured (DistilBERT-base shape, quiet host) the second re-timing of all three took 7.6 of the build's 70 s."""
    from multiverse import targets, tuning
    from multiverse.ovtuning import openvino_bf16

    static = SimpleNamespace(label="ov static", config={"runtime": "openvino", "mode": "static",
                                                        "inference_precision": "f32"})
    made = []
    monkeypatch.setattr(targets, "host_flags", lambda: frozenset({"avx512f", "avx512_vnni", targets.BF16_FLAG}))
    monkeypatch.setattr(tuning, "_Tuner", lambda *a, **kw: made.append(_OrderTuner(*a, **kw)) or made[-1])
    monkeypatch.setattr("multiverse.ovtuning.runtimes", lambda runtime, precision: (True, True, None))
    monkeypatch.setattr("multiverse.ovtuning.openvino_source", lambda ckpt, exported, workdir, progress: exported)
    monkeypatch.setattr("multiverse.ovtuning.openvino_configs", lambda exported: [static])
    monkeypatch.setattr(tuning, "head_nodes", lambda fused, q: [])
    monkeypatch.setattr(tuning, "phase1_configs", lambda target, head: ["plain", "a0.7"])
    prebuilt = []  # phase 1's first candidate is started in the background before OpenVINO's conversion and NNCF
    monkeypatch.setattr(tuning, "start_quantize", lambda background, fused, workdir, config: prebuilt.append(config))
    _, report = tuning.tune(None, _Model(None), targets.get_target("zen4"), None, 0.01, tmp_path,
                            exported=_Model(None))
    assert [t.label for t in report.trials] == ["fp32 (fused)", "ov static", "ov static bf16", "plain"]
    assert made[0].retimings == [["ov static", "ov static bf16", "plain"]]  # one re-timing, all three in it
    # before fp32's trial (which waits for the reference): NNCF here, phase 1's first in the worker
    assert prebuilt == ["plain"] and made[0].early == ["ov static"]
    assert report.trials[report.chosen].label in ("ov static", "ov static bf16")
    openvino_bf16(made[0], 12)  # a second call (where openvino_rest runs first) does not retry the twin
    assert len(made[0].trials) == 4


def test_a_candidate_built_early_is_the_one_its_trial_gets_and_so_is_its_error(monkeypatch, tmp_path):
    from multiverse import tuning
    from multiverse.background import BackgroundBuilds
    from multiverse.errors import QuantizationError
    from multiverse.targets import QuantConfig

    builds = []

    def quantize(graph, out, config):
        builds.append(config.label())
        if config.per_channel:
            raise QuantizationError("no luck")
        return SimpleNamespace(path=out)

    monkeypatch.setattr(tuning, "quantize_model", quantize)
    t = object.__new__(_Tuner)
    t._early, t._built, t.workdir, t.background = {}, 0, tmp_path, BackgroundBuilds()
    t.progress, t._base_graph = SimpleNamespace(activity=lambda text: None), lambda alpha: "fused"
    ok, bad = QuantConfig(per_channel=False), QuantConfig(per_channel=True)
    t.build_early(ok)
    t.build_early(bad)  # its error is kept for its trial
    assert t.build(ok).path == tmp_path / "q1" and len(builds) == 2
    with pytest.raises(QuantizationError, match="no luck"):
        t.build(bad)
    assert t.build(ok).path == tmp_path / "q3" and len(builds) == 3  # taken once; a second build builds anew
