"""The yardsticks every classifier in ``eval`` is scored next to: TF-IDF + logistic regression
(trained on the same train split), and VADER, a sentiment lexicon with rules that needs no training
(Hutto & Gilbert 2014, the ``vaderSentiment`` package, MIT)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from tqdm import tqdm

from pipelines.offline import datasets
from pipelines.offline.metrics import LabelIndices, label_indices
from schemas.records import LABELS, Label

#: The baselines' names in ``eval``'s tables and JSON.
TFIDF = "tfidf"
VADER = "vader"

#: VADER's standard thresholds on its compound score (the vaderSentiment README's): at or above
#: POSITIVE_AT positive, at or below NEGATIVE_AT negative, in between neutral.
VADER_POSITIVE_AT = 0.05
VADER_NEGATIVE_AT = -0.05
VADER_THRESHOLDS = (
    f"compound >= {VADER_POSITIVE_AT} POSITIVE, <= {VADER_NEGATIVE_AT} NEGATIVE, else NEUTRAL; "
    "two-class data: compound >= 0 POSITIVE, else NEGATIVE"
)


class TfidfBaseline:
    """Word 1-2-gram TF-IDF + class-balanced logistic regression; C picked on validation macro-F1.

    The vocabulary and IDF come from the training texts only. ``fit`` then ``predict``.
    """

    def __init__(self, c_grid: Sequence[float] = (0.25, 1.0, 4.0, 16.0), min_df: int = 2) -> None:
        self.c_grid = tuple(c_grid)
        # min_df=2: a word seen once in training carries no pattern, only a tweet's identity.
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=min_df, sublinear_tf=True)
        self.model: LogisticRegression | None = None
        self.c: float | None = None
        self.val_macro_f1: float | None = None

    def fit(
        self,
        train_texts: Sequence[str],
        train_y: LabelIndices,
        val_texts: Sequence[str],
        val_y: LabelIndices,
    ) -> TfidfBaseline:
        train_x = self.vectorizer.fit_transform(train_texts)
        val_x = self.vectorizer.transform(val_texts)
        for c in self.c_grid:
            model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
            model.fit(train_x, train_y)
            score = float(f1_score(val_y, model.predict(val_x), average="macro", zero_division=0))
            if self.val_macro_f1 is None or score > self.val_macro_f1:
                self.model, self.c, self.val_macro_f1 = model, c, score
        return self

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("fit the baseline before predicting")
        return np.asarray(self.model.predict(self.vectorizer.transform(texts)))


def tfidf_predictions(
    train: Sequence[datasets.LabeledText],
    validation: Sequence[datasets.LabeledText],
    test: Sequence[datasets.LabeledText],
) -> tuple[np.ndarray, TfidfBaseline]:
    """The baseline fit on ``train`` (C chosen on ``validation``), and its predictions on ``test``."""
    baseline = TfidfBaseline().fit(
        [item.text for item in train],
        label_indices(train),
        [item.text for item in validation],
        label_indices(validation),
    )
    return baseline.predict([item.text for item in test]), baseline


def vader_compounds(texts: Sequence[str], progress: bool = False) -> np.ndarray:
    """VADER's compound score in [-1, 1] per text, in input order."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return np.array(
        [
            analyzer.polarity_scores(text)["compound"]
            for text in tqdm(texts, desc="VADER", unit="text", disable=not progress, file=sys.stderr)
        ],
        dtype=np.float64,
    )


def vader_labels(compounds: np.ndarray, two_class: bool = False) -> np.ndarray:
    """Indices into ``LABELS`` from compound scores by ``VADER_THRESHOLDS``. ``two_class``: the
    neutral band is gone and the sign decides; compound 0 (no lexicon word at all) counts as
    POSITIVE, as a tie between the model's POSITIVE and NEGATIVE probabilities does."""
    positive, negative, neutral = (
        LABELS.index(label.value) for label in (Label.POSITIVE, Label.NEGATIVE, Label.NEUTRAL)
    )
    if two_class:
        return np.where(compounds >= 0, positive, negative)
    return np.select(
        [compounds >= VADER_POSITIVE_AT, compounds <= VADER_NEGATIVE_AT], [positive, negative], neutral
    )


def vader_predictions(texts: Sequence[str], progress: bool = False) -> np.ndarray:
    """Three-class VADER labels (indices into ``LABELS``) of ``texts``."""
    return vader_labels(vader_compounds(texts, progress))
