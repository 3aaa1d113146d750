"""User checkpoints: sequence classifiers load with their own head, labels map by name, pickle is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from schemas.errors import ModelLoadError, UnsafeCheckpointError
from workers.checkpoints import SequenceClassifierModel, label_columns, load_classifier
from workers.model import BertClassifier, default_encoder_path

TEXTS = ["short", "a much longer tweet with many more words in it", "mid length text", "x"]


def save_tiny_sequence_classifier(directory: Path, id2label: dict[int, str], seed: int = 0) -> Path:
    """A random tiny ``BertForSequenceClassification`` (safetensors) with the default tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=id2label,  # also sets num_labels
        label2id={name: index for index, name in id2label.items()},
    )
    model = BertForSequenceClassification(config)
    # A large bias on one column makes "which label is that column" visible in the output.
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([8.0] + [0.0] * (len(id2label) - 1)))
    model.save_pretrained(directory, safe_serialization=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (default_encoder_path() / name).exists():
            shutil.copy(default_encoder_path() / name, directory / name)
    return directory


def test_sequence_classifier_checkpoint_gives_probabilities_in_our_label_order(tmp_path: Path):
    # Column 0 is "neutral" here, but ours is (POSITIVE, NEGATIVE, NEUTRAL): it must land last.
    directory = save_tiny_sequence_classifier(tmp_path / "ckpt", {0: "neutral", 1: "Positive", 2: "NEG"})
    classifier = load_classifier(directory, device="cpu", batch_size=2)
    assert isinstance(classifier, SequenceClassifierModel)
    assert classifier.labels == ("POSITIVE", "NEGATIVE", "NEUTRAL")
    probs = classifier.classify(TEXTS)
    assert probs.shape == (4, 3) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == 2).all()
    # Length-sorted batching must not reorder results.
    one_by_one = np.concatenate([classifier.classify([t]) for t in TEXTS])
    assert np.allclose(probs, one_by_one, atol=1e-5)
    assert classifier.padded_tokens >= classifier.real_tokens > 0
    assert classifier.model_id.startswith("ckpt+own-head@")


def test_encoder_directory_still_loads_as_encoder_plus_head(tiny_model):
    encoder_dir, head_dir = tiny_model
    classifier = load_classifier(encoder_dir, head_dir, device="cpu")
    assert isinstance(classifier, BertClassifier)
    assert classifier.classify(TEXTS).shape == (4, 3)


def test_pickle_only_sequence_classifier_is_refused(tmp_path: Path):
    (tmp_path / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeCheckpointError, match=r"only pickle weights \['pytorch_model.bin'\]"):
        load_classifier(tmp_path, device="cpu")


def test_generic_label_names_are_refused_without_a_map(tmp_path: Path):
    directory = save_tiny_sequence_classifier(tmp_path / "ckpt", {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(ModelLoadError, match=r"\['LABEL_0', 'LABEL_1', 'LABEL_2'\].*pass a label map"):
        load_classifier(directory, device="cpu")


def test_generic_label_names_load_with_an_explicit_map(tmp_path: Path):
    directory = save_tiny_sequence_classifier(tmp_path / "ckpt", {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    label_map = {"LABEL_0": "negative", "LABEL_1": "neutral", "LABEL_2": "positive"}
    classifier = load_classifier(directory, device="cpu", label_map=label_map)
    assert (classifier.classify(TEXTS).argmax(axis=1) == 1).all()  # column 0 (biased) is NEGATIVE


def test_label_columns_list_the_checkpoint_column_of_each_of_our_labels():
    assert label_columns({0: "NEGATIVE", 1: "neutral", 2: "pos"}) == [2, 0, 1]


@pytest.mark.parametrize(
    "id2label",
    [
        {0: "negative", 1: "positive"},  # two classes: no NEUTRAL column to fill
        {0: "negative", 1: "positive", 2: "positive"},
        {0: "joy", 1: "anger", 2: "neutral"},
    ],
)
def test_labels_that_do_not_map_one_to_one_name_what_was_found(id2label):
    with pytest.raises(ModelLoadError, match=r"the checkpoint's labels \[.*\] do not map one-to-one"):
        label_columns(id2label)


def test_a_head_directory_with_a_sequence_classifier_is_refused(tmp_path: Path, tiny_model):
    directory = save_tiny_sequence_classifier(tmp_path / "ckpt", {0: "pos", 1: "neg", 2: "neu"})
    with pytest.raises(ModelLoadError, match="with its own head; do not also give a head directory"):
        load_classifier(directory, tiny_model[1], device="cpu")


def test_a_pooling_other_than_cls_is_refused_for_a_sequence_classifier(tmp_path: Path):
    directory = save_tiny_sequence_classifier(tmp_path / "ckpt", {0: "pos", 1: "neg", 2: "neu"})
    with pytest.raises(ModelLoadError, match="pooling 'mean' does not apply"):
        load_classifier(directory, pooling="mean", device="cpu")
