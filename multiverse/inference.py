"""The end-to-end inference pipeline: tokenize → ONNX Runtime runs → postprocess.

One pipeline for every caller: :meth:`Predictor.predict` (library, benchmark) is
``encode`` → :meth:`Predictor.run_batched` → ``postprocess``, and the server's engine calls the
same ``encode``, the same run plan (:func:`plan_runs`), the same :meth:`Predictor.run` per run
and the same ``postprocess``, only interleaving the runs of concurrent requests. So what is
measured is what is served, and validation runs candidates in the shapes serving uses.

**Batch invariance.** ONNX Runtime's dynamic int8 (``DynamicQuantizeLinear`` feeding
``MatMulInteger``/``DynamicQuantizeMatMul``/``QAttention``) computes one activation scale per
run over every row, padding included, so a text's int8 output would change with its
neighbours (max |Δ| 0.019 on MiniLM for "Thanks!" next to a 500-token paragraph). Graphs with
such nodes therefore run **one row per ONNX Runtime run**, trimmed to the row's own length:
a text's result is then bit-identical alone or in any batch. So do OpenVINO int8 IRs: with CPU dynamic
quantization (``DYNAMIC_QUANTIZATION_GROUP_SIZE`` in the IR's runtime options; the all-MiniLM-L6-v2
``ov s8 dynamic g32`` bundle: max |Δ| 2.4e-3 with its neighbours) and with static ``FakeQuantize`` scales too
(the DistilBERT-base-shaped ``ov s8 static`` bundle: 8.1e-4 in batches of 16 built-in texts, as the CPU plugin
picks kernels by shape and a last-bit difference before a FakeQuantize moves a value a whole quantization step);
both 0 one row per run.
fp32 graphs (and int8 graphs with static scales) run rows together, up to ``max_run_tokens`` padded tokens per run.

Imports only onnxruntime, tokenizers and numpy (plus the standard library): never torch or
transformers.
"""

from __future__ import annotations

import json
import mmap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputError
from .runtime import make_session
from .tasks import Encoded, TaskParams, TextTokenizer, make_handler

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


#: Padded tokens (rows × longest row) of one ONNX Runtime run, unless told otherwise (serve's ``--max-run-tokens``).
DEFAULT_MAX_RUN_TOKENS = 4096

# Op types whose activation quantization parameters are computed from the run's whole input
# (onnxruntime.quantization dynamic mode; QAttention is fed by a DynamicQuantizeLinear).
_PER_RUN_SCALE_OPS = (b"DynamicQuantizeLinear", b"DynamicQuantizeMatMul", b"DynamicQuantizeLSTM")
_OV_DYNAMIC_GROUP = b'<DYNAMIC_QUANTIZATION_GROUP_SIZE value="'  # an IR's rt_info runtime option (model.xml)
_OV_FAKE_QUANTIZE = b'type="FakeQuantize"'  # an IR layer of static int8 (NNCF's quantize)


def computes_scales_per_run(model_path: str | Path) -> bool:
    """True when a row's output depends on the other rows of its run: an ONNX graph with ONNX Runtime's
    dynamic-quantization ops (scales per run), or an OpenVINO IR (``.xml``) with ``FakeQuantize`` nodes (static
    int8) or whose runtime options set a non-zero ``DYNAMIC_QUANTIZATION_GROUP_SIZE`` (the CPU plugin's dynamic
    quantization, as ``ovquant`` writes it); see the module docstring for the measurements.

    Reads the file's bytes (no ``onnx``/``openvino`` import: this is on the serving path); external weight
    files are not read. Such a graph's output for one row depends on the other rows of its run (see the
    module docstring).
    """
    with open(model_path, "rb") as fh:
        try:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if any(data.find(op) >= 0 for op in _PER_RUN_SCALE_OPS) or data.find(_OV_FAKE_QUANTIZE) >= 0:
                    return True
                at = data.rfind(_OV_DYNAMIC_GROUP)
                if at < 0:
                    return False
                value = data[at + len(_OV_DYNAMIC_GROUP):at + len(_OV_DYNAMIC_GROUP) + 32].split(b'"', 1)[0]
                return value.strip() not in (b"0", b"")
        except ValueError:  # empty file
            return False


def plan_runs(lengths: Sequence[int], max_run_tokens: int, per_row: bool) -> list[tuple[int, int]]:
    """Split a batch's rows, in order, into ONNX Runtime runs.

    Args:
        lengths: real (non-pad) tokens of each row.
        max_run_tokens: cap on rows × longest row of one run (a single longer row runs alone).
        per_row: one row per run (graphs with per-run activation scales).
    Returns:
        ``[(first_row, end_row), ...]`` covering ``range(len(lengths))`` in order.
    """
    if per_row:
        return [(i, i + 1) for i in range(len(lengths))]
    runs: list[tuple[int, int]] = []
    start, longest = 0, 0
    for i, n in enumerate(lengths):
        wider = max(longest, int(n))
        if i > start and (i + 1 - start) * wider > max_run_tokens:
            runs.append((start, i))
            start, wider = i, int(n)
        longest = wider
    if len(lengths):
        runs.append((start, len(lengths)))
    return runs


