"""feature-extraction: sentence embeddings equal to sentence-transformers ``encode``.

Masked pooling (never over padding) in the mode of ``1_Pooling/config.json``, then every
``Dense`` module listed in ``modules.json`` (weights read with ``safetensors.numpy``),
then L2 normalisation when ``modules.json`` lists ``Normalize`` (or the request asks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .base import Encoded

OUTPUT = "last_hidden_state"
ACCEPTS_PAIRS = False

_ACTIVATIONS = {
    "torch.nn.modules.activation.Tanh": np.tanh,
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.ReLU": lambda x: np.maximum(x, 0),
    "torch.nn.modules.activation.Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
}


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers ``Dense`` module: y = act(x @ weight.T + bias); weight [out, in] float32."""

    weight: np.ndarray
    bias: np.ndarray | None
    activation: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return _ACTIVATIONS[self.activation](y).astype(np.float32)


@dataclass(frozen=True)
class Pooling:
    """How token states become one vector: ``mode`` in cls|mean|max|mean_sqrt_len|lasttoken."""

    mode: str = "mean"
    normalize: bool = True
    dense: tuple[DenseLayer, ...] = field(default_factory=tuple)

    def describe(self) -> dict:
        return {"mode": self.mode, "normalize": self.normalize,
                "dense": [list(d.weight.shape) for d in self.dense]}


def load_pooling(model_dir: str | Path) -> Pooling:
    """Read ``modules.json``, ``*_Pooling/config.json`` and ``*_Dense`` folders of a sentence-transformers layout.

    Without ``modules.json`` (a plain HF encoder): mean pooling, normalised, as TEI does.
    Raises InputError on a Dense activation this runtime does not implement.
    """
    model_dir = Path(model_dir)
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return Pooling()
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    mode, normalize, dense = "mean", False, []
    for module in modules:
        kind = module.get("type", "")
        folder = model_dir / module.get("path", "")
        if kind.endswith("Pooling"):
            cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            mode = _pooling_mode(cfg)
        elif kind.endswith("Dense"):
            dense.append(_load_dense(folder))
        elif kind.endswith("Normalize"):
            normalize = True
    return Pooling(mode=mode, normalize=normalize, dense=tuple(dense))


def _pooling_mode(cfg: dict) -> str:
    for key, mode in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                      ("pooling_mode_max_tokens", "max"), ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
                      ("pooling_mode_lasttoken", "lasttoken")):
        if cfg.get(key):
            return mode
    return "mean"


def _load_dense(folder: Path) -> DenseLayer:
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if act not in _ACTIVATIONS:
        raise InputError(f"Dense activation {act!r} in {folder} is not supported; supported: {sorted(_ACTIVATIONS)}.")
    weights = load_file(str(folder / "model.safetensors"))
    bias = weights.get("linear.bias")
    return DenseLayer(weights["linear.weight"].astype(np.float32),
                      None if bias is None else bias.astype(np.float32), act)


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: Pooling, normalize: bool | None = None) -> np.ndarray:
    """Sentence embeddings from token states.

    Args:
        hidden: float32 [batch, seq_len, hidden].
        mask: int64 [batch, seq_len], 1 for real tokens (right-padded).
        normalize: override ``pooling.normalize``.
    Returns:
        float32 [batch, dim]; unit L2 norm when normalising.
    """
    m = mask.astype(np.float32)[:, :, None]
    if pooling.mode == "cls":
        out = hidden[:, 0]
    elif pooling.mode == "max":
        out = np.where(m > 0, hidden, -1e9).max(axis=1)
    elif pooling.mode == "lasttoken":
        last = mask.sum(axis=1).astype(np.int64) - 1
        out = hidden[np.arange(hidden.shape[0]), last]
    else:
        summed = (hidden * m).sum(axis=1)
        counts = np.clip(m.sum(axis=1), 1e-9, None)
        out = summed / (np.sqrt(counts) if pooling.mode == "mean_sqrt_len" else counts)
    for layer in pooling.dense:
        out = layer(out)
    if pooling.normalize if normalize is None else normalize:
        out = out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out.astype(np.float32)


class Handler:
    """Turns ``last_hidden_state`` into embeddings (lists of floats)."""

    name = "feature-extraction"
    output = OUTPUT
    accepts_pairs = ACCEPTS_PAIRS
    requires_pairs = False
    reference_class = "AutoModel"
    optimum_task = "feature-extraction"
    pipeline_task = "feature-extraction"
    pipeline_kwargs: dict = {}
    ort_model_class = "ORTModelForFeatureExtraction"

    @staticmethod
    def agreement(reference: list, candidate: list) -> dict:
        """``mean_cosine`` and ``min_cosine`` of the embeddings."""
        cos = []
        for x, y in zip(reference, candidate):
            x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
            cos.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12)))
        return {"n": len(reference), "mean_cosine": sum(cos) / len(cos), "min_cosine": min(cos)}

    def __init__(self, model_dir: str | Path, config: dict):
        self.pooling = load_pooling(model_dir)

    def vectors(self, output: np.ndarray, enc: Encoded, params: dict | None = None) -> np.ndarray:
        """float32 [batch, dim] embeddings."""
        normalize = (params or {}).get("normalize")
        return pool(output, enc.attention_mask, self.pooling, None if normalize is None else bool(normalize))

    def postprocess(self, output: np.ndarray, enc: Encoded, params: dict | None = None) -> list[list[float]]:
        return self.vectors(output, enc, params).tolist()
