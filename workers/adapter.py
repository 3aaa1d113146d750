"""A LoRA adapter for the encoder, stored as safetensors and merged into the weights at load time.

``adapter.safetensors`` (next to a head's ``head.safetensors``) holds, for every adapted
``nn.Linear`` of the encoder (named as in ``BertModel.named_modules()``, e.g.
``encoder.layer.0.attention.self.query``), two tensors: ``<module>.lora_A`` ``[rank, in]`` and
``<module>.lora_B`` ``[out, rank]``. The file's metadata holds ``format`` (``clstream-lora-v1``),
``rank`` and ``alpha``. Merging adds ``(alpha / rank) * B @ A`` to each weight: afterwards the
encoder is a plain ``BertModel`` again, so inference costs exactly what it did without the adapter.

The file is read with ``safetensors`` only; a directory offering the adapter only as a pickle
(``adapter.bin``, peft's ``adapter_model.bin``...) is refused with ``UnsafeCheckpointError``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from schemas.errors import ModelLoadError, UnsafeCheckpointError

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_FORMAT = "clstream-lora-v1"
_PICKLED_ADAPTERS = ("adapter.bin", "adapter.pt", "adapter_model.bin", "adapter_model.pt")


@dataclass(frozen=True)
class LoraAdapter:
    """Low-rank weight updates: ``delta W[module] = scaling * B[module] @ A[module]``."""

    rank: int
    alpha: float
    lora_a: dict[str, torch.Tensor]  # module -> [rank, in]
    lora_b: dict[str, torch.Tensor]  # module -> [out, rank]
    sha256: str = ""

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def modules(self) -> list[str]:
        return sorted(self.lora_a)


def save_adapter(adapter: LoraAdapter, directory: Path) -> Path:
    """Write ``directory/adapter.safetensors``; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module in adapter.modules:
        tensors[f"{module}.lora_A"] = adapter.lora_a[module].detach().float().cpu().contiguous()
        tensors[f"{module}.lora_B"] = adapter.lora_b[module].detach().float().cpu().contiguous()
    path = directory / ADAPTER_FILE
    save_file(
        tensors,
        str(path),
        metadata={"format": ADAPTER_FORMAT, "rank": str(adapter.rank), "alpha": str(float(adapter.alpha))},
    )
    return path


def load_adapter(directory: Path) -> LoraAdapter | None:
    """The adapter in ``directory``, or None when it has none (a head trained on a frozen encoder).

    Raises ``UnsafeCheckpointError`` when the only adapter there is a pickle, ``ModelLoadError``
    when the file is not a well-formed clstream LoRA adapter.
    """
    path = directory / ADAPTER_FILE
    if not path.is_file():
        pickles = sorted(name for name in _PICKLED_ADAPTERS if (directory / name).exists())
        if pickles:
            raise UnsafeCheckpointError(
                f"{directory} has an adapter only as pickle {pickles}; clstream loads safetensors only "
                f"(save it as {ADAPTER_FILE} with `clstream finetune --lora`)"
            )
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise ModelLoadError(f"{path} is not a readable safetensors file: {exc}") from exc
    if metadata.get("format") != ADAPTER_FORMAT:
        raise ModelLoadError(f"{path} is not a {ADAPTER_FORMAT} adapter (format {metadata.get('format')!r})")
    try:
        rank, alpha = int(metadata["rank"]), float(metadata["alpha"])
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"{path}: metadata needs integer 'rank' and number 'alpha': {exc}") from exc
    lora_a = {key.removesuffix(".lora_A"): t for key, t in tensors.items() if key.endswith(".lora_A")}
    lora_b = {key.removesuffix(".lora_B"): t for key, t in tensors.items() if key.endswith(".lora_B")}
    if set(lora_a) != set(lora_b) or len(lora_a) + len(lora_b) != len(tensors) or not lora_a:
        raise ModelLoadError(f"{path}: every adapted module needs exactly one lora_A and one lora_B")
    for module in lora_a:
        a, b = lora_a[module], lora_b[module]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise ModelLoadError(
                f"{path}: {module} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, "
                f"expected [{rank}, in] and [out, {rank}]"
            )
    with open(path, "rb") as handle:
        sha = hashlib.sha256(handle.read()).hexdigest()
    return LoraAdapter(rank, alpha, lora_a, lora_b, sha)


@torch.no_grad()
def merge_adapter(model: nn.Module, adapter: LoraAdapter) -> None:
    """Add the adapter's updates to ``model``'s linear weights, in place.

    Every adapted module must exist in ``model`` as an ``nn.Linear`` of matching shape, else
    ``ModelLoadError`` and ``model`` is left untouched (all modules are checked before any write).
    """
    modules = dict(model.named_modules())
    targets = []
    for name in adapter.modules:
        linear = modules.get(name)
        a, b = adapter.lora_a[name], adapter.lora_b[name]
        if not isinstance(linear, nn.Linear):
            raise ModelLoadError(f"the adapter changes {name!r}, which is not a linear layer of this encoder")
        if (linear.out_features, linear.in_features) != (b.shape[0], a.shape[1]):
            raise ModelLoadError(
                f"the adapter's {name} is {b.shape[0]}x{a.shape[1]}, the encoder's is "
                f"{linear.out_features}x{linear.in_features}: it was trained on another encoder"
            )
        targets.append((linear, a, b))
    for linear, a, b in targets:
        delta = (b.double() @ a.double()) * adapter.scaling
        linear.weight.add_(delta.to(device=linear.weight.device, dtype=linear.weight.dtype))
