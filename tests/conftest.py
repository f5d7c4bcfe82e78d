"""Shared fixtures: tiny random checkpoints and bundles (built once per session), offline HF cache.

Nothing here touches the Hub: HF_HUB_OFFLINE=1 is set for the whole run.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from support import TASKS, tiny_checkpoint  # noqa: E402
from support.pytest_fixtures import (  # noqa: E402,F401
    fixture_cache_dir, hf_hub_cache, offline_hf_hub, tiny_checkpoint_matrix, trained_checkpoints)

TARGET = "native"


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """task → folder of a tiny random BERT checkpoint (hidden 32, 2 layers)."""
    root = tmp_path_factory.mktemp("tiny")
    return {task: tiny_checkpoint(task, root / task) for task in TASKS}


@pytest.fixture(scope="session")
def tiny_bundles(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """task → bundle folder written by the real pipeline for each tiny checkpoint."""
    from multiverse.pipeline import optimize

    out = tmp_path_factory.mktemp("bundles")
    return {task: optimize(str(path), TARGET, out=out / task).path for task, path in tiny_checkpoints.items()}


@pytest.fixture(scope="session")
def tiny_ov_bundle(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny feature-extraction checkpoint built with ``--runtime openvino`` (an IR bundle: ``model.xml`` +
    ``model.bin``), one trial. Tolerance 0.1: static int8 on these random hidden-32 encoders is not what the
    tests that use it check (the gate's own tests do)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from multiverse.pipeline import optimize

    out = tmp_path_factory.mktemp("ov-bundle")
    return optimize(str(tiny_checkpoints["feature-extraction"]), TARGET, out=out, runtime="openvino", max_trials=1,
                    tolerance=0.1).path


@pytest.fixture(scope="session")
def minilm_bundle(tmp_path_factory) -> Path:
    """The real all-MiniLM-L6-v2 (embedded default) optimized for this host, ONNX Runtime dynamic int8 whatever the
    timings say (the tests that use it pin that runtime's behaviour: per-row runs, fused graphs)."""
    from multiverse.pipeline import optimize

    return optimize(None, TARGET, out=tmp_path_factory.mktemp("minilm"), precision="int8", runtime="onnxruntime").path
