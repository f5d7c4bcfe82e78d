"""Stage 2: export a checkpoint to fp32 ONNX with optimum-onnx, and the export check.

The export check runs the graph and the PyTorch model on the same right-padded batches of
mixed lengths (including one at the model's full length) and fails when the max abs
difference over real (non-pad) positions exceeds the tolerance (DESIGN.md §5: 1e-4).
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

# optimum task names (a cross-encoder is a 1-label sequence classifier).
_OPTIMUM_TASK = {"feature-extraction": "feature-extraction", "text-classification": "text-classification",
                 "token-classification": "token-classification", "ranking": "text-classification"}
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
                str(ckpt.path), output=str(out), task=_OPTIMUM_TASK[ckpt.task], opset=OPSET,
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
    if task == "ranking":
        items: list = [(g.query, p) for g in data.groups[:6] for p in g.passages[:2]]
    else:
        items = list(data.texts[:16])
    long_text = " ".join(str(t) for t in (data.texts or [g.passages[0] for g in data.groups]))
    batches = [items[i:i + 4] for i in range(0, len(items), 4)] + [items[:1]]
    batches.append([(items[0][0], long_text)] if task == "ranking" else [long_text])
    return batches


def check_against_reference(ckpt: Checkpoint, model: OnnxModel, tolerance: float,
                            batches: Sequence[Sequence] | None = None, reference=None) -> float:
    """Max |ONNX − PyTorch| over real tokens on ``batches`` (default :func:`probe_batches`).

    Returns the max abs difference (float). Raises ExportError when it exceeds ``tolerance``
    or the graph fails at some batch size or length.
    """
    from .inference import Predictor
    from .reference import ReferenceModel

    predictor = Predictor(model.path, model.model_dir, ckpt.task)
    reference = reference or ReferenceModel(ckpt)
    worst = 0.0
    for batch in batches or probe_batches(ckpt.task, predictor.max_length):
        enc = predictor.encode(batch)
        try:
            got = predictor.run(enc)
        except Exception as exc:
            raise ExportError(
                f"The {model.stage} graph {model.path} fails at batch {len(batch)} × length "
                f"{enc.attention_mask.shape[1]}: {exc}. Report this model; try another opset."
            ) from exc
        want = reference.forward(enc)
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
