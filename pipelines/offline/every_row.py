"""``clstream eval --data FILE``: the configured classifier, any ``--checkpoint`` and VADER scored on
every row of a user's labeled file.

No row is trained on, so nothing that needs training is scored: TF-IDF is reported as not
applicable (``--split`` gives the split-and-train comparison instead), and ``--pooling``,
``--heldout-topics`` and ``--unseen-topics`` are refused. Rows are neither de-duplicated nor
dropped: a file of n rows is n predictions (``--limit`` samples rows, for quick runs only).

A file without a NEUTRAL label is scored two-class: each model's NEUTRAL probability is dropped and
the argmax taken over POSITIVE and NEGATIVE (a tie goes to POSITIVE); VADER's sign decides
(``baselines.vader_labels``). The metrics then average over those two classes only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.offline import datasets
from pipelines.offline.baselines import TFIDF, VADER, VADER_THRESHOLDS, vader_compounds, vader_labels
from pipelines.offline.eval_data import EvalOptions
from pipelines.offline.metrics import classification_metrics
from pipelines.offline.predictions import checkpoint_probabilities, default_classifier_probabilities
from schemas.errors import ClstreamError
from schemas.records import LABELS, Label

TWO_CLASS: tuple[str, ...] = (Label.POSITIVE.value, Label.NEGATIVE.value)
TWO_CLASS_RULE = (
    "two-class file (no NEUTRAL label): each model's NEUTRAL probability is dropped and the argmax "
    "taken over POSITIVE/NEGATIVE; VADER: compound >= 0 POSITIVE, else NEGATIVE"
)
TFIDF_NOT_APPLICABLE = (
    "not applicable: TF-IDF must be trained, and every row here is scored, so none is left to train "
    "on; add --split to train it on 80% of this file and score every classifier on a 10% test split"
)


@dataclass(frozen=True)
class EveryRowResult:
    """Metrics per classifier (VADER last), what was scored, notes for the reader, baselines that
    could not be scored (name -> why) and one JSON-ready record per row."""

    classifiers: dict[str, dict[str, Any]]
    data: dict[str, Any]
    notes: list[str]
    not_applicable: dict[str, str]
    rows: list[dict[str, Any]]


def score_every_row(options: EvalOptions) -> EveryRowResult:
    """Load every row of ``options.source`` and score the default classifier, each checkpoint and
    VADER on all of them; see the module docstring."""
    trained = [
        flag
        for flag, given in (
            ("--pooling", options.poolings),
            ("--heldout-topics", options.heldout_topics),
            ("--unseen-topics", options.unseen_topics),
        )
        if given
    ]
    if trained:
        raise ClstreamError(
            f"{', '.join(trained)} {'needs' if len(trained) == 1 else 'need'} a training split, but "
            "`eval --data` scores every row of the file; add --split to train on 80% of it and "
            "score a 10% test split"
        )
    items, source = options.source.load()
    if options.limit is not None and options.limit < len(items):
        # A smoke-test sample, kept in file order; its numbers do not compare with the whole file's.
        chosen = set(random.Random(options.seed).sample(range(len(items)), options.limit))
        items = [item for row, item in enumerate(items) if row in chosen]
    texts = [item.text for item in items]
    gold_labels = {item.label for item in items}
    labels = TWO_CLASS if Label.NEUTRAL.value not in gold_labels else LABELS
    gold = np.array([labels.index(item.label) for item in items], dtype=np.int64)

    probabilities: dict[str, np.ndarray] = {}
    name, default = default_classifier_probabilities(options, texts)
    probabilities[name] = default
    for directory in options.checkpoints:
        probabilities[directory.name] = checkpoint_probabilities(options, directory, texts)
    columns = [LABELS.index(label) for label in labels]
    predicted = {name: p[:, columns].argmax(axis=1) for name, p in probabilities.items()}
    compounds = vader_compounds(texts, options.progress)
    in_labels = np.array([labels.index(label) if label in labels else -1 for label in LABELS])
    predicted[VADER] = in_labels[vader_labels(compounds, two_class=labels == TWO_CLASS)]

    classifiers = {name: classification_metrics(gold, p, labels) for name, p in predicted.items()}
    classifiers[VADER]["thresholds"] = VADER_THRESHOLDS
    notes = [f"every one of the {len(items)} rows scored; no row was trained on"]
    if labels == TWO_CLASS:
        notes.append(TWO_CLASS_RULE)
    if options.source.score_thresholds is not None:
        notes.append(options.source.score_thresholds.describe())
    notes.append(f"VADER: {VADER_THRESHOLDS}")
    data = {
        "source": source,
        "fingerprint": datasets.fingerprint(items),
        "text_repair": options.source.text_repair,
        "rows": len(items),
        "label_counts": {label: sum(item.label == label for item in items) for label in labels},
        "classes": list(labels),
        "seed": options.seed,
        "limit": options.limit,
        "max_length": options.max_length,
        "split": "none: every row scored",
    }
    rows = _row_records(items, labels, predicted, probabilities, compounds)
    return EveryRowResult(classifiers, data, notes, {TFIDF: TFIDF_NOT_APPLICABLE}, rows)


def _row_records(
    items: list[datasets.LabeledText],
    labels: tuple[str, ...],
    predicted: dict[str, np.ndarray],
    probabilities: dict[str, np.ndarray],
    compounds: np.ndarray,
) -> list[dict[str, Any]]:
    """Per row: its position among the scored rows (from 1), file line, id, text (as in the file,
    before repair), gold label, and
    per classifier the predicted label with the probabilities (VADER: the compound) behind it."""
    records = []
    for row, item in enumerate(items):
        by_classifier: dict[str, dict[str, Any]] = {
            name: {
                "predicted": labels[predicted[name][row]],
                "probabilities": {
                    label: round(float(p[row, column]), 4) for column, label in enumerate(LABELS)
                },
            }
            for name, p in probabilities.items()
        }
        by_classifier[VADER] = {
            "predicted": labels[predicted[VADER][row]],
            "compound": round(float(compounds[row]), 4),
        }
        records.append(
            {
                "row": row + 1,
                "line": item.line,
                "id": item.id,
                "text": item.source_text,  # as in the user's file; the model read item.text
                "gold": item.label,
                "classifiers": by_classifier,
            }
        )
    return records
