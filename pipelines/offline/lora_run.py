"""``clstream finetune --lora``: LoRA adapters and a [CLS] softmax head train; the encoder stays frozen.

``out`` becomes a head directory (``head.safetensors``, ``head.json``, ``adapter.safetensors``)
that ``--head`` loads; see ``lora`` for the model.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch

from pipelines.offline.finetune_data import FinetuneData, FinetuneOptions
from pipelines.offline.lora import LoraClsModel, LoraSpec, write_head_metadata
from pipelines.offline.resume import TrainerState, resume_directory
from pipelines.offline.train_head import encoder_name
from pipelines.offline.vectors import DEFAULT_MAX_LENGTH, embed_texts
from schemas.records import LABELS
from workers.checkpoints import load_classifier
from workers.head import HeadMetadata
from workers.model import BertClassifier
from workers.offline_hub import keep_hub_offline


class LoraRun:
    """The LoRA fine-tune, as ``finetune_run.run_finetune`` drives it (see ``FinetuneStrategy``)."""

    def __init__(self, options: FinetuneOptions, data: FinetuneData, spec: LoraSpec) -> None:
        self.options = options
        self.data = data
        self.spec = spec
        self.model: LoraClsModel | None = None

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        options = self.options
        torch.manual_seed(options.config.seed)  # LoRA's A matrices and the head's initialisation
        metadata = HeadMetadata(
            labels=LABELS,
            pooling="cls",
            hidden_size=0,
            encoder_id=encoder_name(options.encoder_dir),
            encoder_sha256=self.data.run_info["encoder_sha256"],
            trained_on={
                **self.data.trained_on,
                "method": "lora",
                "lora": asdict(self.spec),
                "config": asdict(options.config),
            },
        )
        model = LoraClsModel(options.encoder_dir, self.spec, metadata)
        model.metadata = replace(metadata, hidden_size=model.head.linear.in_features)
        if options.resume:
            model.load_trained(resume_directory(options.out))
        self.model = model
        keep_hub_offline()
        from transformers import AutoTokenizer

        # The base encoder's tokenizer: the head directory does not carry one.
        tokenizer = AutoTokenizer.from_pretrained(
            str(options.encoder_dir), local_files_only=True, trust_remote_code=False
        )
        return model, tokenizer

    def test_predictions(self, texts: list[str]) -> np.ndarray:
        # Scored as `clstream eval` scores the default (128 tokens, through its vector cache), so
        # the eval run after this one reuses these vectors instead of encoding the test set again.
        options = self.options
        best = load_classifier(options.encoder_dir, options.out, "cls", DEFAULT_MAX_LENGTH, options.device)
        assert isinstance(best, BertClassifier)
        vectors = embed_texts(best.encoder, texts, options.config.batch_size * 2, options.progress)
        with torch.no_grad():
            return best.head.logits(vectors).argmax(dim=1).numpy()

    def write_metadata(self, state: TrainerState, test: dict[str, Any], device: torch.device) -> None:
        assert self.model is not None, "model_and_tokenizer() builds the model first"
        metadata = self.model.metadata
        trained_on = {
            **metadata.trained_on,
            "device": str(device),
            "best_epoch": state.best_epoch,
            "history": state.history["epochs"],
        }
        metrics = {"val_macro_f1": state.best_val_macro_f1, "test": test}
        write_head_metadata(self.options.out, replace(metadata, trained_on=trained_on, metrics=metrics))

    def saved(self) -> str:
        out = self.options.out
        return f"head + LoRA adapter written to {out} (load it with --head {out})"
