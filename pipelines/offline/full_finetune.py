"""``clstream finetune`` without ``--lora``: the whole encoder trains, as a sequence classifier.

The encoder becomes a ``*ForSequenceClassification`` model (for BERT: [CLS] -> pooler -> linear).
``out`` holds config.json (id2label 0 POSITIVE, 1 NEGATIVE, 2 NEUTRAL), model.safetensors, the
tokenizer and clstream.json (metrics, data fingerprint, seed, settings): a checkpoint that
``eval --checkpoint`` and ``run --encoder`` load as it is.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.offline.finetune_data import FinetuneData, FinetuneOptions
from pipelines.offline.predictions import classifier_predictions
from pipelines.offline.resume import TrainerState, resume_directory
from pipelines.offline.train_head import encoder_name
from schemas.errors import ModelLoadError
from schemas.records import LABELS
from workers.checkpoints import SequenceClassifierModel, is_sequence_classification_checkpoint, label_columns
from workers.model import safetensors_weights
from workers.offline_hub import keep_hub_offline

METADATA_FILE = "clstream.json"


def build_model(encoder_dir: Path) -> tuple[torch.nn.Module, Any]:
    """A sequence classifier with our three labels on top of ``encoder_dir`` (safetensors only)."""
    keep_hub_offline()
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    safetensors_weights(encoder_dir)
    if is_sequence_classification_checkpoint(encoder_dir):
        # Continuing from a classifier keeps its head only if its columns already are ours.
        config = AutoConfig.from_pretrained(str(encoder_dir), local_files_only=True, trust_remote_code=False)
        if label_columns(config.id2label) != list(range(len(LABELS))):
            raise ModelLoadError(f"{encoder_dir}'s labels {config.id2label} are not in the order {LABELS}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(encoder_dir), local_files_only=True, trust_remote_code=False
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            str(encoder_dir),
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id={label: index for index, label in enumerate(LABELS)},
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not build a sequence classifier from {encoder_dir}: {exc}") from exc
    return model, tokenizer


class FullRun:
    """The full fine-tune, as ``finetune_run.run_finetune`` drives it (see ``FinetuneStrategy``)."""

    def __init__(self, options: FinetuneOptions, data: FinetuneData) -> None:
        self.options = options
        self.data = data

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        out = self.options.out
        if self.options.resume:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            checkpoint = str(resume_directory(out))
            model = AutoModelForSequenceClassification.from_pretrained(
                checkpoint, local_files_only=True, use_safetensors=True, trust_remote_code=False
            )
            tokenizer = AutoTokenizer.from_pretrained(
                checkpoint, local_files_only=True, trust_remote_code=False
            )
            return model, tokenizer
        torch.manual_seed(self.options.config.seed)  # the new classification layer's initialisation
        return build_model(self.options.encoder_dir)

    def test_predictions(self, texts: list[str]) -> np.ndarray:
        config = self.options.config
        classifier = SequenceClassifierModel(
            self.options.out,
            max_length=config.max_length,
            device=self.options.device,
            batch_size=config.batch_size * 2,
        )
        return classifier_predictions(classifier, texts, self.options.progress, "test")

    def write_metadata(self, state: TrainerState, test: dict[str, Any], device: torch.device) -> None:
        metadata = {
            "base_encoder": encoder_name(self.options.encoder_dir),
            "base_encoder_sha256": self.data.run_info["encoder_sha256"],
            "labels": list(LABELS),
            "trained_on": self.data.trained_on,
            "config": asdict(self.options.config),
            "device": str(device),
            "best_epoch": state.best_epoch,
            "metrics": {"val_macro_f1": state.best_val_macro_f1, "test": test},
            "history": state.history["epochs"],
        }
        (self.options.out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")

    def saved(self) -> str:
        out = self.options.out
        return f"model written to {out} (load it with --checkpoint {out}, or as the run encoder)"
