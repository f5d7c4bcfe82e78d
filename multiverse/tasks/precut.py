"""Cut very long texts before tokenization, without changing the tokens the model sees.

``tokenizers`` builds every overflow window of a truncated text, and for a pair the product of
both sides' windows: two 25,000-character passages took 13 s to tokenize for a 128-token model
(20,000 CJK characters a side: 6.5 s for all-MiniLM-L6-v2), so one request could stall the
server (or a library call, or a validation run). :class:`PreCutter` cuts a long text at a pre-token (word) boundary a little beyond the
``max_length`` tokens truncation can keep. Normalisers and pre-tokenizers work word by word, so
the tokens before a word boundary do not depend on what follows it: the model gets exactly the
same tokens and offsets.

For a pair, truncation (``longest_first``) also depends on which side is longer in tokens (it
gets the odd token), so each side keeps enough tokens to preserve that order, and the cut is
checked by counting; when the check fails the pair is left whole (slow, still exact).
Only ``tokenizers`` and the standard library.
"""

from __future__ import annotations

from tokenizers import Encoding, Tokenizer

_MARGIN = 16  # tokens kept beyond max_length
_SEARCH = 64  # tokens searched for a word boundary


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


class PreCutter:
    """Result-preserving pre-truncation of long texts for one tokenizer.

    Args:
        tokenizer: the ``tokenizers.Tokenizer`` the model's inputs are built with.
        max_length: the truncation length in tokens (special tokens included).
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int):
        self.counting = Tokenizer.from_str(tokenizer.to_str())
        self.counting.no_truncation()
        self.counting.no_padding()
        self.keep = max_length + _MARGIN
        self.min_chars = 8 * max_length  # shorter texts are never cut (cheap to tokenize whole)

    def text(self, text: str) -> str:
        """``text``, or a prefix of it with the same first ``max_length + 16`` tokens."""
        if len(text) <= self.min_chars:
            return text
        window = 8 * (self.keep + _SEARCH)
        while True:
            enc = self.counting.encode(text[:window], add_special_tokens=False)
            # The window's own end may split a word: only tokens well before it are trusted.
            if len(enc.ids) >= self.keep + _SEARCH + 2 or window >= len(text):
                trusted = len(enc.ids) - (0 if window >= len(text) else 1)
                return self._cut(text, enc, self.keep, trusted)[0]
            window *= 4

    def item(self, item):
        """A text, or a ``(text, text_pair)`` tuple, pre-cut."""
        if isinstance(item, str):
            return self.text(item)
        a, b = item
        if len(a) <= self.min_chars and len(b) <= self.min_chars:
            return item
        encs = self.counting.encode_batch([a, b], add_special_tokens=False)
        n = [len(encs[0].ids), len(encs[1].ids)]
        # Cut the side with fewer tokens first; the other then keeps more tokens than it did
        # (or exactly as many, when both sides have the same count).
        first = 0 if n[0] <= n[1] else 1
        second = 1 - first
        texts = [a, b]
        cut_first, k_first = self._cut(texts[first], encs[first], min(n[first], self.keep), n[first])
        want = k_first + 1 if n[second] > n[first] else k_first
        cut_second, _ = self._cut(texts[second], encs[second], max(min(n[second], self.keep), want), n[second],
                                         exact=n[second] == n[first])
        cuts = [None, None]
        cuts[first], cuts[second] = cut_first, cut_second
        if cuts[0] is a and cuts[1] is b:
            return item
        c = [len(e.ids) for e in self.counting.encode_batch(cuts, add_special_tokens=False)]
        if _sign(c[0] - c[1]) == _sign(n[0] - n[1]) and min(c[0], n[0]) >= min(n[0], self.keep) \
                and min(c[1], n[1]) >= min(n[1], self.keep):
            return (cuts[0], cuts[1])
        return item

    @staticmethod
    def _cut(text: str, enc: Encoding, k: int, trusted: int, exact: bool = False) -> tuple[str, int]:
        """Cut before the first word that starts at token ``k`` or later (within the trusted tokens).

        Returns the text (``text`` itself when not cut) and its token count. With ``exact``
        the cut must be at token ``k`` itself.
        """
        if k >= trusted:
            return text, trusted
        words = enc.word_ids
        for i in range(k, k + 1 if exact else min(trusted, k + _SEARCH)):
            if words[i] is not None and words[i] != words[i - 1]:
                start = enc.offsets[i][0]
                return (text[:start], i) if start > 0 else (text, trusted)
        return text, trusted  # one very long word: leave the text whole
