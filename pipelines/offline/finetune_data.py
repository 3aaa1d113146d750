"""What one ``finetune`` run trains on, and what must match for ``--resume`` to continue it.

The data goes through the same load -> deduplicate -> split_stratified(seed) as ``train-head`` and
``eval``, so the test split is the one they score on (``limit`` samples the train split only).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipelines.offline import datasets, sources
from pipelines.offline.finetune import FinetuneConfig
from pipelines.offline.lora import LoraSpec
from workers.model import weights_sha256


@dataclass(frozen=True)
class FinetuneOptions:
    """One ``clstream finetune`` run; the command's flags, typed."""

    out: Path
    encoder_dir: Path
    config: FinetuneConfig = FinetuneConfig()
    #: None: the whole encoder trains (``full_finetune``); else LoRA adapters and a head (``lora_run``).
    lora: LoraSpec | None = None
    source: datasets.DataSource = field(default_factory=datasets.DataSource)
    #: Seeded samples of the train and validation splits (CPU runs).
    limit: int | None = None
    val_limit: int | None = None
    #: Left out of training; the "test" split is then every tweet of these topics.
    unseen_topics: tuple[str, ...] | None = None
    #: ``pipelines.offline.sources`` names added to training only (90/10 train/validation, each
    #: text's topic the source's name, so ``--balance topic`` weighs each source like a topic);
    #: the test split stays the data source's own.
    extra_sources: tuple[str, ...] = ()
    max_steps: int | None = None
    resume: bool = False
    device: str = "auto"
    threads: int | None = None
    progress: bool = True


@dataclass(frozen=True)
class FinetuneData:
    train: list[datasets.LabeledText]
    validation: list[datasets.LabeledText]
    test: tuple[datasets.LabeledText, ...]
    #: What a resumed run must share with the run that wrote the checkpoint.
    run_info: dict[str, Any]
    #: The data's description for the output's metadata.
    trained_on: dict[str, Any]


def prepare_finetune_data(options: FinetuneOptions) -> FinetuneData:
    config, seed = options.config, options.config.seed
    items, source = options.source.load()
    deduplicated = datasets.deduplicate(items)
    if options.unseen_topics:
        # Train on the other topics only; "test" is then every tweet of the held-out topics.
        splits = datasets.unseen_topic_split(deduplicated.items, options.unseen_topics, seed=seed)
    else:
        splits = datasets.split_stratified(deduplicated.items, seed=seed)
    extra = _extra_sources(options.extra_sources, options.source.repair, seed)
    train = _sample(list(splits.train) + extra.train, options.limit, seed)
    validation = _sample(list(splits.validation) + extra.validation, options.val_limit, seed)
    run_info: dict[str, Any] = {
        "encoder_sha256": weights_sha256(options.encoder_dir),
        "data_fingerprint": datasets.fingerprint(deduplicated.items),
        "train_fingerprint": datasets.fingerprint(train),
        "validation_fingerprint": datasets.fingerprint(validation),
        # The fingerprints key on the text as read, so they do not tell repaired text from raw.
        "text_repair": options.source.text_repair,
        # save_every only changes how often state is written, so a resume may change it; the
        # default balance is left out so that checkpoints from before --balance still resume.
        "config": {
            k: v for k, v in asdict(config).items() if k != "save_every" and (k, v) != ("balance", "label")
        },
    }
    trained_on = {
        "source": source,
        "fingerprint": run_info["data_fingerprint"],
        "train_fingerprint": run_info["train_fingerprint"],
        "text_repair": run_info["text_repair"],
        "sizes": {**splits.sizes(), "train_used": len(train), "validation_used": len(validation)},
        "dropped": {
            "duplicates": deduplicated.duplicates_dropped,
            "conflicting_labels": deduplicated.conflicts_dropped,
        },
        "seed": seed,
        "limit": options.limit,
    }
    if options.unseen_topics:
        trained_on["unseen_topics"] = list(options.unseen_topics)
        run_info["unseen_topics"] = list(options.unseen_topics)
    if options.extra_sources:
        trained_on["extra_sources"] = run_info["extra_sources"] = extra.described
    if options.lora is not None:
        run_info["lora"] = asdict(options.lora)
    return FinetuneData(train, validation, splits.test, run_info, trained_on)


def _sample(part: list[datasets.LabeledText], limit: int | None, seed: int) -> list[datasets.LabeledText]:
    if limit is not None and limit < len(part):
        return random.Random(seed).sample(part, limit)
    return part


@dataclass(frozen=True)
class _Extra:
    train: list[datasets.LabeledText]
    validation: list[datasets.LabeledText]
    described: list[dict[str, Any]]


def _extra_sources(names: tuple[str, ...], repair: bool, seed: int) -> _Extra:
    """Each named source, fetched, de-duplicated and split 90/10 (stratified, ``seed``)."""
    train: list[datasets.LabeledText] = []
    validation: list[datasets.LabeledText] = []
    described: list[dict[str, Any]] = []
    for name in names:
        loaded = datasets.load_labeled_file(sources.fetch(name), id_column="id", repair=repair)
        unique = datasets.deduplicate([replace(item, topic=name) for item in loaded])
        split = datasets.split_stratified(unique.items, fractions=(0.9, 0.1, 0.0), seed=seed)
        train += split.train
        validation += split.validation
        described.append(
            {
                "name": name,
                "sha256": sources.source(name).sha256,
                "fingerprint": datasets.fingerprint(unique.items),
                "train": len(split.train),
                "validation": len(split.validation),
            }
        )
    return _Extra(train, validation, described)
