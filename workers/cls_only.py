"""The encoder's forward for poolings that read position 0 only: the last layer computes [CLS].

[CLS] pooling reads one row of the final layer. Every earlier layer must run over all tokens (the
last layer's keys and values come from them), but in the last layer only position 0's query, its
attention output and its feed-forward block reach that row. A stock forward computes them for
every token and throws all but one away: in a 6-layer encoder that is 10/72 of the dense work.
``ClsOnlyForward`` runs the first layers through the model's own modules, then the last layer's
keys and values over all tokens and the rest for position 0 alone. The result is the same vector,
to float rounding; ``workers.model`` checks that on every load and otherwise runs the stock forward.

Only torch and transformers are imported, so the GPU script (``pipelines/bench/gpu_model_only.py``)
runs the same path on a machine without the rest of clstream.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

#: Attribute paths of the last layer that ``ClsOnlyForward`` calls (the BERT and RoBERTa layout).
_LAYER_PARTS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "intermediate.intermediate_act_fn",
    "output.dense",
    "output.LayerNorm",
)


class ClsOnlyForward(torch.nn.Module):
    """``(input_ids, attention_mask) -> [batch, hidden]``: the final layer's hidden state at
    position 0, with the last layer computed for that position only. Shares ``model``'s weights."""

    def __init__(self, model: Any, bidirectional_mask: Any) -> None:
        super().__init__()
        self.embeddings = model.embeddings
        self.layers = torch.nn.ModuleList(list(model.encoder.layer)[:-1])
        self.last = model.encoder.layer[-1]
        self.config = model.config
        self._mask = bidirectional_mask
        attention = self.last.attention.self
        self.heads = int(attention.num_attention_heads)
        self.head_size = int(attention.attention_head_size)
        self.scale = float(getattr(attention, "scaling", self.head_size**-0.5))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(input_ids=input_ids)
        # The model's own mask for its attention implementation (None where nothing is padded).
        mask = self._mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return self._last_layer_at_cls(hidden, attention_mask)

    def _last_layer_at_cls(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        last = self.last
        batch, length, width = hidden.shape
        cls = hidden[:, :1]
        query = last.attention.self.query(cls).view(batch, 1, self.heads, self.head_size).transpose(1, 2)
        key = last.attention.self.key(hidden).view(batch, length, self.heads, self.head_size).transpose(1, 2)
        value = (
            last.attention.self.value(hidden).view(batch, length, self.heads, self.head_size).transpose(1, 2)
        )
        keep = attention_mask[:, None, None, :].bool()
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=keep, scale=self.scale)
        context = context.transpose(1, 2).reshape(batch, 1, width)
        attended = last.attention.output.LayerNorm(last.attention.output.dense(context) + cls)
        inner = last.intermediate.intermediate_act_fn(last.intermediate.dense(attended))
        return last.output.LayerNorm(last.output.dense(inner) + attended)[:, 0]


def cls_only_forward(model: Any) -> ClsOnlyForward | None:
    """``ClsOnlyForward`` over ``model``, or None where the model is not laid out as a BERT-family
    encoder (an embeddings module, ``encoder.layer``, the parts in ``_LAYER_PARTS``, no decoder or
    cross-attention) or this transformers has no public bidirectional-mask function.

    The layout is only a precondition: the caller compares the outputs with the stock forward's."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:
        return None
    config = getattr(model, "config", None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if (
        config is None
        or getattr(config, "is_decoder", False)
        or getattr(config, "add_cross_attention", False)
        or getattr(model, "embeddings", None) is None
        or hasattr(model, "embeddings_project")  # ELECTRA-small's projection between the two
        or not isinstance(layers, torch.nn.ModuleList)
        or len(layers) < 1
    ):
        return None
    for path in _LAYER_PARTS:
        part: Any = layers[-1]
        for name in path.split("."):
            part = getattr(part, name, None)
        if part is None:
            return None
    return ClsOnlyForward(model, create_bidirectional_mask)
