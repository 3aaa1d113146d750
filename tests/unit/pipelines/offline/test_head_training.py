"""Training the softmax head on frozen vectors: convergence, class weights, folding, round-trips."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipelines.commands import train_head as train_head_command
from pipelines.offline.train_head import (
    class_weights,
    evaluate,
    example_weights,
    fold_standardisation,
    train_softmax_head,
)
from pipelines.offline.vectors import embed_texts
from workers.head import HeadMetadata, load_head, save_head
from workers.model import BertEncoder
from workers.testing import save_tiny_bert

LABELS = ("POSITIVE", "NEGATIVE", "NEUTRAL")


def _blobs(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated Gaussian blobs in 16-d (fixed centres, ``seed`` draws the points),
    shifted and scaled far from standard so that training has to standardise."""
    centres = torch.randn(3, 16, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.arange(3).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), 16, generator=torch.Generator().manual_seed(seed))
    return x * torch.linspace(0.1, 20, 16) + 50, y


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, dict, torch.Tensor, torch.Tensor]:
    train_x, train_y = _blobs(100, seed=0)
    val_x, val_y = _blobs(30, seed=1)
    head, metrics = train_softmax_head(
        train_x, train_y, val_x, val_y, LABELS, epochs=20, lr=1e-2, batch_size=64, patience=20, progress=False
    )
    return head, metrics, val_x, val_y


def test_training_loss_falls_and_validation_accuracy_passes_0_9(trained) -> None:
    _, metrics, _, _ = trained
    assert metrics["train_loss"][-1] < metrics["train_loss"][0] / 4
    assert metrics["val_accuracy"][metrics["best_epoch"] - 1] > 0.9


def test_trained_head_classifies_raw_unstandardised_vectors(trained) -> None:
    head, _, val_x, val_y = trained
    assert evaluate(head, val_x, val_y)["accuracy"] > 0.9


def test_training_is_deterministic_for_a_seed() -> None:
    x, y = _blobs(20, seed=0)
    first, _ = train_softmax_head(x, y, x, y, LABELS, epochs=3, seed=5, progress=False)
    second, _ = train_softmax_head(x, y, x, y, LABELS, epochs=3, seed=5, progress=False)
    assert torch.equal(first.linear.weight, second.linear.weight)


def test_training_stops_after_patience_epochs_without_a_better_macro_f1() -> None:
    x, y = _blobs(20, seed=0)
    _, metrics = train_softmax_head(x, y, x, y, LABELS, epochs=100, patience=3, progress=False)
    # Separable data reaches macro-F1 1.0 early; nothing can beat it, so it stops 3 epochs later.
    assert metrics["val_macro_f1"][metrics["best_epoch"] - 1] == 1.0
    assert len(metrics["train_loss"]) == metrics["best_epoch"] + 3


def test_class_weights_are_inverse_to_class_frequency() -> None:
    weights = class_weights(torch.tensor([0, 0, 0, 0, 1, 1, 2, 2]), 3)
    torch.testing.assert_close(weights, torch.tensor([8 / 12, 8 / 6, 8 / 6]))


def test_class_weights_refuse_a_class_with_no_example() -> None:
    with pytest.raises(ValueError, match=r"no example of class\(es\) \[2\]"):
        class_weights(torch.tensor([0, 1, 1]), 3)


def test_label_balanced_example_weights_are_the_class_weights_of_each_example() -> None:
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    torch.testing.assert_close(example_weights(targets, 3), class_weights(targets, 3)[targets])


def test_topic_balanced_example_weights_give_every_topic_and_label_pair_the_same_total() -> None:
    targets = torch.tensor([0, 0, 0, 1, 0, 1, 1, 1])
    topics = ["air", "air", "air", "air", "cars", "cars", "cars", "cars"]
    weights = example_weights(targets, 2, topics)
    # Four non-empty (topic, label) cells, 8 examples: each cell weighs 8 / 4 = 2 in all.
    torch.testing.assert_close(weights, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0, 2.0, 2 / 3, 2 / 3, 2 / 3]))
    assert float(weights.mean()) == pytest.approx(1.0)


