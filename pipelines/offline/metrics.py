"""How well one classifier's predictions match the truth: accuracy, macro-F1, per-class scores and
the confusion matrix, as the JSON that ``eval`` and ``finetune`` write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from pipelines.offline import datasets
from schemas.records import LABELS

#: Label indices into ``LABELS``, one per text.
LabelIndices = Sequence[int] | np.ndarray


def label_indices(part: Sequence[datasets.LabeledText]) -> np.ndarray:
    return np.array([LABELS.index(item.label) for item in part], dtype=np.int64)


def classification_metrics(
    y_true: LabelIndices, y_pred: LabelIndices, labels: Sequence[str] = LABELS
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    ``y_*`` are indices into ``labels``. ``confusion[i][j]`` counts true ``labels[i]`` predicted
    as ``labels[j]``. Macro-F1 averages over all of ``labels`` (a class never predicted scores 0).
    """
    classes = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    return {
        "n": len(y_true),
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(
            float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)), 4
        ),
        "per_class": {
            label: {
                "precision": round(float(precision[c]), 4),
                "recall": round(float(recall[c]), 4),
                "f1": round(float(f1[c]), 4),
                "support": int(support[c]),
            }
            for c, label in enumerate(labels)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "labels": list(labels),
    }
