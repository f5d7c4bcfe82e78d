"""Stage 2: export a checkpoint to fp32 ONNX with optimum-onnx, and the export check.

The export check runs the graph and the PyTorch model on the same right-padded batches of
mixed lengths (including one at the model's full length) and fails when the max abs
difference over real (non-pad) positions exceeds the tolerance (DESIGN.md §5: 1e-4).
For feature-extraction it also compares whole embeddings with ``SentenceTransformer.encode``
on raw text, which sees what a graph check on Multiverse's own token ids cannot
(lower-casing, prompts, truncation, pooling and Dense/Normalize modules from
``sentence_bert_config.json`` and ``modules.json``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ExportError
from .hub import Checkpoint
from .tasks import get_task

OPSET = 18  # optimum-onnx's recommended minimum for BERT-family exports
# Above this many bytes a graph is saved with its tensors in external data: protobuf cannot serialise a message
# of 2 GiB or more (onnx.checker's MAXIMUM_PROTOBUF); 16 MiB of headroom covers the graph structure itself.
EXTERNAL_DATA_BYTES = 2**31 - 2**24


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX graph on disk and what was done to it.

    Attributes:
        path: the ``.onnx`` file.
        model_dir: folder with the tokenizer/config/sentence-transformers files for it.
        stage: ``fp32`` (exported), ``fused`` or ``int8``.
        opset: ONNX opset of the default domain.
        max_abs_diff: largest |ONNX − PyTorch| seen by the last check, or None.
        fused_ops: operator counts after fusion (ORT ``get_fused_operator_statistics``).
        quantization: the applied quantization config (dict), if any.
    """

    path: Path
    model_dir: Path
    stage: str
    opset: int
    max_abs_diff: float | None = None
    fused_ops: dict = field(default_factory=dict)
    fusion_warnings: tuple[str, ...] = ()
    quantization: dict | None = None

    @property
    def size_bytes(self) -> int:
        """Bytes of the graph file plus every external-data file it names (read from the graph, not guessed)."""
        from .graphfiles import external_files

        return self.path.stat().st_size + sum((self.path.parent / f).stat().st_size for f in external_files(self.path))

    @property
    def needs_external_data(self) -> bool:
        """True when a graph of this size must be saved with external data (see :data:`EXTERNAL_DATA_BYTES`)."""
        return self.size_bytes > EXTERNAL_DATA_BYTES