def test_a_weighted_mean_over_label_balanced_example_weights_is_class_weighted_cross_entropy() -> None:
    # finetune's loss: the per-example weighted mean must equal PyTorch's class-weighted mean.
    generator = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(10, 3, generator=generator), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 0])
    weights = example_weights(targets, 3)
    losses = F.cross_entropy(logits, targets, reduction="none")
    expected = F.cross_entropy(logits, targets, weight=class_weights(targets, 3))
    torch.testing.assert_close((losses * weights).sum() / weights.sum(), expected)
    batch = torch.tensor([1, 6, 8, 9])  # and on any batch of it, as finetune takes them
    torch.testing.assert_close(
        (losses[batch] * weights[batch]).sum() / weights[batch].sum(),
        F.cross_entropy(logits[batch], targets[batch], weight=class_weights(targets, 3)),
    )


def test_topic_balanced_weights_with_a_single_topic_are_the_label_balanced_ones() -> None:
    targets = torch.tensor([0, 0, 0, 1, 2, 2])
    torch.testing.assert_close(example_weights(targets, 3, [None] * 6), example_weights(targets, 3))


def test_folded_standardisation_gives_the_same_logits_as_explicit_standardisation() -> None:
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(3, 8, generator=generator), torch.randn(3, generator=generator)
    mean, std = torch.randn(8, generator=generator) * 10, torch.rand(8, generator=generator) * 5 + 0.1
    x = torch.randn(50, 8, generator=generator) * std + mean
    folded_weight, folded_bias = fold_standardisation(weight, bias, mean, std)
    explicit = ((x - mean) / std) @ weight.T + bias
    torch.testing.assert_close(x @ folded_weight.T + folded_bias, explicit, rtol=1e-4, atol=1e-4)


def test_saved_head_round_trips_with_identical_outputs(trained, tmp_path: Path) -> None:
    head, metrics, val_x, _ = trained
    metadata = HeadMetadata(LABELS, "cls", 16, "blobs", "", metrics={"best_epoch": metrics["best_epoch"]})
    save_head(head, tmp_path, metadata)
    loaded, loaded_metadata = load_head(tmp_path)
    assert torch.equal(loaded(val_x), head(val_x))
    assert loaded_metadata == metadata


# -- the encoder side, on a tiny random BERT ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def test_embedded_vectors_come_from_the_cache_on_a_second_call(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = BertEncoder(tiny_bert, "cls", max_length=16, device="cpu")
    texts = ["a longer text than the others", "short", "mid length text"]
    first = embed_texts(encoder, texts, progress=False, cache_dir=tmp_path)
    monkeypatch.setattr(encoder, "encode", None)  # a cache miss would now fail
    second = embed_texts(encoder, texts, progress=False, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    assert torch.equal(first, second)
    assert first.shape == (3, 32)


def test_train_head_command_writes_a_loadable_head_with_metrics(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_head_command, "VECTOR_CACHE_DIR", tmp_path / "vectors")
    data = tmp_path / "labels.jsonl"
    words = {"positive": "great lovely", "negative": "awful broken", "neutral": "the a report"}
    rows = [{"text": f"{words[label]} {i}", "label": label} for label in words for i in range(20)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    parser = argparse.ArgumentParser()
    train_head_command.register(parser.add_subparsers())
    args = parser.parse_args(
        ["train-head", "--data", str(data), "--encoder", str(tiny_bert), "--out", str(tmp_path / "head")]
    )
    args.progress = False

    assert args.func(args) == 0

    head, metadata = load_head(tmp_path / "head")
    assert head.linear.in_features == 32
    assert metadata.trained_on["sizes"] == {"train": 48, "validation": 6, "test": 6}
    assert metadata.trained_on["source"] == str(data)
    assert set(metadata.metrics) == {"val", "test"}
    assert metadata.encoder_id == tiny_bert.name
