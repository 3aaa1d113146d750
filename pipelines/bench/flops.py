"""FLOP/s arithmetic shared by ``clstream bench`` and the GPU script: the measured bf16 matmul rate
(the denominator of model FLOP utilisation) and a BERT encoder's forward FLOPs per token.
Imports torch only, so ``pipelines/bench/gpu_model_only.py`` can use it on a bare GPU machine."""

from __future__ import annotations

import time

import torch


def matmul_flops_per_s(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    """Measured bf16 dense matmul rate of ``device`` (FLOP/s): the denominator of MFU."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * iters / (time.perf_counter() - started)


def bert_flops_per_token(
    layers: int, hidden: int, intermediate: int, seq_len: float, cls_only: bool = False
) -> float:
    """Forward FLOPs per real token of a BERT encoder: the dense layers (QKV, output, FFN) plus
    attention scores and weighted sums over ``seq_len`` real tokens; embeddings and norms left out.

    ``cls_only``: the last layer computes [CLS] alone (``workers.cls_only``), so it costs every
    token its key and value projections, and each text one query, attention output and FFN."""
    dense = 2 * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = 2 * 2 * seq_len * hidden
    if not cls_only:
        return layers * (dense + attention)
    cls_row = 2 * (2 * hidden * hidden + 2 * hidden * intermediate) + attention
    return (layers - 1) * (dense + attention) + 2 * 2 * hidden * hidden + cls_row / max(seq_len, 1.0)