def export(ckpt: Checkpoint, out: str | Path, *, check: bool = True, tolerance: float = 1e-4) -> OnnxModel:
    """Export ``ckpt`` to ``out/model.onnx`` (fp32, dynamic axes batch × sequence) and check it.

    The tokenizer files (``tokenizer.json`` always, converted from a slow tokenizer if
    needed) and the sentence-transformers module files land in ``out`` too.

    Raises ExportError when optimum fails or the check exceeds ``tolerance``.
    """
    from optimum.exporters.onnx import main_export

    from .bundle import copy_model_files

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), _quiet_loggers():
            main_export(
                str(ckpt.path), output=str(out), task=get_task(ckpt.task).optimum_task, opset=OPSET,
                device="cpu", do_validation=False, library_name="transformers", no_post_process=True,
            )
    except Exception as exc:
        raise ExportError(
            f"optimum-onnx could not export {ckpt.name} ({type(exc).__name__}: {exc}). "
            "Check that the checkpoint loads with transformers, or report the model type."
        ) from exc
    copy_model_files(ckpt.path, out)  # the checkpoint's own tokenizer and module files, as sentence-transformers reads them
    if not (out / "tokenizer.json").is_file():
        raise ExportError(f"{ckpt.name} has no fast tokenizer (tokenizer.json); save one with a fast tokenizer.")
    import onnx

    opset = next((o.version for o in onnx.load(str(out / "model.onnx"), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), OPSET)
    model = OnnxModel(path=out / "model.onnx", model_dir=out, stage="fp32", opset=opset)
    if check:
        model = replace(model, max_abs_diff=check_against_reference(ckpt, model, tolerance))
        if get_task(ckpt.task).sentence_embeddings:
            check_sentence_transformers_parity(ckpt, model)
    return model


def proto_bytes(proto) -> int:
    """Serialised size of a ``ModelProto`` in bytes, or ``2**31`` when it is too large to serialise at all
    (protobuf's ``ByteSize`` raises ``EncodeError`` past 2 GiB)."""
    from google.protobuf.message import EncodeError

    try:
        return proto.ByteSize()
    except EncodeError:
        return 2**31


def save_graph(proto, path: str | Path) -> Path:
    """Save an ONNX ``ModelProto`` (tensors loaded in memory) to ``path``: one file, or, when it is over
    :data:`EXTERNAL_DATA_BYTES`, the graph plus one external-data file ``<name>.data`` beside it
    (tensors under 1 KiB stay inline). A stale ``<name>.data`` is removed first (``onnx`` appends to an
    existing external-data file). Returns ``path``. Raises ``onnx``/OS errors; callers wrap them.
    """
    import onnx

    path = Path(path)
    data = path.parent / (path.name + ".data")
    data.unlink(missing_ok=True)
    big = proto_bytes(proto) > EXTERNAL_DATA_BYTES
    onnx.save_model(proto, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return path


@contextlib.contextmanager
def _quiet_loggers():
    names = ("optimum", "transformers", "torch.onnx")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for n, lvl in levels.items():
                logging.getLogger(n).setLevel(lvl)


def probe_batches(task: str, max_length: int) -> list[list]:
    """Right-padded mixed-length batches for graph checks: the built-in texts in batches of
    4 (short and long together), one batch of 1, and one text at exactly ``max_length`` tokens."""
    from .evaldata import builtin

    data = builtin(task)
    if data.groups:  # (query, passage) pairs
        items: list = [(g.query, p) for g in data.groups[:6] for p in g.passages[:2]]
    else:
        items = list(data.texts[:16])
    long_text = " ".join(str(t) for t in (data.texts or [g.passages[0] for g in data.groups]))
    batches = [items[i:i + 4] for i in range(0, len(items), 4)] + [items[:1]]
    batches.append([(items[0][0], long_text)] if data.groups else [long_text])
    return batches


# PyTorch's output row for each probe text, by checkpoint (its folder and its files' names, sizes, mtimes) and the
# row's input arrays over its real tokens: the export, fusion and OpenVINO-conversion checks share them.
_PROBE_ROWS: dict[tuple, np.ndarray] = {}


def _checkpoint_key(ckpt: Checkpoint) -> tuple:
    files = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                  for f in sorted(Path(ckpt.path).iterdir()) if f.is_file())
    return str(Path(ckpt.path).resolve()), files, ckpt.task


def _row_keys(ckpt: Checkpoint, encs) -> list[tuple]:
    import hashlib

    base, keys = _checkpoint_key(ckpt), []
    for enc in encs:
        for row, n in enumerate(enc.attention_mask.sum(axis=1).tolist()):
            digest = hashlib.sha256()
            for name in sorted(enc.arrays):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(enc.arrays[name][row, :n]).tobytes())
            keys.append((base, digest.hexdigest()))
    return keys


def reference_batches(ckpt: Checkpoint, batches: Sequence[Sequence], encs, encode, reference=None) -> list[np.ndarray]:
    """PyTorch's outputs for ``batches`` (their encodings ``encs`` by ``encode``), each as [batch, num_labels] or
    [batch, width, ...] with zeros at padding. Each text runs once per checkpoint and process, in the length groups
    of ``validate.grouped_rows`` rather than padded beside the others: a row's output does not depend on the rows
    beside it (to float rounding, 3.6e-7 in a DistilBERT-base shape's logits), and a graph compared with rows run
    unpadded must get padding right on its own. Measured, DistilBERT-base shape: the probe batch of 4 with one
    427-token text padded 3 short ones to 427."""
    from .reference import ReferenceModel
    from .validate import grouped_rows, stack_rows

    items = [x for batch in batches for x in batch]
    lengths = np.concatenate([enc.attention_mask.sum(axis=1) for enc in encs]).tolist()
    keys = _row_keys(ckpt, encs)
    missing = [i for i, key in enumerate(keys) if key not in _PROBE_ROWS and key not in keys[:i]]
    if missing:
        reference = reference or ReferenceModel(ckpt)
        if len(_PROBE_ROWS) > 256:  # another checkpoint's probes
            _PROBE_ROWS.clear()
        rows = grouped_rows(reference.forward, encode, [items[i] for i in missing], [lengths[i] for i in missing])
        _PROBE_ROWS.update((keys[i], row) for i, row in zip(missing, rows))
    out, start = [], 0
    for enc in encs:
        n = enc.attention_mask.shape[0]
        out.append(stack_rows([_PROBE_ROWS[k] for k in keys[start:start + n]], enc.attention_mask.shape[1]))
        start += n
    return out