def slice_rows(enc: Encoded, a: int, b: int) -> Encoded:
    """Rows ``a:b`` of a right-padded batch, trimmed to their longest real length (no copy when nothing changes)."""
    mask = enc.arrays["attention_mask"]
    if a == 0 and b == mask.shape[0]:
        width = mask.shape[1]
        if width and mask[:, -1].any():
            return enc
    width = max(1, int(mask[a:b].sum(axis=1).max()))
    arrays = {k: v[a:b, :width] for k, v in enc.arrays.items()}
    return Encoded(arrays=arrays, encodings=enc.encodings[a:b], texts=enc.texts[a:b],
                   n_tokens=int(arrays["attention_mask"].sum()))


def join_outputs(parts: Sequence[np.ndarray], width: int) -> np.ndarray:
    """Concatenate run outputs along rows; per-token outputs [rows, seq, ...] are zero-padded to ``width``."""
    if len(parts) == 1 and (parts[0].ndim < 3 or parts[0].shape[1] == width):
        return parts[0]
    if parts[0].ndim >= 3:
        padded = []
        for p in parts:
            if p.shape[1] < width:
                pad = [(0, 0)] * p.ndim
                pad[1] = (0, width - p.shape[1])
                p = np.pad(p, pad)
            padded.append(p)
        parts = padded
    return np.concatenate(parts, axis=0)


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
        per_row: run one row per ONNX Runtime run (default: when the graph computes activation
            scales per run, :func:`computes_scales_per_run`).
        max_run_tokens: padded-token cap of one run when rows run together.
    """

    def __init__(self, model_path: str | Path, model_dir: str | Path, task: str, *, threads: int | None = None,
                 session_config: dict[str, str] | None = None, max_length: int | None = None,
                 per_row: bool | None = None, max_run_tokens: int = DEFAULT_MAX_RUN_TOKENS):
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
        self.per_row = computes_scales_per_run(self.model_path) if per_row is None else bool(per_row)
        self.max_run_tokens = int(max_run_tokens)

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    def normalize(self, inputs: Any) -> list:
        """See :func:`normalize_inputs`, for this model's task."""
        return normalize_inputs(inputs, self.handler.accepts_pairs, requires_pairs=self.handler.requires_pairs)

    def encode(self, inputs: Inputs) -> Encoded:
        """Tokenize (long texts pre-cut, right-padded, truncated) for exactly this graph's inputs."""
        return self.tokenizer.encode(inputs, self.input_names)

    def run(self, enc: Encoded) -> np.ndarray:
        """One ONNX Runtime run over ``enc`` as given: float32 [batch, seq_len, hidden] or [batch, num_labels]
        (or [batch, seq_len, num_labels] per token). Use :meth:`run_batched` for results that do not depend
        on the batch."""
        return self.session.run([self.output_name], enc.arrays)[0]

    def plan(self, enc: Encoded, max_run_tokens: int | None = None) -> list[tuple[int, int]]:
        """The runs :meth:`run_batched` makes for ``enc``: ``[(first_row, end_row), ...]`` (see :func:`plan_runs`)."""
        lengths = enc.arrays["attention_mask"].sum(axis=1).tolist()
        return plan_runs(lengths, int(max_run_tokens or self.max_run_tokens), self.per_row)

    def run_batched(self, enc: Encoded, max_run_tokens: int | None = None) -> np.ndarray:
        """The raw output of every row of ``enc``, run as :meth:`plan` says (one row per run for dynamic int8).

        Returns float32 [batch, ...] as :meth:`run`, per-token outputs padded to ``enc``'s width.
        A row's values do not depend on the other rows (bit-identical for per-row graphs;
        to float rounding, ≤ 1e-5, for rows run together in fp32).
        """
        parts = [self.run(slice_rows(enc, a, b)) for a, b in self.plan(enc, max_run_tokens)]
        return join_outputs(parts, enc.arrays["input_ids"].shape[1])

    def postprocess(self, output: np.ndarray, enc: Encoded, params: dict | None = None) -> list:
        """Task results from :meth:`run_batched`'s output (shapes: see the task's ``Handler.postprocess``)."""
        return self.handler.postprocess(output, enc, params or {})

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
        """Run the whole pipeline on one batch: ``encode`` → :meth:`run_batched` → :meth:`postprocess`.

        Raises InputError for invalid inputs, InputTooLong when ``params`` say ``truncate: false`` and a text
        has more tokens than :attr:`max_length` (as the server answers).
        """
        t0 = time.perf_counter()
        items = self.normalize(inputs)
        enc = self.encode(items)
        if not TaskParams.truncates(params or {}):
            enc.check_fits(self.max_length)
        t1 = time.perf_counter()
        output = self.run_batched(enc)
        t2 = time.perf_counter()
        results = self.postprocess(output, enc, params)
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
