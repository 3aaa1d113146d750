"""Sentence vectors from an encoder's output: one small function per pooling strategy.

All take the encoder's ``hidden_states`` (a tuple, one ``[batch, seq, dim]`` tensor per layer,
embeddings first), the ``attention_mask`` (``[batch, seq]``, 1 for real tokens) and the
``pooler_output`` (``[batch, dim]`` or None), and return ``[batch, dim]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

PoolFn = Callable[[Sequence[torch.Tensor], torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def pool_cls(
    hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor, pooler_output=None
) -> torch.Tensor:
    """Final layer's hidden state of the [CLS] token (position 0)."""
    return hidden_states[-1][:, 0]


def pool_mean(
    hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor, pooler_output=None
) -> torch.Tensor:
    """Mean of the final layer over real tokens only (padding excluded by the mask)."""
    last = hidden_states[-1]
    mask = attention_mask.unsqueeze(-1).to(last.dtype)
    return (last * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def pool_last4(
    hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor, pooler_output=None
) -> torch.Tensor:
    """[CLS] (position 0) of the sum of the last four layers (Devlin et al., 2019, feature-based)."""
    if len(hidden_states) < 5:
        raise ValueError(f"last4 pooling needs at least 4 encoder layers, got {len(hidden_states) - 1}")
    return torch.stack([layer[:, 0] for layer in hidden_states[-4:]]).sum(dim=0)


def pool_pooler(
    hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor, pooler_output=None
) -> torch.Tensor:
    """The model's own pooler output (BERT: tanh(W · [CLS])); only for models that have a pooler."""
    if pooler_output is None:
        raise ValueError("pooler pooling needs a model with a pooler layer; this encoder has none")
    return pooler_output


POOLINGS: dict[str, PoolFn] = {"cls": pool_cls, "mean": pool_mean, "last4": pool_last4, "pooler": pool_pooler}

#: Poolings that read only position 0 of the final layer: its last layer may compute [CLS] alone
#: (``workers.cls_only``).
READS_POSITION_ZERO = frozenset({"cls", "pooler"})

#: Poolings that need every layer's hidden states from the encoder (others need only the last).
NEEDS_ALL_LAYERS = frozenset({"last4"})
