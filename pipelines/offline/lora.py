"""The model ``clstream finetune --lora`` trains: BERT with LoRA adapters, [CLS], linear softmax head.

The encoder's own weights stay frozen; peft inserts rank-``r`` updates into the chosen linear
layers, and they are trained together with a fresh ``SoftmaxHead`` on the final hidden state at
position 0 (``cls`` pooling), with the same loop, schedule and resume machinery as full
fine-tuning (``pipelines.offline.finetune``; ``lora_run`` drives it). What it saves is a head
directory like ``train-head``'s plus
``adapter.safetensors`` (``workers.adapter``), a few hundred KB instead of the 90 MB encoder;
``BertClassifier.load`` merges the adapter into the encoder at load time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from schemas.errors import ModelLoadError
from schemas.records import LABELS
from workers.adapter import ADAPTER_FILE, LoraAdapter, load_adapter, save_adapter
from workers.head import META_FILE, WEIGHTS_FILE, HeadMetadata, SoftmaxHead, save_head
from workers.model import safetensors_weights
from workers.offline_hub import keep_hub_offline

#: LoRA's few parameters start at zero (B = 0) and need a larger step than full fine-tuning's 2e-5.
LORA_LR = 1e-3

#: Every linear layer inside the transformer blocks (attention q/k/v/output and both FFN layers);
#: the pooler is not used by ``cls`` pooling, and embeddings are left alone.
ALL_BLOCK_LINEARS = (
    r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)"
)


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    #: alpha / rank scales the update; alpha = 2 * rank is the common choice (scaling 2).
    alpha: int = 16
    dropout: float = 0.1
    target_modules: str = ALL_BLOCK_LINEARS


class LoraClsModel(nn.Module):
    """``SoftmaxHead(encoder_with_lora(texts).last_hidden_state[:, 0])``; only LoRA and head train.

    ``forward`` takes the tokenizer's batch and returns an object with ``logits`` ([batch, 3], in
    ``LABELS`` order), like a ``*ForSequenceClassification`` model, so ``pipelines.offline.finetune``
    trains it unchanged. ``save_pretrained(dir)`` writes ``head.safetensors``, ``head.json`` and
    ``adapter.safetensors`` only.
    """

    #: ``pipelines.offline.resume.save_model`` writes tokenizer files next to models that need them; this one
    #: reuses the base encoder's tokenizer.
    saves_tokenizer = False

    def __init__(self, encoder_dir: Path, spec: LoraSpec, metadata: HeadMetadata) -> None:
        super().__init__()
        keep_hub_offline()
        from peft import LoraConfig, inject_adapter_in_model
        from transformers import AutoModel

        safetensors_weights(encoder_dir)
        try:
            encoder = AutoModel.from_pretrained(
                str(encoder_dir), local_files_only=True, use_safetensors=True, trust_remote_code=False
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load a Hugging Face encoder from {encoder_dir}: {exc}") from exc
        for parameter in encoder.parameters():
            parameter.requires_grad_(False)
        config = LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=spec.target_modules,
            bias="none",
        )
        self.encoder = inject_adapter_in_model(config, encoder)
        for name, parameter in self.encoder.named_parameters():
            parameter.requires_grad_("lora_" in name)
        if not any(p.requires_grad for p in self.encoder.parameters()):
            raise ModelLoadError(
                f"no layer of {encoder_dir} matches the LoRA targets {spec.target_modules!r}"
            )
        self.spec = spec
        self.metadata = metadata
        self.head = SoftmaxHead(int(encoder.config.hidden_size), LABELS)

    def forward(self, **batch: torch.Tensor) -> SimpleNamespace:
        hidden = self.encoder(**batch).last_hidden_state
        return SimpleNamespace(logits=self.head.logits(hidden[:, 0]))

    def _lora_layers(self) -> dict[str, Any]:
        from peft.tuners.lora import LoraLayer

        return {
            name: module for name, module in self.encoder.named_modules() if isinstance(module, LoraLayer)
        }

    def export_adapter(self) -> LoraAdapter:
        """The trained updates, named by the plain encoder's module names."""
        layers = self._lora_layers()
        return LoraAdapter(
            rank=self.spec.rank,
            alpha=self.spec.alpha,
            lora_a={name: layer.lora_A["default"].weight.detach().cpu() for name, layer in layers.items()},
            lora_b={name: layer.lora_B["default"].weight.detach().cpu() for name, layer in layers.items()},
        )

    @torch.no_grad()
    def load_trained(self, directory: Path) -> None:
        """Take the adapter and head saved in ``directory`` (to resume training)."""
        adapter = load_adapter(directory)
        layers = self._lora_layers()
        if adapter is None or set(adapter.modules) != set(layers) or adapter.rank != self.spec.rank:
            raise ModelLoadError(f"{directory / ADAPTER_FILE} does not fit the LoRA layers of this run")
        for name, layer in layers.items():
            layer.lora_A["default"].weight.copy_(adapter.lora_a[name])
            layer.lora_B["default"].weight.copy_(adapter.lora_b[name])
        tensors = load_file(str(directory / WEIGHTS_FILE))
        self.head.linear.weight.copy_(tensors["weight"])
        self.head.linear.bias.copy_(tensors["bias"])

    def save_pretrained(self, directory: Path, safe_serialization: bool = True) -> None:
        if not safe_serialization:
            raise ValueError("clstream writes safetensors only")
        save_head(self.head, Path(directory), self.metadata)
        save_adapter(self.export_adapter(), Path(directory))


def write_head_metadata(directory: Path, metadata: HeadMetadata) -> None:
    """Rewrite ``head.json`` (e.g. with the final test metrics), in ``save_head``'s format."""
    (directory / META_FILE).write_text(json.dumps(asdict(metadata), indent=2, sort_keys=True) + "\n")
