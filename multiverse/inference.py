"""The end-to-end inference pipeline: tokenize → ONNX Runtime → postprocess.

Used by serve, benchmark and validate, so what is measured is what is served. Imports only
onnxruntime, tokenizers and numpy (plus the standard library): never torch or transformers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputError
from .runtime import make_session
from .tasks import Encoded, TextTokenizer, make_handler

Inputs = Sequence[str] | Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Prediction:
    """Results of one batch and where the time went.

    Attributes:
        results: one task result per input (see the task handlers).
        tokenization_ms, inference_ms, postprocess_ms, total_ms: wall-clock milliseconds
            (``time.perf_counter``) of each step and of the whole pipeline.
        n_tokens: real (non-pad) tokens in the batch.
    """

    results: list[Any]
    tokenization_ms: float
    inference_ms: float
    postprocess_ms: float
    total_ms: float
    n_tokens: int


def normalize_inputs(inputs: Any, accepts_pairs: bool, requires_pairs: bool) -> list:
    """Check and normalise request inputs to a list of texts or of (text, text_pair) tuples.

    Accepts ``str``, ``[str, ...]``, ``[str, str]`` pairs as ``[[a, b], ...]``.
    Raises InputError for empty input, wrong types, or pairs sent to a single-text task.
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)):
        raise InputError("`inputs` must be a string, a list of strings, or a list of [text, text_pair] pairs.")
    if len(inputs) == 0:
        raise InputError("`inputs` is empty: send at least one text.")
    out: list = []
    for item in inputs:
        if isinstance(item, str):
            if requires_pairs:
                raise InputError("This model ranks pairs: send `inputs` as [[query, passage], ...].")
            out.append(item)
        elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            if not accepts_pairs:
                raise InputError("This model takes single texts, not pairs: send `inputs` as a list of strings.")
            out.append((item[0], item[1]))
        else:
            raise InputError("Each input must be a string or a [text, text_pair] pair of strings.")
    return out


class Predictor:
    """One ONNX model with its tokenizer and task post-processing.

    Args:
        model_path: the ``.onnx`` file.
        model_dir: folder with ``tokenizer.json``, ``config.json`` and, for embeddings,
            ``modules.json`` / ``1_Pooling``.
        task: one of ``multiverse.tasks.TASKS``.
        threads: ORT intra-op threads (default: physical cores, see ``runtime.physical_cores``).
        session_config: target session options (``session.x64quantprecision`` ...).
        max_length: truncation length in tokens (default: the model's real position limit).
    """

    def __init__(self, model_path: str | Path, model_dir: str | Path, task: str, *, threads: int | None = None,
                 session_config: dict[str, str] | None = None, max_length: int | None = None):
        self.model_path = Path(model_path)
        self.model_dir = Path(model_dir)
        self.task = task
        self.config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        self.session = make_session(self.model_path, threads, session_config)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = TextTokenizer(self.model_dir, max_length)
        self.handler = make_handler(task, self.model_dir, self.config)
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = self.handler.output if self.handler.output in outputs else outputs[0]

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    def normalize(self, inputs: Any) -> list:
        """See :func:`normalize_inputs`, for this model's task."""
        return normalize_inputs(inputs, self.handler.accepts_pairs, requires_pairs=self.task == "ranking")

    def encode(self, inputs: Inputs) -> Encoded:
        """Tokenize (right-padded, truncated) for exactly this graph's inputs."""
        return self.tokenizer.encode(inputs, self.input_names)

    def run(self, enc: Encoded) -> np.ndarray:
        """The task's raw output: float32 [batch, seq_len, hidden] or [batch, num_labels] (or per token)."""
        return self.session.run([self.output_name], enc.arrays)[0]

    def text_of_length(self, text: str, n_tokens: int) -> str:
        """A prefix of ``text`` that tokenizes to exactly ``n_tokens`` tokens (special tokens included) when
        ``text`` is long enough; used to benchmark real text at an exact sequence length."""
        enc = self.tokenizer.tokenizer.encode(text)
        real = [o for o, s in zip(enc.offsets, enc.special_tokens_mask) if not s]
        n_special = len(enc.ids) - len(real)
        if not real:
            return text
        keep = max(1, min(len(real), n_tokens - n_special))
        cut = text[: real[keep - 1][1]]
        # Cutting inside a word can re-tokenize differently; trim/extend by whole tokens until exact.
        for _ in range(8):
            got = len(self.tokenizer.tokenizer.encode(cut).ids)
            if got == n_tokens or keep >= len(real) and got < n_tokens:
                break
            keep += -1 if got > n_tokens else 1
            keep = max(1, min(keep, len(real)))
            cut = text[: real[keep - 1][1]]
        return cut

    def predict(self, inputs: Any, params: dict | None = None) -> Prediction:
        """Run the whole pipeline on one batch. Raises InputError for invalid inputs."""
        t0 = time.perf_counter()
        items = self.normalize(inputs)
        enc = self.encode(items)
        t1 = time.perf_counter()
        output = self.run(enc)
        t2 = time.perf_counter()
        results = self.handler.postprocess(output, enc, params or {})
        t3 = time.perf_counter()
        return Prediction(results, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t3 - t0) * 1e3, enc.n_tokens)

    @classmethod
    def from_bundle(cls, bundle: "str | Path | Any", *, threads: int | None = None,
                    allow_isa_mismatch: bool = False, verify: bool = True) -> "Predictor":
        """Load a bundle written by ``multiverse optimize`` (hashes and schema checked, fails closed).

        Raises BundleError (corrupt or unknown schema) and IsaMismatchError (host lacks the
        target's CPU flags, unless ``allow_isa_mismatch``, which then also sets
        ``session.x64quantprecision=1``).
        """
        from .bundle import Bundle, load

        b = bundle if isinstance(bundle, Bundle) else load(bundle, verify=verify)
        session_config = b.session_config(allow_isa_mismatch=allow_isa_mismatch)
        p = cls(b.model_path, b.path, b.task, threads=threads, session_config=session_config,
                max_length=b.manifest.get("max_sequence_length"))
        p.bundle = b
        return p
