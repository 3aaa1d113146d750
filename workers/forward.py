"""Token ids to pooled vectors over token-budgeted, length-bucketed forward passes.

The device path of ``workers.model``, kept free of the rest of clstream (it imports torch, numpy
and ``workers.batching`` only), so the GPU script ``pipelines/bench/gpu_model_only.py`` runs the
project's own tokenizer call, batch planner, padding and forward loop on a machine that has
torch and transformers but nothing else of clstream's dependencies.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workers.batching import pad_group, pass_cost_tokens, plan_batches


@dataclass(frozen=True)
class Encoded:
    """Pooled sentence vectors for a list of texts, in input order."""

    vectors: (
        torch.Tensor
    )  # [n, dim], float32; on CPU from ``encode``, on the device from ``encode_on_device``
    real_tokens: int
    padded_tokens: int
    batches: int = 0


def token_ids(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text (special tokens included, truncated to ``max_length``), unpadded: the
    batch planner pads each group to its own longest text, not the tokenizer.

    A fast (Rust) tokenizer is called through its backend's ``encode_batch_fast``, which runs
    without the GIL, skips the Python objects the ``transformers`` wrapper builds per text (a
    third of a tweet's tokenization time) and the character offsets nothing here reads (a sixth
    of what is left: 47 against 57 us a tweet on one core); the ids are the wrapper's
    (``tests/unit/workers/test_model.py``). Tokenizers without it use ``encode_batch``.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        batch = tokenizer(
            list(texts),
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return batch["input_ids"]
    if backend.truncation is None or backend.truncation.get("max_length") != max_length:
        backend.enable_truncation(max_length)
    if backend.padding is not None:
        backend.no_padding()
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    return [encoding.ids for encoding in encode(list(texts), add_special_tokens=True)]


@torch.inference_mode()
def forward_in_batches(
    ids: list[list[int]],
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    width: int,
    pad_id: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    batch_size: int,
    max_tokens: int | None,
    all_passes: Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], torch.Tensor] | None = None,
    pass_cost: int | None = None,
) -> Encoded:
    """``forward(input_ids, attention_mask)`` over every text of ``ids``; one float32 row of
    ``width`` per text, in input order, left on ``device`` (no synchronisation on CUDA).

    ``workers.batching.plan_batches`` groups the texts by length, at most ``batch_size`` texts and
    (when given) ``max_tokens`` padded token slots per pass; each group is padded to its own
    longest text and moved to the device in one copy. ``forward`` runs under autocast to
    ``autocast_dtype`` (None: float32) and returns ``[len(group), width]``.

    ``all_passes(packed, positions, rows)``, when given, runs on the CPU without autocast instead
    of one ``forward`` call per group: every group's packed ids and mask, the rows each fills, and
    the ``[n, width]`` output to fill, in one call (a TorchScript loop, ``workers.model``), so the
    model thread gives up and takes back the interpreter lock once per call, not at every pass.

    ``pass_cost`` (token slots) overrides the planner's price of one pass on this device
    (``workers.batching.pass_cost_tokens``); the GPU script sweeps it.
    """
    lengths = [len(row) for row in ids]
    if pass_cost is None:
        pass_cost = pass_cost_tokens(device.type, max_tokens)
    groups = plan_batches(lengths, max_tokens or sys.maxsize, batch_size, pass_cost)
    cuda = device.type == "cuda"
    rows = torch.empty((len(ids), width), dtype=torch.float32, device=device)
    if all_passes is not None and not cuda and autocast_dtype is None:
        every = [torch.from_numpy(pad_group(ids, group, pad_id)) for group in groups]
        positions = [torch.tensor(group) for group in groups]
        rows = all_passes(every, positions, rows)
        padded = sum(p.shape[1] * p.shape[2] for p in every)
        return Encoded(vectors=rows, real_tokens=sum(lengths), padded_tokens=padded, batches=len(groups))
    padded = 0
    for group in groups:
        host = torch.from_numpy(pad_group(ids, group, pad_id))
        padded += host.shape[1] * host.shape[2]
        # One pinned buffer, one asynchronous copy: ids and mask travel together. On CUDA the
        # groups are launched without waiting, so padding the next one overlaps this one's work.
        packed = host.pin_memory().to(device, non_blocking=True) if cuda else host
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            result = forward(packed[0], packed[1])
        rows.index_copy_(0, torch.tensor(group, device=device), result.float())
    return Encoded(vectors=rows, real_tokens=sum(lengths), padded_tokens=padded, batches=len(groups))
