"""A task's gate, output gathering and eval-file format live in its task module; validate and evaldata only
dispatch to them (no model involved)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from multiverse import evaldata, evaldata_builtin, validate
from multiverse.errors import EvalDataError
from multiverse.tasks import TASKS
from multiverse.tasks.evaluation import Check, EvalSet, TaskOutputs, TaskScore, bound
from multiverse.validate import ValidationReport, collect, resolution_note, score

TASK_NAME = re.compile(r"""['"](%s)['"]""" % "|".join(map(re.escape, TASKS)))


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_module_implements_its_gate(name):
    task = TASKS[name]
    module = f"multiverse.tasks.{name.replace('-', '_')}"
    assert task.__module__ == module
    for method in ("gate", "collect", "eval_set"):
        assert getattr(task, method).__qualname__ == f"Handler.{method}", method  # defined in the class itself
    assert list(inspect.signature(task.gate).parameters) == ["data", "reference", "candidate", "config", "tolerance"]
    assert isinstance(task.continuous_metric, bool) and isinstance(task.sentence_embeddings, bool)
    assert task.eval_labels in ("classes", "spans", "relevance")
    assert task.eval_columns["text"] and task.eval_columns["label"]
    assert set(task.eval_columns) <= {"text", "text_pair", "label"}
    assert ("text_pair" in task.eval_columns) == task.accepts_pairs


@pytest.mark.parametrize("module", [validate, evaldata, evaldata_builtin])
def test_gate_and_eval_data_modules_compare_no_task_names(module):
    source = Path(module.__file__).read_text(encoding="utf-8")
    assert TASK_NAME.findall(source) == []


class FakeTask:
    """A task registered only in this test: its gate is one bound on the largest score difference."""

    name = "fake-task"
    output = "logits"
    accepts_pairs = requires_pairs = sentence_embeddings = False
    continuous_metric = True
    reports_metric_step = False
    fidelity_metric = "fake_agreement"
    eval_labels = "classes"
    eval_columns = {"text": "text", "label": "label"}  # noqa: RUF012 - the protocol's shape
    word_columns = None

    def __init__(self, model_dir, config):
        self.config = config

    def collect(self, batches):
        return TaskOutputs(np.concatenate([raw[:, 0] for raw, _ in batches]))

    @staticmethod
    def gate(data, reference, candidate, config, tolerance):
        diff = float(np.abs(reference.values - candidate.values).max())
        return TaskScore("max_diff", 0.0, diff, (bound("max_diff", diff, tolerance, diff, False),),
                         {"fake_agreement": 0.75, "n": len(data)})

    @classmethod
    def eval_set(cls, name, rows, found):
        return EvalSet(name, cls.name, texts=tuple(r["text"].upper() for _, r in rows))


@pytest.fixture
def fake_task(monkeypatch):
    monkeypatch.setitem(TASKS, FakeTask.name, FakeTask)
    return FakeTask


def test_score_uses_the_registered_tasks_own_checks(fake_task):
    data = EvalSet("d", fake_task.name, texts=("a", "b"))
    ref, cand = TaskOutputs(np.array([1.0, 2.0])), TaskOutputs(np.array([1.0, 2.5]))
    report = score(data, ref, cand, {}, tolerance=0.4)
    assert isinstance(report, ValidationReport)
    assert report.checks == (Check("max_diff", 0.5, 0.4, False, 0.5),) and not report.passed
    assert (report.metric, report.optimised, report.details["n"]) == ("max_diff", 0.5, 2)
    assert report.failure() == "max_diff 0.5000 vs required 0.4000 (gap 0.1000)"
    assert report.divergence == pytest.approx(0.25)  # 1 − the task's fidelity metric
    assert score(data, ref, cand, {}, tolerance=0.6).passed


def test_collect_and_resolution_note_follow_the_task(fake_task):
    data = EvalSet("d", fake_task.name, texts=("a", "bb", "ccc"))
    forward = lambda enc: np.array([[len(t)] for t in enc], dtype=np.float32)  # noqa: E731
    out = collect(forward, lambda items: items, fake_task("m", {}), data, batch_size=2)
    assert out.values.tolist() == [1.0, 2.0, 3.0]
    assert resolution_note(fake_task.name, 3, 0.01) is None  # continuous metric: no 1/n warning
    assert "the eval set has 3 examples" in resolution_note("ranking", 3, 0.01)


def test_eval_files_and_named_sets_follow_the_task(fake_task, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "hello"}\n{"text": "world"}\n', encoding="utf-8")
    assert evaldata.load(str(path), fake_task.name) == EvalSet(str(path), fake_task.name, texts=("HELLO", "WORLD"))
    assert evaldata.builtin(fake_task.name).texts == evaldata.builtin_texts()  # not query groups
    with pytest.raises(EvalDataError, match="wnut16 is a token-classification set, not fake-task"):
        evaldata.load("wnut16", fake_task.name)
