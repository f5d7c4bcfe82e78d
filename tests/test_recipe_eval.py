"""A short name's recipe eval data set (``recipes/models/*.yaml`` ``eval``) is the default ``--eval-data``
(issue 10: it was parsed and ignored), read from the HF cache offline; not cached → one clear message
(issue 14, item 10). The Hub is simulated by an HF cache in a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from multiverse import evaldata, hub, pipeline
from multiverse.cli import app
from multiverse.errors import EvalDataError, HubError
from support import hf_offline, write_hf_cache

MODEL = "bhadresh-savani/distilbert-base-uncased-emotion"
README = """---
configs:
- config_name: split
  data_files:
  - split: validation
    path: split/validation-*
  default: true
---
# emotion (test copy)
"""


def _cache_dataset(cache: Path, repo_id: str, texts: list[str], labels: list[int], names: list[str]) -> None:
    """Write a dataset repo into the HF cache the way `huggingface-cli download --repo-type dataset` does
    (``datasets--org--name/snapshots/<sha>/``, ``refs/main``), laid out like dair-ai/emotion (README configs,
    ``split/validation-*.parquet`` with a ClassLabel column)."""
    import datasets

    sha = "e" * 40
    repo = cache / ("datasets--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / sha
    (snap / "split").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    (snap / "README.md").write_text(README)
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    datasets.Dataset.from_dict({"text": texts, "label": labels}, features=feats).to_parquet(
        str(snap / "split" / "validation-00000-of-00001.parquet"))


@pytest.fixture
def emotion_hub(tiny_checkpoints, tmp_path, monkeypatch):
    """Offline HF cache holding the recipe's model (a tiny 3-label classifier) but not its data set."""
    import datasets

    cache = tmp_path / "hub"
    write_hf_cache(tiny_checkpoints["text-classification"], cache, MODEL)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    with hf_offline(cache, monkeypatch):
        yield cache


def test_recipe_dataset_not_cached_offline_is_one_clear_error(emotion_hub, tmp_path):
    r = CliRunner().invoke(app, ["optimize", "distilbert-base-uncased-emotion", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1, r.output  # a HubError, as for a model that is not cached
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert errors[0].startswith("error: `dair-ai/emotion` (eval data of recipe `distilbert-base-uncased-emotion`): "
                                f"not in the HF cache ({emotion_hub}) and the Hub is unreachable (offline"), errors[0]
    assert "huggingface-cli download --repo-type dataset dair-ai/emotion" in errors[0] and "--eval-data" in errors[0]
    assert not (tmp_path / "o").exists()


def test_recipe_dataset_is_the_default_eval_data(emotion_hub, tmp_path):
    texts = [f"I feel {w} today, number {i}" for i, w in enumerate(["sad", "fine", "great"] * 40)]
    labels = [i % 3 for i in range(len(texts))]
    _cache_dataset(emotion_hub, "dair-ai/emotion", texts, labels, ["negative", "neutral", "positive"])

    data = evaldata.hub_dataset("dair-ai/emotion", "text-classification", split="validation")
    assert data.name == "dair-ai/emotion" and data.texts == tuple(texts) and data.labels == tuple(labels)
    with pytest.raises(EvalDataError, match="no readable split 'test'"):
        evaldata.hub_dataset("dair-ai/emotion", "text-classification", split="test")
    with pytest.raises(EvalDataError, match="no column 'sentence'"):
        evaldata.hub_dataset("dair-ai/emotion", "text-classification", text="sentence")
    with pytest.raises(HubError, match="dair-ai/missing"):
        evaldata.hub_dataset("dair-ai/missing", "text-classification")

    b = pipeline.optimize("distilbert-base-uncased-emotion", "native", out=tmp_path / "out", precision="fp32")
    v = b.manifest["validation"]
    assert v["dataset"] == "dair-ai/emotion" and v["n"] == len(texts) and v["metric"] == "accuracy", v
    assert b.manifest["source"]["repo_id"] == MODEL
    # --eval-data still wins over the recipe's set, and the Hub id itself is not a short name
    ckpt = hub.resolve(MODEL)
    assert pipeline._eval_data("distilbert-base-uncased-emotion", ckpt, "builtin", "validation", None).name == "builtin"
    assert pipeline._eval_data(MODEL, ckpt, None, "validation", None).name == "builtin"
