"""Evaluation data for the accuracy gate: the named sets, Hub datasets and user files.

Everything returns an :class:`EvalSet`; every failure raises :class:`multiverse.errors.EvalDataError`
with one sentence saying what is wrong and what to do. The named sets (``builtin``, ``bbc-news``,
``wnut16``) live in :mod:`multiverse.evaldata_builtin`; which columns a task reads and how its rows
become an eval set belong to the task (``Task.eval_columns``, ``Task.eval_set``).
All orders and splits are deterministic (no global random state).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import EvalDataError
from .evaldata_builtin import (NAMED, SPLITS, bbc_articles, bbc_news, builtin, builtin_texts, check_task, named,
                               split_indices, wnut16, wnut16_sentences)
from .tasks import TASKS
from .tasks.evaluation import EvalSet, RankingGroup
from .tasks.token_classification import bio_to_spans

__all__ = ["NAMED", "SPLITS", "Columns", "EvalSet", "RankingGroup", "bbc_articles", "bbc_news", "bio_to_spans",
           "builtin", "builtin_texts", "hub_dataset", "load", "split_indices", "subset", "wnut16", "wnut16_sentences"]


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
    check_task(task)
    if columns.text_pair and "text_pair" not in TASKS[task].eval_columns:
        pairs = " and ".join(f"{n} ({t.eval_columns['text_pair']})" for n, t in TASKS.items()
                             if "text_pair" in t.eval_columns)
        raise EvalDataError(f"--text-pair-column is for {pairs}, not {task}; drop it.")
    present = {k for _, r in rows for k in r}
    for field_, col in (("text", columns.text), ("text_pair", columns.text_pair), ("label", columns.label)):
        if col is not None and col not in present:
            raise EvalDataError(f"{name} has no {col!r} column ({_OPTION[field_]}); found: {_found(rows)}. "
                                f"Pass one of those to {_OPTION[field_]}.")
    text_col = columns.text or ("tokens" if "tokens" in present else "text")
    words = TASKS[task].word_columns is not None and _is_word_list(rows[0][1].get(text_col))
    targets = TASKS[task].word_columns if words else TASKS[task].eval_columns
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
    """The task's EvalSet of ``rows`` (already renamed by :func:`_rename`; ``Task.eval_set``); ``found`` lists
    the file's own columns for errors. Raises EvalDataError for no rows or a bad row."""
    if not rows:
        raise EvalDataError(f"{name} is empty; it needs at least one row.")
    return TASKS[task].eval_set(name, rows, found or _found(rows))


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

    check_task(task)
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
    ours = TASKS[task].word_columns or TASKS[task].eval_columns
    mapping = {text: ours["text"]}
    if text_pair and "text_pair" in ours:
        mapping[text_pair] = ours["text_pair"]
    if label:
        mapping[label] = ours["label"]
    missing = [c for c in mapping if c not in ds.column_names]
    if missing:
        raise EvalDataError(f"`{repo_id}`{whose} split {split!r} has no column {', '.join(map(repr, missing))} "
                            f"(it has {', '.join(ds.column_names)}); fix the recipe's eval columns.")
    names = getattr(getattr(ds.features.get(label), "feature", None), "names", None) if label else None
    rows = []
    for i, row in enumerate(ds.select_columns(list(mapping)).to_list(), 1):
        row = {mapping[k]: v for k, v in row.items()}
        if names:  # a sequence of ClassLabel ids (NER tags) -> their names
            row[ours["label"]] = [names[t] for t in row[ours["label"]]]
        rows.append((f"row {i}", row))
    return _limited(_from_rows(repo_id, task, rows), limit)


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
    check_task(task)
    columns = columns or Columns()
    if columns.given() and spec in (None, *NAMED):
        raise EvalDataError(f"--text-column, --text-pair-column and --label-column apply to eval files and folders, "
                            f"not to the named set {spec or 'builtin'!r}; drop them or pass a file.")
    if spec in (None, *NAMED):
        result = named(spec or "builtin", task, split)
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
    return _limited(result, limit)


def _limited(data: EvalSet, limit: int | None) -> EvalSet:
    """``data``, or its :func:`subset` of ``limit`` examples. Raises EvalDataError for a limit below 1."""
    if limit is None:
        return data
    if limit < 1:
        raise EvalDataError(f"--eval-limit {limit} must be at least 1 (the number of eval examples to keep); omit it to use them all.")
    return subset(data, limit)


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
    if data.groups:
        return EvalSet(data.name, data.task, groups=pick(data.groups))
    return EvalSet(data.name, data.task, texts=pick(data.texts), labels=None if data.labels is None else pick(data.labels))