def check_against_reference(ckpt: Checkpoint, model: OnnxModel, tolerance: float,
                            batches: Sequence[Sequence] | None = None, reference=None) -> float:
    """Max |ONNX − PyTorch| over real tokens on ``batches`` (default :func:`probe_batches`): the graph runs each
    right-padded batch as given, PyTorch each text unpadded (:func:`reference_batches`).

    Returns the max abs difference (float). Raises ExportError when it exceeds ``tolerance``
    or the graph fails at some batch size or length.
    """
    from .inference import Predictor

    predictor = Predictor(model.path, model.model_dir, ckpt.task)
    batches = list(batches or probe_batches(ckpt.task, predictor.max_length))
    encs = [predictor.encode(batch) for batch in batches]
    wants = reference_batches(ckpt, batches, encs, predictor.encode, reference)
    worst = 0.0
    for batch, enc, want in zip(batches, encs, wants):
        try:
            got = predictor.run(enc)
        except Exception as exc:
            raise ExportError(
                f"The {model.stage} graph {model.path} fails at batch {len(batch)} × length "
                f"{enc.attention_mask.shape[1]}: {exc}. Report this model; try another opset."
            ) from exc
        if got.shape != want.shape:
            raise ExportError(f"The {model.stage} graph returns shape {got.shape}, PyTorch {want.shape}.")
        diff = np.abs(got.astype(np.float64) - want)
        if diff.ndim == 3:  # per-token outputs: compare real tokens only
            diff = diff[enc.attention_mask.astype(bool)]
        worst = max(worst, float(diff.max()))
    if not np.isfinite(worst) or worst > tolerance:
        raise ExportError(
            f"The {model.stage} ONNX graph disagrees with PyTorch: max abs diff {worst:.3g} > {tolerance:g} "
            f"on right-padded batches of mixed lengths. The graph is wrong; do not ship it. "
            "Re-export, or report the model type."
        )
    return worst


# Raw texts for the sentence-transformers parity check: upper case (do_lower_case), short,
# accents/emoji, surrounding spaces, and one far longer than any max_seq_length (truncation).
ST_PARITY_TEXTS = (
    "ALICE WENT TO PARIS",
    "Thanks!",
    "a",
    "  Naïve café owners in Zürich said: prices rose 3.5% 😀  ",
    "The Quick Brown Fox jumps over the lazy dog; then it RESTS.",
)
ST_MIN_COSINE = 0.9999  # fp32 graph vs PyTorch: differences are rounding only


def _st_parity_texts() -> list[str]:
    from .evaldata import builtin_texts

    long_text = " ".join(str(t) for t in builtin_texts()[:60])
    return [*ST_PARITY_TEXTS, long_text]


def check_sentence_transformers_parity(ckpt: Checkpoint, model: OnnxModel, texts: Sequence[str] | None = None,
                                       min_cosine: float = ST_MIN_COSINE) -> float:
    """Embeddings of ``model`` through :class:`~multiverse.inference.Predictor` vs
    ``SentenceTransformer(ckpt.path).encode`` on the same *raw* texts (default: upper-case,
    short, accented/emoji, padded with spaces, and longer than the model's limit).

    Returns the smallest cosine (float). Raises ExportError when an embedding's width differs,
    when the smallest cosine is below ``min_cosine`` (0.9999 for an fp32 graph), or when
    sentence-transformers cannot load the checkpoint. Needs torch and sentence-transformers
    (optimize time only).
    """
    from .inference import Predictor

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - part of the optimize install
        raise ExportError("sentence-transformers is needed to check a feature-extraction export; "
                          "install the optimize dependencies (pip install 'multiverse[optimize]').") from exc
    texts = list(texts) if texts is not None else _st_parity_texts()
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet_loggers():
            logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
            st = SentenceTransformer(str(ckpt.path), device="cpu", local_files_only=True)
            want = np.asarray(st.encode(texts, batch_size=len(texts), convert_to_numpy=True), dtype=np.float64)
    except Exception as exc:
        raise ExportError(f"sentence-transformers could not embed with {ckpt.name} ({type(exc).__name__}: {exc}); "
                          "the embedding parity check needs it. Check that SentenceTransformer loads the folder.") from exc
    got = np.asarray(Predictor(model.path, model.model_dir, ckpt.task).predict(texts).results, dtype=np.float64)
    if got.shape != want.shape:
        raise ExportError(f"Multiverse embeddings are {got.shape[1]}-dimensional, SentenceTransformer.encode gives "
                          f"{want.shape[1]}: a module in modules.json is not applied. Report the model.")
    cos = (got * want).sum(1) / np.clip(np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1), 1e-30, None)
    worst = int(np.argmin(cos))
    if not np.isfinite(cos).all() or cos[worst] < min_cosine:
        text = texts[worst] if len(texts[worst]) <= 60 else texts[worst][:57] + "..."
        raise ExportError(
            f"Multiverse's embedding of {text!r} has cosine {cos[worst]:.6f} to SentenceTransformer.encode on the same "
            f"raw text (< {min_cosine}): its preprocessing differs from sentence-transformers' (lower-casing, prompt, "
            "truncation, pooling or a module). The bundle would not give the same answers; report the model.")
    return float(cos[worst])
