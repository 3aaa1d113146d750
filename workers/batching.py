"""Token-budgeted, length-bucketed batches: which texts share one forward pass.

An encoder pass over a padded batch costs ``rows × longest row`` token slots whatever the real
lengths are, so tweets (a few tokens to ~80) waste much of it when batched in arrival order.
``plan_batches`` is a pure function from token counts to index groups: sorted by length, each
group's padded size within a token budget, cut where the lengths jump. The caller computes each group and writes results
back by index, so the order of its output (and so of offsets and commits) never changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def plan_batches(
    lengths: Sequence[int], max_tokens: int, max_records: int | None = None, pass_cost: int = 0
) -> list[list[int]]:
    """Indices into ``lengths`` grouped into forward passes, shortest texts first.

    Contract: every index appears in exactly one group; within a group and across groups the
    lengths are non-decreasing (ties keep input order); a group's padded cost
    ``len(group) * max(length in group)`` is at most ``max_tokens`` and it holds at most
    ``max_records`` indices, except that a single text longer than ``max_tokens`` forms a
    group of its own (it must be computed somehow; truncation is the tokenizer's job).

    Among the plans that keep the contract it picks one of least total cost, where a group
    costs its padded token slots plus ``pass_cost`` (the fixed price of one forward pass, in
    token slots), and among those the one whose groups start earliest (the biggest groups).
    Filling every group greedily up to the budget pads a group's short texts up to the longest
    one it happens to reach; cutting where the lengths jump costs one more pass and saves those
    slots. With ``pass_cost`` 0 the fewest padded slots win (ties: fewer groups).

    An exact dynamic programme over the sorted lengths: ``best[j]``, the least cost of the first
    ``j`` texts, is ``min(best[i] - i*w) + j*w + pass_cost`` over the starts ``i`` a group of
    width ``w`` may have. Within a run of equal lengths ``best[i] - i*w`` never decreases, so the
    run's own starts need only the earliest one, and the starts before the run come from one
    suffix-minimum scan: O(n + runs × group size) steps of plain Python, under a microsecond a
    tweet. It runs on the model's thread, where every step holds the interpreter lock.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if max_records is not None and max_records < 1:
        raise ValueError(f"max_records must be at least 1, got {max_records}")
    if pass_cost < 0:
        raise ValueError(f"pass_cost must be at least 0, got {pass_cost}")
    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lengths.__getitem__)
    widths = [max(1, lengths[i]) for i in order]
    cap = n if max_records is None else max_records
    # best[j]: least cost of the first j sorted texts; cut[j]: where the last group starts.
    best = [0] * (n + 1)
    cut = [0] * (n + 1)
    first = 1
    while first <= n:  # one run of equal widths: groups ending at j in [first, last]
        width = widths[first - 1]
        last = first
        while last < n and widths[last] == width:
            last += 1
        size = max(1, min(cap, max_tokens // width))
        before = first - 1  # the starts up to here are settled
        # low[i - oldest]: the least best[k] - k*width over k in [i, before], earliest on ties.
        oldest = max(0, first - size)
        low: list[tuple[int, int]] = [(0, 0)] * (before - oldest + 1)
        value, at = best[before] - before * width, before
        for i in range(before, oldest - 1, -1):
            here = best[i] - i * width
            if here <= value:
                value, at = here, i
            low[i - oldest] = (value, at)
        for j in range(first, last + 1):
            start = max(0, j - size)
            value, at = low[start - oldest] if start <= before else (-1, -1)
            inside = max(start, first)  # the run's earliest start a group ending at j may have
            if inside < j:
                here = best[inside] - inside * width
                if at < 0 or here < value:
                    value, at = here, inside
            best[j], cut[j] = value + j * width + pass_cost, at
        first = last + 1
    groups: list[list[int]] = []
    j = n
    while j > 0:
        i = cut[j]
        groups.append(order[i:j])
        j = i
    groups.reverse()
    return groups


#: What one forward pass costs beyond its token slots, in token slots, on a CPU: for
#: all-MiniLM-L6-v2 on one torch thread, ``clstream bench --quick`` ("one forward pass") fitted
#: 7 to 9 ms per pass plus 0.25 to 0.27 ms per slot, 29 to 35 slots, on this project's 2-core VM.
CPU_PASS_COST_TOKENS = 30


def pass_cost_tokens(device_type: str, max_tokens: int | None) -> int:
    """The ``pass_cost`` to plan with on this device.

    On a CPU a pass is cheap next to its tokens (``CPU_PASS_COST_TOKENS``), so cutting a group
    where the lengths jump pays. On a GPU short-tweet passes are bound by launch overhead, not
    by tokens, so a pass costs about as much as a full budget: the plan uses as few passes as
    the budget allows and, among those, the least padding. On an H100 a pass of the default
    encoder cost 2.8 ms whatever its size up to about 6,000 slots, and pricing it at the budget
    (16,384) ran 30,670 tweets/s against 22,119 at 2,048 and 517 at 0 (docs/gpu.md).
    """
    if device_type == "cpu":
        return CPU_PASS_COST_TOKENS
    return min(max_tokens or 4096, 1 << 20)


#: ``(inference_batch_size, max_batch_tokens)`` when the settings leave them unset, by device
#: type. CPU: chosen with ``clstream bench`` (docs/throughput.md). GPU: on an H100 a pass of the
#: default encoder cost 2.8 ms whatever its size up to about 6,000 slots, so a poll of 256 tweets
#: goes in one or two passes; 64 texts and 1,024 slots would cut it into nine or ten (docs/gpu.md).
BATCH_DEFAULTS: dict[str, tuple[int, int]] = {"cpu": (64, 1024), "cuda": (256, 16_384)}


def batch_limits(device_type: str, batch_size: int | None, max_tokens: int | None) -> tuple[int, int]:
    """Texts and padded token slots per forward pass on ``device_type``: the values given, or the
    device's defaults (``BATCH_DEFAULTS``; an accelerator other than CUDA takes the GPU's)."""
    default_size, default_tokens = BATCH_DEFAULTS.get(device_type, BATCH_DEFAULTS["cuda"])
    return (batch_size or default_size, max_tokens or default_tokens)


def padded_cost(lengths: Sequence[int], groups: Sequence[Sequence[int]]) -> int:
    """Token slots computed when each group is padded to its longest member."""
    return sum(len(group) * max(lengths[i] for i in group) for group in groups if group)


@dataclass
class BatchStats:
    """Counters of encoder work since the classifier was built. Written by its one caller thread.

    ``real_tokens`` counts tokens of the texts themselves (special tokens included),
    ``computed_tokens`` the padded slots the encoder actually ran; their ratio is the padding
    efficiency (1.0: no padding at all). ``forward_s`` is the wall time from token ids to
    probabilities on the host (padding, copies, forward passes, head; not tokenization): the
    time the device is busy, for ``device_busy_fraction``.
    """

    texts: int = 0
    batches: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0
    forward_s: float = 0.0

    @property
    def padding_efficiency(self) -> float | None:
        return self.real_tokens / self.computed_tokens if self.computed_tokens else None

    def add(
        self, texts: int, batches: int, real_tokens: int, computed_tokens: int, forward_s: float = 0.0
    ) -> None:
        self.texts += texts
        self.batches += batches
        self.real_tokens += real_tokens
        self.computed_tokens += computed_tokens
        self.forward_s += forward_s

    def snapshot(self) -> dict[str, float | int | None]:
        return {
            "texts": self.texts,
            "batches": self.batches,
            "real_tokens": self.real_tokens,
            "computed_tokens": self.computed_tokens,
            "padding_efficiency": self.padding_efficiency,
            "forward_s": self.forward_s,
        }


def pad_group(token_ids: Sequence[Sequence[int]], group: Sequence[int], pad_id: int) -> np.ndarray:
    """``[2, len(group), longest]`` int64: input ids (right-padded with ``pad_id``) and the mask.

    One array for both, so a device copy is one transfer per batch. The rows are filled in one
    masked assignment from their concatenated ids, not row by row: this runs on the model's thread.
    """
    rows = [token_ids[i] for i in group]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    mask = np.arange(int(lengths.max())) < lengths[:, None]
    out = np.empty((2, *mask.shape), dtype=np.int64)
    out[0].fill(pad_id)
    out[0][mask] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    out[1] = mask
    return out
