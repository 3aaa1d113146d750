"""``clstream eval --data FILE``: every row scored, label mapping, two-class files, VADER, and the
per-row predictions file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.commands.cli import main
from pipelines.offline.baselines import VADER_THRESHOLDS, vader_labels, vader_predictions
from tests.unit.workers.test_checkpoints import save_tiny_sequence_classifier

# (id, text, label): VADER gets every row right but row 7, whose gold label is positive.
ROWS = [
    ("a", "I love this, it is wonderful", "positive"),
    ("b", "What a great and happy day", "Pos"),
    ("c", "This is terrible, I hate it", "negative"),
    ("d", "Awful service, the worst", "NEG"),
    ("e", "The train leaves at nine", "neutral"),
    ("f", "The report has four pages", "Neutral"),
    ("g", "Sad and awful news", "POSITIVE"),
    ("h", "I love this, it is wonderful", "positive"),  # a duplicate: still scored
]


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "tweet", "sentiment"])
        writer.writerows(rows)
    return path


def eval_argv(data: Path, tiny_model: tuple[Path, Path], *extra: str) -> list[str]:
    encoder_dir, head_dir = tiny_model
    argv = ["eval", "--data", str(data), "--text-column", "tweet", "--label-column", "sentiment"]
    argv += ["--encoder", str(encoder_dir), "--head", str(head_dir)]
    return argv + ["--device", "cpu", "--no-progress", "--no-vector-cache", *extra]


def test_vader_labels_obvious_texts_and_applies_its_stated_thresholds():
    texts = ["I love this, it is wonderful", "This is terrible, I hate it", "The train leaves at nine"]
    assert vader_predictions(texts).tolist() == [0, 1, 2]  # POSITIVE, NEGATIVE, NEUTRAL
    compounds = np.array([0.05, 0.0499, -0.05, -0.0499, 0.0])
    assert vader_labels(compounds).tolist() == [0, 2, 1, 2, 2]
    assert vader_labels(np.array([0.0, -0.01, 0.3]), two_class=True).tolist() == [0, 1, 0]
    assert "compound >= 0.05 POSITIVE, <= -0.05 NEGATIVE, else NEUTRAL" in VADER_THRESHOLDS


def test_eval_data_scores_every_row_with_a_confusion_matrix_and_per_row_predictions(
    tiny_model, tmp_path: Path, capsys
):
    data = write_csv(tmp_path / "mine.csv", ROWS)
    # A checkpoint whose first column (here "pos") always wins: every row predicted POSITIVE.
    checkpoint = save_tiny_sequence_classifier(tmp_path / "always-pos", {0: "pos", 1: "neg", 2: "neu"})
    out_json, predictions, png = tmp_path / "eval.json", tmp_path / "rows.jsonl", tmp_path / "eval.png"
    argv = eval_argv(data, tiny_model, "--checkpoint", str(checkpoint), "--json", str(out_json))
    argv += ["--predictions", str(predictions), "--plot", str(png)]

    assert main(argv) == 0

    result = json.loads(out_json.read_text())
    classifiers = result["classifiers"]
    assert list(classifiers) == ["default (cls head)", "always-pos", "vader"]
    assert result["data"]["rows"] == 8
    assert result["data"]["label_counts"] == {"POSITIVE": 4, "NEGATIVE": 2, "NEUTRAL": 2}
    for metrics in classifiers.values():
        assert metrics["n"] == 8
        assert np.array(metrics["confusion"]).sum(axis=1).tolist() == [4, 2, 2]
    assert classifiers["vader"]["confusion"] == [[3, 1, 0], [0, 2, 0], [0, 0, 2]]
    assert classifiers["vader"]["thresholds"] == VADER_THRESHOLDS
    assert classifiers["always-pos"]["confusion"] == [[4, 0, 0], [2, 0, 0], [2, 0, 0]]
    assert result["not_applicable"]["tfidf"].startswith("not applicable: TF-IDF must be trained")
    assert "tfidf" not in classifiers

    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["row"] for r in records] == list(range(1, 9))
    assert [r["line"] for r in records] == list(range(2, 10))
    assert [r["id"] for r in records] == [row[0] for row in ROWS]
    assert [r["gold"] for r in records] == ["POSITIVE"] * 2 + ["NEGATIVE"] * 2 + ["NEUTRAL"] * 2 + [
        "POSITIVE"
    ] * 2
    seventh = records[6]["classifiers"]
    assert seventh["vader"]["predicted"] == "NEGATIVE" and seventh["vader"]["compound"] < -0.05
    assert seventh["always-pos"]["predicted"] == "POSITIVE"
    for record in records:
        probabilities = record["classifiers"]["default (cls head)"]["probabilities"]
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-3)
        assert record["classifiers"]["default (cls head)"]["predicted"] == max(
            probabilities, key=probabilities.__getitem__
        )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "tfidf" in out and "not applicable" in out and "--split" in out
    assert "vader: confusion matrix (rows: true label, columns: predicted)" in out
    assert "  pos         3       1       0\n  neg         0       2       0" in out
    assert "note: every one of the 8 rows scored; no row was trained on" in out


def test_a_two_class_file_is_scored_over_positive_and_negative_only(tiny_model, tmp_path: Path, capsys):
    rows = [row for row in ROWS if row[2].lower() not in ("neutral", "neu")]
    data = write_csv(tmp_path / "binary.csv", rows)
    # NEUTRAL always wins for this checkpoint: two-class scoring must still pick POS or NEG.
    checkpoint = save_tiny_sequence_classifier(tmp_path / "always-neu", {0: "neu", 1: "pos", 2: "neg"})
    out_json, predictions = tmp_path / "eval.json", tmp_path / "rows.jsonl"
    argv = eval_argv(data, tiny_model, "--checkpoint", str(checkpoint), "--json", str(out_json))
    assert main([*argv, "--predictions", str(predictions)]) == 0

    result = json.loads(out_json.read_text())
    assert result["data"]["classes"] == ["POSITIVE", "NEGATIVE"]
    for metrics in result["classifiers"].values():
        assert metrics["labels"] == ["POSITIVE", "NEGATIVE"]
        assert np.array(metrics["confusion"]).shape == (2, 2)
    assert result["classifiers"]["vader"]["confusion"] == [[3, 1], [0, 2]]
    for record in map(json.loads, predictions.read_text().splitlines()):
        scored = record["classifiers"]["always-neu"]
        p = scored["probabilities"]
        assert p["NEUTRAL"] > 0.9  # the dropped mass
        assert scored["predicted"] == ("POSITIVE" if p["POSITIVE"] >= p["NEGATIVE"] else "NEGATIVE")
    assert any("two-class file (no NEUTRAL label)" in note for note in result["notes"])
    assert "F1 pos     F1 neg\n" in capsys.readouterr().out


def test_numeric_scores_are_mapped_by_the_thresholds_flag(tiny_model, tmp_path: Path):
    data = tmp_path / "stars.jsonl"
    stars = [("loved it", 5), ("it was fine", 3), ("hated it", 1), ("great fun", 4)]
    data.write_text("".join(json.dumps({"tweet": t, "sentiment": s}) + "\n" for t, s in stars))
    out_json = tmp_path / "eval.json"
    argv = eval_argv(data, tiny_model, "--score-thresholds", "2.5,3.5", "--json", str(out_json))
    assert main(argv) == 0
    result = json.loads(out_json.read_text())
    assert result["data"]["label_counts"] == {"POSITIVE": 2, "NEGATIVE": 1, "NEUTRAL": 1}
    assert "numeric labels: < 2.5 NEGATIVE, > 3.5 POSITIVE, else NEUTRAL" in result["notes"]


def test_unknown_labels_stop_eval_with_the_values_and_lines(tiny_model, tmp_path: Path, capsys):
    data = write_csv(tmp_path / "mine.csv", [*ROWS, ("i", "so-so", "mixed"), ("j", "hmm", "4")])
    assert main(eval_argv(data, tiny_model)) == 1
    err = capsys.readouterr().err
    assert "mine.csv: 2 rows have an unknown label: 'mixed' on line 10; '4' on line 11" in err


def test_training_flags_and_predictions_need_the_right_mode(tiny_model, tmp_path: Path, capsys):
    data = write_csv(tmp_path / "mine.csv", ROWS)
    assert main(eval_argv(data, tiny_model, "--pooling", "cls")) == 1
    assert "--pooling needs a training split" in capsys.readouterr().err
    predictions = str(tmp_path / "rows.jsonl")
    assert main(eval_argv(data, tiny_model, "--split", "--predictions", predictions)) == 1
    assert "use it with --data and without --split" in capsys.readouterr().err
