"""How much a busy Python thread slows the model thread, eager against traced.

``python -m pipelines.bench.lock_contention`` times forward passes of the zero-cost model
(``workers.testing.save_tiny_bert``, 256 texts of 33 tokens, one torch thread) alone, then beside
a thread that runs pure Python, as an actor's consumer and delivery threads do. An eager module
takes Python's interpreter lock back after every operator and waits for it each time; a
TorchScript trace runs its whole graph without it. Figures in docs/data-plane.md.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import torch

from workers.model import BertEncoder
from workers.testing import save_tiny_bert


def passes_per_second(forward, ids: torch.Tensor, mask: torch.Tensor, seconds: float, busy: bool) -> float:
    stop = threading.Event()
    calls = 0

    def model() -> None:
        nonlocal calls
        with torch.inference_mode():
            while not stop.is_set():
                forward(ids, mask)
                calls += 1

    def python() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    threads = [threading.Thread(target=model)] + ([threading.Thread(target=python)] if busy else [])
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return calls / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        encoder = BertEncoder(save_tiny_bert(Path(tmp) / "encoder"), "cls", device="cpu")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (256, 33), generator=generator)
    mask = torch.ones_like(ids)
    mask[::3, 20:] = 0
    print("forward passes/s of 256 texts x 33 tokens, zero-cost model, 1 torch thread")
    print(f"{'module':<8} {'alone':>8} {'beside a Python thread':>24} {'slowdown':>9}")
    for name, forward in (("eager", encoder._pooled), ("traced", encoder.traced)):
        alone = passes_per_second(forward, ids, mask, args.seconds, busy=False)
        beside = passes_per_second(forward, ids, mask, args.seconds, busy=True)
        print(f"{name:<8} {alone:>8.1f} {beside:>24.1f} {alone / beside:>8.1f}x")


if __name__ == "__main__":
    main()
