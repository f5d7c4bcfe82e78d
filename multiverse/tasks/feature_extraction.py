"""feature-extraction: sentence embeddings equal to sentence-transformers ``encode``.

Masked pooling (never over padding) in the mode of ``1_Pooling/config.json``, then every
``Dense`` module listed in ``modules.json`` (weights read with ``safetensors.numpy``),
then L2 normalisation when ``modules.json`` lists ``Normalize`` (or the request asks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable, Sequence

import numpy as np
from pydantic import Field

from .. import metrics
from ..errors import InputError
from .base import Encoded, TaskParams
from .evaluation import EvalSet, TaskOutputs, TaskScore, bound
from .text_classification import class_label_set

OUTPUT = "last_hidden_state"
ACCEPTS_PAIRS = False

_ACTIVATIONS = {
    "torch.nn.modules.activation.Tanh": np.tanh,
    "torch.nn.modules.activation.GELU": lambda x: 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0))),
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.ReLU": lambda x: np.maximum(x, 0),
    "torch.nn.modules.activation.Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
}


def _erf(x: np.ndarray) -> np.ndarray:
    import math

    return np.vectorize(math.erf, otypes=[np.float64])(x)


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


# Pooling modes in sentence-transformers' concatenation order, with their legacy config keys
# (sentence_transformers/sentence_transformer/modules/pooling.py, v5.7).
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_MODE_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                     "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                     "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_MODE_ALIASES = {"mean_sqrt_len": "mean_sqrt_len_tokens"}
# Modules that leave the sentence embedding unchanged at inference time.
_IDENTITY_MODULES = ("Dropout",)


@dataclass(frozen=True)
class Pooling:
    """How token states become one vector, as sentence-transformers' ``Pooling`` module does.

    Attributes:
        modes: one or more of :data:`POOLING_MODES`; several are concatenated in that order
            (the output is ``len(modes) * hidden`` wide before any Dense module).
        include_prompt: False excludes the default prompt's tokens (``TextTokenizer.prompt_length``).
        normalize: L2-normalise the final vector (``Normalize`` module).
        dense: ``Dense`` modules applied after pooling, in order.
    """

    modes: tuple[str, ...] = ("mean",)
    include_prompt: bool = True
    normalize: bool = True
    dense: tuple[DenseLayer, ...] = field(default_factory=tuple)

    @property
    def mode(self) -> str:
        """The pooling mode(s) as one string (``mean``, or ``cls+mean`` when concatenated)."""
        return "+".join(self.modes)

    def describe(self) -> dict:
        """For the manifest: ``{"mode", "normalize", "dense": [[out, in], ...]}`` (+ ``include_prompt: false``)."""
        out = {"mode": self.mode, "normalize": self.normalize, "dense": [list(d.weight.shape) for d in self.dense]}
        if not self.include_prompt:
            out["include_prompt"] = False
        return out


def load_pooling(model_dir: str | Path) -> Pooling:
    """Read ``modules.json``, ``*_Pooling/config.json`` and ``*_Dense`` folders of a sentence-transformers layout.

    Without ``modules.json`` (a plain HF encoder): mean pooling, normalised, as TEI does.
    Modules: ``Transformer`` (the graph), ``Pooling``, ``Dense``, ``Normalize`` and ``Dropout``
    (identity at inference). Raises InputError on any other module (its output would be
    wrong without it), on a pooling mode or Dense activation this runtime does not implement.
    """
    model_dir = Path(model_dir)
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return Pooling()
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    modes, include_prompt, normalize, dense = ("mean",), True, False, []
    for i, module in enumerate(modules):
        kind = module.get("type", "")
        short = kind.rsplit(".", 1)[-1]
        folder = model_dir / module.get("path", "")
        if i == 0 and short == "Transformer":
            continue
        if short == "Pooling":
            cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            modes = _pooling_modes(cfg, folder)
            include_prompt = bool(cfg.get("include_prompt", True))
        elif short == "Dense":
            dense.append(_load_dense(folder))
        elif short == "Normalize":
            normalize = True
        elif short in _IDENTITY_MODULES:
            continue
        else:
            raise InputError(
                f"{modules_file} lists a {kind!r} module (#{i}); Multiverse implements only Transformer (first), "
                "Pooling, Dense, Normalize and Dropout, and an embedding without it would be wrong. "
                "Remove the module from modules.json only if the model was meant to run without it.")
    return Pooling(modes=modes, include_prompt=include_prompt, normalize=normalize, dense=tuple(dense))


def _pooling_modes(cfg: dict, folder: Path) -> tuple[str, ...]:
    """Pooling modes of a ``Pooling`` config: ``pooling_mode`` (str or list, v5) or the legacy
    ``pooling_mode_*`` booleans (every true one, concatenated; none true → mean)."""
    raw = cfg.get("pooling_mode")
    if raw is None:
        found = tuple(mode for key, mode in _LEGACY_MODE_KEYS.items() if cfg.get(key))
        return found or ("mean",)
    modes = (raw,) if isinstance(raw, str) else tuple(raw)
    modes = tuple(_MODE_ALIASES.get(m, m) for m in modes)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown or not modes:
        raise InputError(f"Pooling mode {raw!r} in {folder / 'config.json'} is not supported; "
                         f"supported: {', '.join(POOLING_MODES)}.")
    return modes


def _load_dense(folder: Path) -> DenseLayer:
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if act not in _ACTIVATIONS:
        raise InputError(f"Dense activation {act!r} in {folder} is not supported; supported: {sorted(_ACTIVATIONS)}.")
    if cfg.get("module_input_name", "sentence_embedding") != "sentence_embedding" or \
            (cfg.get("module_output_name") or "sentence_embedding") != "sentence_embedding":
        raise InputError(f"The Dense module in {folder} reads or writes {cfg.get('module_input_name')!r}/"
                         f"{cfg.get('module_output_name')!r}; only sentence-embedding Dense modules are supported.")
    if not (folder / "model.safetensors").is_file():
        raise InputError(f"{folder} has no model.safetensors (Multiverse never loads pickles); re-run "
                         "`multiverse optimize`, which converts pytorch_model.bin.")
    weights = load_file(str(folder / "model.safetensors"))
    bias = weights.get("linear.bias")
    return DenseLayer(weights["linear.weight"].astype(np.float32),
                      None if bias is None else bias.astype(np.float32), act)


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: Pooling, normalize: bool | None = None,
         prompt_length: int = 0) -> np.ndarray:
    """Sentence embeddings from token states, as sentence-transformers' ``Pooling._forward_padded``.

    Args:
        hidden: float32 [batch, seq_len, hidden].
        mask: int64 [batch, seq_len], 1 for real tokens (right-padded).
        normalize: override ``pooling.normalize``.
        prompt_length: leading prompt tokens per row; excluded from pooling when
            ``pooling.include_prompt`` is False.
    Returns:
        float32 [batch, dim] (dim = hidden × number of modes, or the last Dense's width);
        unit L2 norm when normalising.
    """
    mask = np.array(mask, copy=True)
    if prompt_length and not pooling.include_prompt:
        mask[:, :prompt_length] = 0
    m = mask.astype(np.float32)[:, :, None]
    parts = []
    for mode in pooling.modes:
        if mode == "cls":  # first real token (index 0 with right padding, or the first after the prompt)
            parts.append(hidden[np.arange(hidden.shape[0]), mask.argmax(axis=1)])
        elif mode == "max":
            parts.append(np.where(m > 0, hidden, -np.inf).max(axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            summed = (hidden * m).sum(axis=1)
            counts = np.clip(m.sum(axis=1), 1e-9, None)
            parts.append(summed / (np.sqrt(counts) if mode == "mean_sqrt_len_tokens" else counts))
        elif mode == "weightedmean":
            w = m * np.arange(1, hidden.shape[1] + 1, dtype=np.float32)[None, :, None]
            parts.append((hidden * w).sum(axis=1) / np.clip(w.sum(axis=1), 1e-9, None))
        elif mode == "lasttoken":
            seq_len = mask.shape[1]
            flipped = mask[:, ::-1]
            idx = np.where(flipped.max(axis=1) == 0, seq_len - 1, flipped.argmax(axis=1))
            parts.append((hidden * m)[np.arange(hidden.shape[0]), seq_len - idx - 1])
        else:  # pragma: no cover - rejected by load_pooling
            raise InputError(f"Unknown pooling mode {mode!r}.")
    out = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    for layer in pooling.dense:
        out = layer(out)
    if pooling.normalize if normalize is None else normalize:
        out = out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out.astype(np.float32)


def linear_probe(ref: np.ndarray, cand: np.ndarray, labels: Sequence) -> dict:
    """Downstream check for embeddings: a nearest-centroid probe (a linear classifier on unit vectors) fitted
    on the reference embeddings of the even-indexed examples, scored on the odd-indexed ones with the
    reference and with the candidate embeddings.

    Args: ref, cand float32 [n, dim]; labels length n. Returns ``probe_reference_accuracy``,
    ``probe_optimised_accuracy`` and ``probe_accuracy_loss`` (absolute, reference − optimised).
    """
    y = np.asarray([str(label) for label in labels])
    classes = sorted(set(y[0::2]))
    unit = lambda x: x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)  # noqa: E731
    centroids = unit(np.stack([unit(ref[0::2][y[0::2] == c]).mean(0) for c in classes]))
    predict = lambda x: np.asarray(classes)[(unit(x) @ centroids.T).argmax(1)]  # noqa: E731
    gold = y[1::2]
    r = float((predict(ref[1::2]) == gold).mean()) if len(gold) else 0.0
    o = float((predict(cand[1::2]) == gold).mean()) if len(gold) else 0.0
    return {"probe_reference_accuracy": r, "probe_optimised_accuracy": o, "probe_accuracy_loss": r - o}


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

    sentence_embeddings = True
    continuous_metric = True
    reports_metric_step = False
    fidelity_metric = "mean_cosine"
    eval_labels = "classes"
    eval_columns: dict = {"text": "text", "label": "label"}
    word_columns = None

    def collect(self, batches: Iterable[tuple[np.ndarray, Encoded]]) -> TaskOutputs:
        """``values``: the embeddings, float32 [n, dim]."""
        return TaskOutputs(np.concatenate([self.vectors(raw, enc) for raw, enc in batches], axis=0))

    @staticmethod
    def gate(data: EvalSet, reference: TaskOutputs, candidate: TaskOutputs, config: dict,
             tolerance: float) -> TaskScore:
        """Mean cosine to the reference embedding ≥ 1 − τ and min cosine ≥ 1 − 2τ. Details: both cosines,
        ``retrieval_agreement@1`` and with labels a nearest-centroid probe (:func:`linear_probe`)."""
        cos = metrics.cosine_rows(reference.values, candidate.values)
        details = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                   "retrieval_agreement@1": metrics.retrieval_agreement(reference.values, candidate.values, k=1)
                   if len(cos) > 1 else 1.0}
        if data.labels is not None:
            details.update(linear_probe(reference.values, candidate.values, data.labels))
        o = float(cos.mean())
        checks = (bound("mean_cosine", o, 1 - tolerance, 1 - o),
                  bound("min_cosine", float(cos.min()), 1 - 2 * tolerance, (1 - float(cos.min())) / 2))
        return TaskScore("mean_cosine", 1.0, o, checks, details)

    @classmethod
    def eval_set(cls, name: str, rows: list[tuple[str, dict]], found: str) -> EvalSet:
        """Column ``text`` and an optional ``label`` (class names for the probe); no pairs."""
        return class_label_set(name, cls.name, rows, found, pairs=False, labels_required=False)

    def __init__(self, model_dir: str | Path, config: dict):
        self.pooling = load_pooling(model_dir)
        self.prompt_length = 0  # leading prompt tokens that pooling skips (include_prompt: false)
        if not self.pooling.include_prompt:
            from .base import TextTokenizer

            self.prompt_length = TextTokenizer(model_dir).prompt_length

    def vectors(self, output: np.ndarray, enc: Encoded, params: dict | None = None) -> np.ndarray:
        """float32 [batch, dim] embeddings."""
        normalize = (params or {}).get("normalize")
        return pool(output, enc.attention_mask, self.pooling, None if normalize is None else bool(normalize),
                    prompt_length=self.prompt_length)

    def postprocess(self, output: np.ndarray, enc: Encoded, params: dict | None = None) -> list[list[float]]:
        """One embedding (a list of ``dim`` floats) per input (see :meth:`vectors`)."""
        return self.vectors(output, enc, params).tolist()

    class Params(TaskParams):
        """``normalize``, plus the truncation options."""

        field_help: ClassVar[dict[str, str]] = {**TaskParams.field_help,
                                                "normalize": "`normalize` must be true or false."}
        normalize: bool = Field(None, description="L2-normalise the embeddings (default: as the model's "
                                                  "modules.json says).")

    capability = "embed"
    root_wraps_single = False
    http_defaults: ClassVar[dict] = {}

    def info(self, dim: int | None = None) -> dict:
        """``{"embedding": {"pooling": "mean", "dim": dim}}`` (pooling modes joined with ``+`` when several)."""
        return {"embedding": {"pooling": self.pooling.mode, "dim": dim}}
