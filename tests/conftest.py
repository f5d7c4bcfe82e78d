"""Shared fixtures: tiny random checkpoints and bundles (built once per session), offline HF cache.

Nothing here touches the Hub: HF_HUB_OFFLINE=1 is set for the whole run.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenVINO's converter sends a telemetry event (a forked process) when openvino is first imported, as the test
# modules' importorskip does at collection: import it first as Multiverse does, without telemetry
try:
    from multiverse.extras import import_openvino

    import_openvino()
except ImportError:
    pass

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


class _LazyBundles(dict):
    """task → bundle, each built by ``build(task)`` on first use (a test that needs one task's bundle does not pay
    for the others)."""

    def __init__(self, build):
        super().__init__()
        self._build = build

    def __missing__(self, task):
        self[task] = bundle = self._build(task)
        return bundle


@pytest.fixture(scope="session")
def tiny_ov_bundles(tiny_checkpoints, tmp_path_factory) -> dict:
    """task → :class:`~multiverse.bundle.Bundle` of the tiny checkpoint built with ``--runtime openvino`` (an IR
    bundle: ``model.xml`` + ``model.bin``; OpenVINO candidates only, one trial), built when a test first asks for
    that task. Tolerance 0.1: static int8 scales on these random hidden-32 encoders agree with PyTorch on only
    ~95 % of labels (ONNX Runtime's per-row dynamic scales pass at 0.01), and the tests that use these pin the
    bundle and the serving path, not the accuracy (the gate's own tests do)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from multiverse.pipeline import optimize

    out = tmp_path_factory.mktemp("ov-bundles")
    return _LazyBundles(lambda task: optimize(str(tiny_checkpoints[task]), TARGET, out=out / task,
                                              runtime="openvino", max_trials=1, tolerance=0.1))


@pytest.fixture(scope="session")
def tiny_ov_bundle(tiny_ov_bundles) -> Path:
    """The folder of the feature-extraction bundle of :func:`tiny_ov_bundles`."""
    return tiny_ov_bundles["feature-extraction"].path


@pytest.fixture(scope="session")
def minilm_bundle(tmp_path_factory) -> Path:
    """The real all-MiniLM-L6-v2 (embedded default) optimized for this host, ONNX Runtime dynamic int8 whatever the
    timings say (the tests that use it pin that runtime's behaviour: per-row runs, fused graphs)."""
    from multiverse.pipeline import optimize

    return optimize(None, TARGET, out=tmp_path_factory.mktemp("minilm"), precision="int8", runtime="onnxruntime").path
