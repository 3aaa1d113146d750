"""Each kind of classifier ``eval`` scores, turned into label indices (into ``LABELS``) per text."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipelines.offline import datasets
from pipelines.offline.eval_data import EvalData, EvalOptions
from pipelines.offline.metrics import label_indices
from pipelines.offline.train_head import train_softmax_head
from pipelines.offline.vectors import embed_texts
from schemas.errors import ClstreamError
from schemas.records import LABELS
from workers.checkpoints import is_sequence_classification_checkpoint, load_classifier
from workers.model import BertClassifier
from workers.ports import Classifier

# Texts per ``classify`` call: the progress bar moves every few seconds on a CPU.
_CLASSIFY_CHUNK = 512


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
    return classifier_probabilities(classifier, texts, progress, name).argmax(axis=1)


def classifier_probabilities(
    classifier: Classifier, texts: Sequence[str], progress: bool, name: str
) -> np.ndarray:
    """``[len(texts), len(LABELS)]`` probabilities, columns in ``LABELS`` order."""
    probabilities = np.empty((len(texts), len(classifier.labels)), dtype=np.float32)
    with tqdm(
        total=len(texts), desc=f"classifying ({name})", unit="text", disable=not progress, file=sys.stderr
    ) as bar:
        for start in range(0, len(texts), _CLASSIFY_CHUNK):
            chunk = texts[start : start + _CLASSIFY_CHUNK]
            probabilities[start : start + len(chunk)] = classifier.classify(chunk)
            bar.update(len(chunk))
    return _in_label_order(probabilities, classifier.labels)


def default_classifier_predictions(options: EvalOptions, test_texts: list[str]) -> tuple[str, np.ndarray]:
    """The configured classifier's name and test predictions (indices into ``LABELS``)."""
    name, probabilities = default_classifier_probabilities(options, test_texts)
    return name, probabilities.argmax(axis=1)


def default_classifier_probabilities(options: EvalOptions, texts: list[str]) -> tuple[str, np.ndarray]:
    """The configured classifier's name and probabilities (columns in ``LABELS`` order). A head on
    an encoder goes through the vector cache (a second run takes seconds); a sequence classifier is
    simply run."""
    classifier = load_classifier(
        options.encoder, options.head, None, options.max_length, options.device, options.batch_size
    )
    if isinstance(classifier, BertClassifier):
        vectors = embed_texts(
            classifier.encoder, texts, options.batch_size, options.progress, options.vector_cache
        )
        with torch.no_grad():
            probabilities = torch.softmax(classifier.head.logits(vectors), dim=1).numpy()
        lora = " + LoRA" if classifier.encoder.adapter_sha256 else ""
        return f"default ({classifier.pooling} head{lora})", _in_label_order(probabilities, classifier.labels)
    return "default", classifier_probabilities(classifier, texts, options.progress, "default")


def checkpoint_probabilities(options: EvalOptions, directory: Path, texts: Sequence[str]) -> np.ndarray:
    """Probabilities (columns in ``LABELS`` order) of a ``--checkpoint`` directory's classifier."""
    classifier = load_classifier(
        directory, None, None, options.max_length, options.device, options.batch_size
    )
    return classifier_probabilities(classifier, texts, options.progress, directory.name)


def _in_label_order(probabilities: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    ours = np.empty_like(probabilities)
    ours[:, [LABELS.index(label) for label in labels]] = probabilities
    return ours


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
