"""``clstream train-head``: fit the linear softmax head on frozen pooled vectors of labeled texts.

The encoder is never trained. Texts are embedded once (``vectors.embed_texts`` caches them on
disk, so a second run with another seed or learning rate takes seconds), then a multinomial
logistic regression is fit with AdamW on standardised vectors. The standardisation is folded into
the linear layer before saving, so the shipped head is still a plain ``Linear`` that takes raw
pooled vectors.
"""

from __future__ import annotations

import copy
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from tqdm import tqdm

from pipelines.offline import datasets
from pipelines.offline.vectors import VECTOR_CACHE_DIR, embed_texts
from schemas.records import LABELS
from workers.head import HeadMetadata, SoftmaxHead, save_head
from workers.model import BertEncoder, default_encoder_path, weights_sha256

# -- training ---------------------------------------------------------------------------------


def class_weights(targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``n / (n_classes * count[c])`` per class: each class then weighs as much in the loss as the
    others, whatever its size (sklearn's "balanced"). A class with no example raises ValueError."""
    counts = torch.bincount(targets, minlength=n_classes).float()
    if bool((counts == 0).any()):
        missing = [c for c in range(n_classes) if counts[c] == 0]
        raise ValueError(f"the training set has no example of class(es) {missing}")
    return len(targets) / (n_classes * counts)


#: How ``finetune`` weighs its examples: ``label`` gives every label the same total weight;
#: ``topic`` gives every (topic, label) cell the same total weight, so no topic's label mix can
#: stand in for sentiment (texts without a topic form one group, so it equals ``label`` there).
BALANCES = ("label", "topic")


def example_weights(
    targets: torch.Tensor, n_classes: int, groups: Sequence[object] | None = None
) -> torch.Tensor:
    """One weight per example, mean 1: every non-empty (group, class) cell weighs ``n / cells``.

    ``groups`` holds one group per example (e.g. its topic); without it there is one group, the
    cells are the classes, and the weights are ``class_weights(targets, n_classes)[targets]``: the
    weighted mean of per-example losses is then exactly cross-entropy with class weights. A class
    with no example raises ValueError, as in ``class_weights``.
    """
    class_weights(targets, n_classes)  # only for its refusal of a class with no example
    cells = list(zip([None] * len(targets) if groups is None else groups, targets.tolist(), strict=True))
    size = Counter(cells)
    counts = torch.tensor([size[cell] for cell in cells], dtype=torch.float)
    return len(targets) / (len(size) * counts)


def fold_standardisation(
    weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights on raw ``x`` equal to ``weight``/``bias`` on ``(x - mean) / std``:
    ``W (x - m) / s + b = (W / s) x + (b - (W / s) m)``."""
    folded = weight / std
    return folded, bias - folded @ mean


def train_softmax_head(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    labels: Sequence[str] = LABELS,
    *,
    epochs: int = 200,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    batch_size: int = 256,
    class_weighting: bool = True,
    patience: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> tuple[SoftmaxHead, dict[str, Any]]:
    """Fit ``softmax(W x + b)`` by weighted cross-entropy; keep the epoch with the best validation macro-F1.

    ``*_y`` hold indices into ``labels``. Stops after ``patience`` epochs without a better
    validation macro-F1. Same inputs and seed, same head. The metrics dict holds per-epoch
    ``train_loss``, ``val_loss``, ``val_accuracy``, ``val_macro_f1``, and ``best_epoch`` (1-based).
    """
    generator = torch.Generator().manual_seed(seed)
    mean = train_x.mean(dim=0)
    # A constant feature has std 0; centred it is all zeros, and the clamp keeps 0 / 0 from becoming NaN.
    std = train_x.std(dim=0).clamp(min=1e-6)
    train_z, val_z = (train_x - mean) / std, (val_x - mean) / std
    n_classes = len(labels)
    weights = class_weights(train_y, n_classes) if class_weighting else torch.ones(n_classes)

    linear = torch.nn.Linear(train_x.shape[1], n_classes)
    # The problem is convex, so zeros are as good a start as any and need no random numbers.
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=weight_decay)

    history: dict[str, list[float]] = {
        "train_loss": [],
        "val_loss": [],
        "val_accuracy": [],
        "val_macro_f1": [],
    }
    best_f1, best_epoch, best_state = -1.0, 0, copy.deepcopy(linear.state_dict())
    with tqdm(
        range(1, epochs + 1), desc="training head", unit="epoch", disable=not progress, file=sys.stderr
    ) as bar:
        for epoch in bar:
            total, seen = 0.0, 0
            for batch in torch.randperm(len(train_z), generator=generator).split(batch_size):
                loss = F.cross_entropy(linear(train_z[batch]), train_y[batch], weight=weights)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, seen = total + loss.item() * len(batch), seen + len(batch)
            with torch.no_grad():
                val_logits = linear(val_z)
                val_loss = float(F.cross_entropy(val_logits, val_y, weight=weights))
            predicted = val_logits.argmax(dim=1)
            val_f1 = float(
                f1_score(val_y, predicted, labels=range(n_classes), average="macro", zero_division=0)
            )
            history["train_loss"].append(total / seen)
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(float((predicted == val_y).float().mean()))
            history["val_macro_f1"].append(val_f1)
            bar.set_postfix(loss=f"{total / seen:.4f}", val_f1=f"{val_f1:.4f}")
            if val_f1 > best_f1:
                best_f1, best_epoch, best_state = val_f1, epoch, copy.deepcopy(linear.state_dict())
            elif epoch - best_epoch >= patience:
                break

    head = SoftmaxHead(train_x.shape[1], labels)
    folded_weight, folded_bias = fold_standardisation(best_state["weight"], best_state["bias"], mean, std)
    head.linear.weight.data.copy_(folded_weight)
    head.linear.bias.data.copy_(folded_bias)
    return head.eval(), {**history, "best_epoch": best_epoch, "class_weights": weights.tolist()}


@torch.no_grad()
def evaluate(head: SoftmaxHead, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-label F1 of ``head`` on vectors ``x`` with label indices ``y``."""
    predicted = head.logits(x).argmax(dim=1)
    classes = list(range(len(head.labels)))
    per_label = f1_score(y, predicted, labels=classes, average=None, zero_division=0)
    return {
        "n": len(y),
        "accuracy": round(float(accuracy_score(y, predicted)), 4),
        "macro_f1": round(float(f1_score(y, predicted, labels=classes, average="macro", zero_division=0)), 4),
        "f1": {label: round(float(score), 4) for label, score in zip(head.labels, per_label, strict=True)},
    }


# -- the whole run --------------------------------------------------------------------------


def train_head(
    source: datasets.DataSource,
    out: Path,
    *,
    encoder_dir: Path | None = None,
    pooling: str = "cls",
    max_length: int = 128,
    min_confidence: float = 0.0,
    seed: int = 0,
    epochs: int = 200,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
    vector_cache: Path | None = VECTOR_CACHE_DIR,
) -> HeadMetadata:
    """Load -> deduplicate -> ``split_stratified(seed)`` -> embed -> train -> save the head in ``out``.

    Returns what was written to ``out/head.json``, validation and test metrics included.
    """
    encoder_dir = encoder_dir or default_encoder_path()
    items, source_name = source.load(min_confidence)
    deduplicated = datasets.deduplicate(items)
    splits = datasets.split_stratified(deduplicated.items, seed=seed)

    encoder = BertEncoder(encoder_dir, pooling, max_length=max_length, device=device)
    # Embedded in file order, not split order, so a new seed reuses the cached vectors.
    texts = [item.text for item in deduplicated.items]
    vectors = embed_texts(encoder, texts, batch_size, progress, cache_dir=vector_cache)
    row_of = {text: row for row, text in enumerate(texts)}

    def tensors(part: Sequence[datasets.LabeledText]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor([row_of[item.text] for item in part])
        return vectors[rows], torch.tensor([LABELS.index(item.label) for item in part])

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = map(
        tensors, (splits.train, splits.validation, splits.test)
    )
    head, history = train_softmax_head(
        train_x, train_y, val_x, val_y, LABELS, epochs=epochs, seed=seed, progress=progress
    )
    metrics = {"val": evaluate(head, val_x, val_y), "test": evaluate(head, test_x, test_y)}
    metadata = HeadMetadata(
        labels=LABELS,
        pooling=pooling,
        hidden_size=encoder.hidden_size,
        encoder_id=encoder_name(encoder_dir),
        encoder_sha256=weights_sha256(encoder_dir),
        trained_on={
            "source": source_name,
            "fingerprint": datasets.fingerprint(deduplicated.items),
            "text_repair": source.text_repair,
            "sizes": splits.sizes(),
            "dropped": {
                "duplicates": deduplicated.duplicates_dropped,
                "conflicting_labels": deduplicated.conflicts_dropped,
            },
            "seed": seed,
            "min_confidence": min_confidence,
            "max_length": max_length,
            "best_epoch": history["best_epoch"],
        },
        metrics=metrics,
    )
    save_head(head, out, metadata)
    return metadata


def encoder_name(directory: Path) -> str:
    """The model's name from the first heading of its model card (``# all-MiniLM-L6-v2``), else the directory name."""
    card = directory / "README.md"
    if card.is_file():
        for line in card.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("# ") and line[2:].strip():
                return line[2:].strip()
    return directory.name


def metrics_table(metrics: dict[str, dict[str, Any]], labels: Sequence[str]) -> str:
    header = ["split", "n", "accuracy", "macro-F1", *(f"F1 {label.lower()}" for label in labels)]
    lines = ["  ".join(f"{cell:>12}" for cell in header)]
    for split, m in metrics.items():
        cells = [
            split,
            m["n"],
            f"{m['accuracy']:.4f}",
            f"{m['macro_f1']:.4f}",
            *(f"{m['f1'][label]:.4f}" for label in labels),
        ]
        lines.append("  ".join(f"{cell:>12}" for cell in cells))
    return "\n".join(lines)
