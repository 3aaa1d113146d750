"""Token-budgeted, length-bucketed batches: which texts share one forward pass.

An encoder pass over a padded batch costs ``rows × longest row`` token slots whatever the real
lengths are, so tweets (a few tokens to ~80) waste much of it when batched in arrival order.
``plan_batches`` is a pure function from token counts to index groups: sorted by length, each
group's padded size within a token budget. The caller computes each group and writes results
back by index, so the order of its output (and so of offsets and commits) never changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def plan_batches(lengths: Sequence[int], max_tokens: int, max_records: int | None = None) -> list[list[int]]:
    """Indices into ``lengths`` grouped into forward passes, shortest texts first.

    Contract: every index appears in exactly one group; within a group and across groups the
    lengths are non-decreasing (ties keep input order); a group's padded cost
    ``len(group) * max(length in group)`` is at most ``max_tokens`` and it holds at most
    ``max_records`` indices, except that a single text longer than ``max_tokens`` forms a
    group of its own (it must be computed somehow; truncation is the tokenizer's job).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if max_records is not None and max_records < 1:
        raise ValueError(f"max_records must be at least 1, got {max_records}")
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    group: list[int] = []
    for index in order:
        # Ascending order: this text is the group's longest, so it sets the padded width.
        width = max(1, lengths[index])
        full = max_records is not None and len(group) >= max_records
        if group and (full or (len(group) + 1) * width > max_tokens):
            groups.append(group)
            group = []
        group.append(index)
    if group:
        groups.append(group)
    return groups


def padded_cost(lengths: Sequence[int], groups: Sequence[Sequence[int]]) -> int:
    """Token slots computed when each group is padded to its longest member."""
    return sum(len(group) * max(lengths[i] for i in group) for group in groups if group)


@dataclass
class BatchStats:
    """Counters of encoder work since the classifier was built. Written by its one caller thread.

    ``real_tokens`` counts tokens of the texts themselves (special tokens included),
    ``computed_tokens`` the padded slots the encoder actually ran; their ratio is the padding
    efficiency (1.0: no padding at all).
    """

    texts: int = 0
    batches: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0

    @property
    def padding_efficiency(self) -> float | None:
        return self.real_tokens / self.computed_tokens if self.computed_tokens else None

    def add(self, texts: int, batches: int, real_tokens: int, computed_tokens: int) -> None:
        self.texts += texts
        self.batches += batches
        self.real_tokens += real_tokens
        self.computed_tokens += computed_tokens

    def snapshot(self) -> dict[str, float | int | None]:
        return {
            "texts": self.texts,
            "batches": self.batches,
            "real_tokens": self.real_tokens,
            "computed_tokens": self.computed_tokens,
            "padding_efficiency": self.padding_efficiency,
        }


def pad_group(token_ids: Sequence[Sequence[int]], group: Sequence[int], pad_id: int) -> np.ndarray:
    """``[2, len(group), longest]`` int64: input ids (right-padded with ``pad_id``) and the mask.

    One array for both, so a device copy is one transfer per batch.
    """
    width = max(len(token_ids[i]) for i in group)
    out = np.zeros((2, len(group), width), dtype=np.int64)
    out[0].fill(pad_id)
    for row, index in enumerate(group):
        ids = token_ids[index]
        out[0, row, : len(ids)] = ids
        out[1, row, : len(ids)] = 1
    return out
