"""Which candidates the tuner builds: a kind that cannot ship beside a faster one that passed with margin is not
built (build time), with the rule checked against :func:`multiverse.choice.choose` itself."""

from __future__ import annotations

from types import SimpleNamespace

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
