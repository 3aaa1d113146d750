"""The linear softmax head on top of a pooled sentence vector, stored as safetensors + JSON.

A head directory holds ``head.safetensors`` (``weight`` [labels, dim], ``bias`` [labels]) and
``head.json`` (labels in row order, pooling, the encoder it was trained on, metrics).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from schemas.errors import ModelLoadError
from schemas.records import LABELS, Label

WEIGHTS_FILE = "head.safetensors"
META_FILE = "head.json"
DEFAULT_HEAD_DIR = Path(__file__).parent / "heads" / "default"


@dataclass(frozen=True)
class HeadMetadata:
    labels: tuple[str, ...]
    pooling: str
    hidden_size: int
    encoder_id: str
    encoder_sha256: str
    trained_on: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.labels) - {label.value for label in Label}
        if unknown or len(set(self.labels)) != len(self.labels):
            raise ModelLoadError(
                f"head labels {self.labels} must be distinct members of {[x.value for x in Label]}"
            )


class SoftmaxHead(nn.Module):
    """``softmax(W · x + b)`` over the head's labels."""

    def __init__(self, hidden_size: int, labels: Sequence[str] = LABELS) -> None:
        super().__init__()
        self.labels = tuple(labels)
        self.linear = nn.Linear(hidden_size, len(self.labels))

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(pooled)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(pooled).float(), dim=-1)


def save_head(head: SoftmaxHead, directory: Path, metadata: HeadMetadata) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "weight": head.linear.weight.detach().cpu().contiguous(),
        "bias": head.linear.bias.detach().cpu().contiguous(),
    }
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "clstream-head-v1"})
    (directory / META_FILE).write_text(json.dumps(asdict(metadata), indent=2, sort_keys=True) + "\n")


def load_head(directory: Path) -> tuple[SoftmaxHead, HeadMetadata]:
    weights, meta = directory / WEIGHTS_FILE, directory / META_FILE
    if not weights.is_file() or not meta.is_file():
        pickles = sorted(p.name for p in directory.glob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl"})
        hint = (
            f" (found {pickles}: pickle files are refused, save the head as safetensors)" if pickles else ""
        )
        raise ModelLoadError(
            f"{directory} is not a head directory: it needs {WEIGHTS_FILE} and {META_FILE}{hint}"
        )
    raw = json.loads(meta.read_text())
    metadata = HeadMetadata(**{**raw, "labels": tuple(raw["labels"])})
    tensors = load_file(str(weights))
    head = SoftmaxHead(metadata.hidden_size, metadata.labels)
    expected = {"weight": (len(metadata.labels), metadata.hidden_size), "bias": (len(metadata.labels),)}
    for name, shape in expected.items():
        if name not in tensors or tuple(tensors[name].shape) != shape:
            got = tuple(tensors[name].shape) if name in tensors else None
            raise ModelLoadError(f"{weights}: tensor {name!r} should have shape {shape}, got {got}")
    head.linear.weight.data.copy_(tensors["weight"])
    head.linear.bias.data.copy_(tensors["bias"])
    return head.eval(), metadata
