"""User checkpoints: pick the right ``Classifier`` for a local model directory.

Two kinds of directory are accepted, both safetensors only and never with ``trust_remote_code``:

- a Hugging Face encoder (``BertModel`` and friends) plus one of our head directories:
  ``BertClassifier.load`` (pooling + ``SoftmaxHead``);
- a ``*ForSequenceClassification`` checkpoint (``clstream finetune`` output, or any local one):
  ``SequenceClassifierModel``, which uses the checkpoint's own head. Its ``config.id2label``
  must name our three labels (pos/neg/neu or positive/negative/neutral, any case); checkpoints
  with generic names (``LABEL_0``...) need an explicit ``label_map``.

``load_classifier`` is the one entry point the actor, ``eval`` and ``bench`` call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from schemas.errors import ModelLoadError
from schemas.records import LABELS, label_named
from workers.batching import BatchStats
from workers.forward import forward_in_batches, token_ids
from workers.model import (
    BertClassifier,
    load_hf_model,
    resolve_device,
    resolve_precision,
    safetensors_weights,
    weights_sha256,
)
from workers.offline_hub import keep_hub_offline
from workers.ports import Classifier

SEQUENCE_CLASSIFICATION_SUFFIX = "ForSequenceClassification"


def is_sequence_classification_checkpoint(directory: Path) -> bool:
    """True when ``directory/config.json`` lists an architecture ending in ``ForSequenceClassification``."""
    config = directory / "config.json"
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{config} is not a JSON object: {exc}") from exc
    return any(str(name).endswith(SEQUENCE_CLASSIFICATION_SUFFIX) for name in architectures)


def label_columns(id2label: Mapping[int, str], label_map: Mapping[str, str] | None = None) -> list[int]:
    """For each of ``LABELS`` in order, the checkpoint's output column holding it.

    A checkpoint name is looked up in ``label_map`` first (exactly, then casefolded), then among the
    known spellings. The checkpoint must have exactly three outputs naming each label once;
    anything else raises ``ModelLoadError`` naming the labels found.
    """
    user_map = {str(k).casefold(): v for k, v in (label_map or {}).items()}
    ours: dict[str, int] = {}
    for column, name in sorted((int(k), str(v)) for k, v in id2label.items()):
        raw = (label_map or {}).get(name) or user_map.get(name.casefold()) or name
        label = label_named(raw)
        if label is None or label in ours:
            break
        ours[label] = column
    if len(id2label) != len(LABELS) or set(ours) != set(LABELS):
        found = [str(v) for _, v in sorted((int(k), v) for k, v in id2label.items())]
        hint = (
            " (generic names: pass a label map, e.g. {'LABEL_0': 'NEGATIVE', ...})"
            if any(name.upper().startswith("LABEL_") for name in found)
            else ""
        )
        raise ModelLoadError(
            f"the checkpoint's labels {found} do not map one-to-one onto {list(LABELS)}; "
            f"accepted names are positive/negative/neutral or pos/neg/neu in any case{hint}"
        )
    return [ours[label] for label in LABELS]


class SequenceClassifierModel:
    """``Classifier`` over a local ``*ForSequenceClassification`` checkpoint and its own head.

    Not thread-safe; one instance per actor. ``classify`` returns probabilities in ``LABELS``
    order whatever the checkpoint's column order. ``pooling`` is ``"cls"``: BERT-family
    classification heads read the first token.
    """

    pooling = "cls"

    def __init__(
        self,
        directory: Path,
        label_map: Mapping[str, str] | None = None,
        max_length: int = 128,
        device: str = "auto",
        batch_size: int = 64,
        max_tokens: int | None = None,
        precision: str = "auto",
    ) -> None:
        keep_hub_offline()
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        safetensors_weights(directory)
        try:
            config = AutoConfig.from_pretrained(
                str(directory), local_files_only=True, trust_remote_code=False
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not read the model config in {directory}: {exc}") from exc
        # Checked before the weights load, so a wrong mapping fails in milliseconds.
        self._columns = torch.tensor(label_columns(config.id2label, label_map))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(directory), local_files_only=True, trust_remote_code=False
            )
            self.model = load_hf_model(AutoModelForSequenceClassification, directory)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load a sequence classifier from {directory}: {exc}") from exc
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.model.eval().to(self.device)
        self.directory = directory
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.labels = LABELS
        self.model_id = f"{directory.name}+own-head@{weights_sha256(directory)[:12]}"
        self.stats = BatchStats()

    @property
    def real_tokens(self) -> int:
        return self.stats.real_tokens

    @property
    def padded_tokens(self) -> int:
        return self.stats.computed_tokens

    @torch.inference_mode()
    def classify(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), 3]`` float32 probabilities in ``LABELS`` order, rows in input order."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        columns = self._columns.to(self.device)

        def probabilities(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits.float()
            # Reordered into LABELS order before the softmax, whatever the checkpoint's order.
            return torch.softmax(logits[:, columns], dim=-1)

        done = forward_in_batches(
            token_ids(self.tokenizer, texts, self.max_length),
            probabilities,
            width=len(self.labels),
            pad_id=int(self.tokenizer.pad_token_id or 0),
            device=self.device,
            autocast_dtype=self.autocast_dtype,
            batch_size=self.batch_size,
            max_tokens=self.max_tokens,
        )
        self.stats.add(len(texts), done.batches, done.real_tokens, done.padded_tokens)
        return done.vectors.cpu().numpy()


def load_classifier(
    encoder_dir: Path | None = None,
    head_dir: Path | None = None,
    pooling: str | None = None,
    max_length: int = 128,
    device: str = "auto",
    batch_size: int = 64,
    label_map: Mapping[str, str] | None = None,
    max_tokens: int | None = None,
    precision: str = "auto",
    trace: bool = True,
) -> Classifier:
    """The classifier for a model directory (None: the embedded encoder with the shipped head).

    A ``*ForSequenceClassification`` checkpoint brings its own head, so ``head_dir`` must be None
    and ``pooling`` None or ``"cls"``; any other directory is an encoder for ``BertClassifier.load``.
    ``trace`` applies to an encoder with a head (``BertEncoder``); a sequence-classification
    checkpoint runs eagerly. Raises ``ModelLoadError`` (``UnsafeCheckpointError`` for pickle-only
    weights).
    """
    if encoder_dir is not None and is_sequence_classification_checkpoint(encoder_dir):
        if head_dir is not None:
            raise ModelLoadError(
                f"{encoder_dir} is a sequence-classification checkpoint with its own head; "
                f"do not also give a head directory ({head_dir})"
            )
        if pooling not in (None, SequenceClassifierModel.pooling):
            raise ModelLoadError(
                f"{encoder_dir} classifies from its own [CLS]-based head; pooling {pooling!r} does not apply "
                "(leave pooling at 'cls')"
            )
        return SequenceClassifierModel(
            encoder_dir, label_map, max_length, device, batch_size, max_tokens, precision
        )
    return BertClassifier.load(
        encoder_dir, head_dir, pooling, max_length, device, batch_size, max_tokens, precision, trace
    )
