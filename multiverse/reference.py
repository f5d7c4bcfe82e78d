"""The original PyTorch model, the reference every check compares against (optimize time only: needs torch)."""

from __future__ import annotations

import numpy as np

from .hub import Checkpoint
from .tasks import Encoded, get_task


class ReferenceModel:
    """The checkpoint loaded with transformers, on CPU, in eval mode, fp32.

    ``forward`` takes the *same* tokenized arrays as the ONNX graph, so differences are the
    graph's alone. ``threads`` sets torch intra-op threads (same budget as ORT).
    """

    def __init__(self, ckpt: Checkpoint, threads: int | None = None):
        import torch
        import transformers

        if threads:
            torch.set_num_threads(int(threads))
        task = get_task(ckpt.task)
        cls = getattr(transformers, task.reference_class)
        self.model = cls.from_pretrained(str(ckpt.path), dtype=torch.float32).eval()
        self.task = ckpt.task
        self.output_name = task.output
        import inspect

        self.accepts = set(inspect.signature(self.model.forward).parameters)

    def forward(self, enc: Encoded) -> np.ndarray:
        """float32 raw output: [batch, seq_len, hidden] (feature-extraction, token-classification logits)
        or [batch, num_labels]."""
        import torch

        feed = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in enc.arrays.items() if k in self.accepts}
        with torch.inference_mode():
            out = self.model(**feed)
        return getattr(out, self.output_name).float().numpy()
