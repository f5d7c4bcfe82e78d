"""The PyTorch reference runs its eval examples grouped by token count (``validate.collect(grouped=True)``): same
outputs, in the same order, with less padding than batches in file order."""

from __future__ import annotations

import numpy as np
import pytest

from multiverse import evaldata, hub
from multiverse.reference import ReferenceModel
from multiverse.tasks import TextTokenizer, make_handler
from multiverse.validate import RUN_ROWS, RUN_TOKENS, collect, length_runs, reference_outputs


def test_length_runs_sort_and_cap_rows_and_padded_tokens():
    lengths = [5, 300, 7, 5, 2000, 6, 40, 41] + [3] * 70
    runs = length_runs(lengths, max_rows=64, max_tokens=1000)
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    flat = [lengths[i] for run in runs for i in run]
    assert flat == sorted(lengths)  # shortest first
    assert [4] in runs  # longer than max_tokens on its own: runs alone
    for run in runs:
        assert len(run) <= 64
        assert len(run) == 1 or len(run) * max(lengths[i] for i in run) <= 1000
    ties = length_runs([2, 1, 2, 1])
    assert ties == [[1, 3, 0, 2]]  # equal lengths keep their order


@pytest.mark.parametrize("task", ["text-classification", "token-classification", "feature-extraction"])
def test_grouped_reference_equals_batches_in_order(tiny_checkpoints, task):
    ckpt = hub.resolve(str(tiny_checkpoints[task]))
    data = evaldata.builtin(task)
    ref = ReferenceModel(ckpt)
    tok = TextTokenizer(ckpt.path)
    handler = make_handler(task, ckpt.path, ckpt.config)
    shapes = {}

    def forward(grouped):
        def run(enc):
            shapes.setdefault(grouped, []).append(enc.attention_mask.shape)
            return ref.forward(enc)
        return run

    plain = collect(forward(False), tok.encode, handler, data)
    grouped = collect(forward(True), tok.encode, handler, data, grouped=True)
    for a, b in ((plain.values, grouped.values), (plain.logits, grouped.logits)):
        if a is None:
            assert b is None
            continue
        if isinstance(a, list):  # per text: token label ids / logits over real tokens
            assert len(a) == len(b) == len(data)
            assert all(x.shape == y.shape and np.allclose(x, y, atol=1e-5) for x, y in zip(a, b))
        else:
            assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    if plain.entities is not None:
        assert [[e["word"] for e in row] for row in plain.entities] == [[e["word"] for e in row] for row in grouped.entities]
    padded = {k: sum(r * w for r, w in v) for k, v in shapes.items()}
    assert padded[True] < padded[False]
    assert all(r <= RUN_ROWS and (r == 1 or r * w <= RUN_TOKENS) for r, w in shapes[True])
    same = reference_outputs(ckpt, data, ckpt.path)  # what the tuner computes once per build
    assert np.array_equal(np.asarray(same.values[0]), np.asarray(grouped.values[0]))


@pytest.mark.parametrize("task", ["text-classification", "feature-extraction"])
def test_export_checks_run_each_probe_text_once_unpadded(tiny_checkpoints, task):
    from multiverse import export as export_module
    from multiverse.export import probe_batches, reference_batches

    ckpt = hub.resolve(str(tiny_checkpoints[task]))
    tok = TextTokenizer(ckpt.path)
    model = ReferenceModel(ckpt)
    calls = []

    class Counting:
        def forward(self, enc):
            calls.append(enc.attention_mask.shape)
            return model.forward(enc)

    batches = probe_batches(task, tok.max_length)
    encs = [tok.encode(b) for b in batches]
    export_module._PROBE_ROWS.clear()
    got = reference_batches(ckpt, batches, encs, tok.encode, Counting())
    assert sum(r for r, _ in calls) == len({x if isinstance(x, str) else tuple(x) for b in batches for x in b})
    assert all(r * w <= RUN_TOKENS for r, w in calls)
    for enc, out in zip(encs, got):
        want = model.forward(enc)  # the same texts padded beside each other
        assert out.shape == want.shape
        mask = enc.attention_mask.astype(bool)
        assert np.allclose(out[mask] if out.ndim == 3 else out, want[mask] if want.ndim == 3 else want, atol=1e-5)
    calls.clear()
    again = reference_batches(ckpt, batches, encs, tok.encode, Counting())  # the fusion check: nothing re-run
    assert calls == [] and all(np.array_equal(a, b) for a, b in zip(got, again))
