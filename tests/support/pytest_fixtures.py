"""Shared pytest fixtures. Import them in ``tests/conftest.py``::

    from support.pytest_fixtures import (  # noqa: F401
        fixture_cache_dir, hf_hub_cache, offline_hf_hub, tiny_checkpoint_matrix, trained_checkpoints)

Trained checkpoints are cached across runs in ``$MULTIVERSE_FIXTURE_CACHE``
(default ``~/.cache/multiverse-fixtures``); tiny ones live in pytest's session tmp folder.
Every mapping builds an entry on first access only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import (MODEL_TYPES, TASKS, bbc_classifier, bbc_ranker, bbc_weak_classifier, hf_offline, tiny_checkpoint,
                          wnut_ner, write_hf_cache)


class LazyCheckpoints(Mapping):
    """Read-only mapping key → checkpoint folder, built by ``builders[key]()`` on first access."""

    def __init__(self, builders: dict[object, Callable[[], Path]]):
        self._builders, self._built = builders, {}

    def __getitem__(self, key) -> Path:
        if key not in self._built:
            self._built[key] = Path(self._builders[key]())
        return self._built[key]

    def __iter__(self):
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


def fixture_cache_root() -> Path:
    """``$MULTIVERSE_FIXTURE_CACHE`` or ``~/.cache/multiverse-fixtures``."""
    return Path(os.environ.get("MULTIVERSE_FIXTURE_CACHE") or "~/.cache/multiverse-fixtures").expanduser()


@pytest.fixture(scope="session")
def fixture_cache_dir() -> Path:
    """Folder reused across test runs for expensive fixtures (created)."""
    root = fixture_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint_matrix(tmp_path_factory) -> LazyCheckpoints:
    """``{(task, model_type): folder}`` of :func:`tiny_checkpoint` for all tasks × bert/distilbert/roberta."""
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    return LazyCheckpoints({(t, m): (lambda t=t, m=m: tiny_checkpoint(t, root / f"{m}-{t}", m))
                            for t in TASKS for m in MODEL_TYPES})


@pytest.fixture(scope="session")
def trained_checkpoints(fixture_cache_dir) -> LazyCheckpoints:
    """``{task: folder}`` of the MiniLM-based trained checkpoints (cached across runs; 1–2 min each to build).

    Keys: ``text-classification`` (:func:`bbc_classifier`), ``token-classification``
    (:func:`wnut_ner`), ``ranking`` (:func:`bbc_ranker`), ``weak-text-classification``
    (:func:`bbc_weak_classifier`, with its ``eval-validation.jsonl`` / ``eval-test.jsonl``); each folder has
    ``training_report.json``.
    """
    return LazyCheckpoints({
        "text-classification": lambda: bbc_classifier(fixture_cache_dir / "bbc-classifier"),
        "token-classification": lambda: wnut_ner(fixture_cache_dir / "wnut-ner"),
        "ranking": lambda: bbc_ranker(fixture_cache_dir / "bbc-ranker"),
        "weak-text-classification": lambda: bbc_weak_classifier(fixture_cache_dir / "bbc-weak-classifier"),
    })


@dataclass(frozen=True)
class HubCache:
    """A simulated Hub cache: ``repos[task]`` is the repo id of the tiny bert checkpoint for ``task``."""

    cache_dir: Path
    repos: dict[str, str]
    revisions: dict[str, str]


@pytest.fixture(scope="session")
def hf_hub_cache(tmp_path_factory, tiny_checkpoint_matrix) -> HubCache:
    """Tiny bert checkpoints of every task in an HF cache as ``multiverse-test/tiny-bert-<task>``."""
    cache = tmp_path_factory.mktemp("hf-cache")
    repos = {t: f"multiverse-test/tiny-bert-{t}" for t in TASKS}
    revisions = {t: write_hf_cache(tiny_checkpoint_matrix[(t, "bert")], cache, repo) for t, repo in repos.items()}
    return HubCache(cache, repos, revisions)


@pytest.fixture
def offline_hf_hub(hf_hub_cache, monkeypatch) -> HubCache:
    """:func:`hf_hub_cache` with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing at it (env + in-process constants)."""
    with hf_offline(hf_hub_cache.cache_dir, monkeypatch):
        yield hf_hub_cache
