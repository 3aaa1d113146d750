"""``clstream finetune``, start to end: data -> model -> training loop -> test score -> metadata.

Two strategies share everything but the model and what is written: ``full_finetune.FullRun``
(the whole encoder, a sequence-classification checkpoint) and ``lora_run.LoraRun`` (LoRA adapters
and a head, a head directory). ``out/checkpoint/`` holds the latest state for ``resume``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pipelines.offline.finetune import finetune
from pipelines.offline.finetune_data import FinetuneOptions, prepare_finetune_data
from pipelines.offline.full_finetune import FullRun
from pipelines.offline.lora_run import LoraRun
from pipelines.offline.metrics import classification_metrics, label_indices
from pipelines.offline.resume import TrainerState, refuse_to_overwrite
from workers.model import resolve_device


class FinetuneStrategy(Protocol):
    """What differs between a full and a LoRA fine-tune."""

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        """The model the loop trains (fresh, or from ``out/checkpoint/`` when resuming), on the CPU."""
        ...

    def test_predictions(self, texts: list[str]) -> np.ndarray:
        """Label indices for ``texts`` from the best epoch's model, as saved in ``out``."""
        ...

    def write_metadata(self, state: TrainerState, test: dict[str, Any], device: torch.device) -> None:
        """Record in ``out`` how the model was trained and what it scored."""
        ...

    def saved(self) -> str:
        """One line for the user: what is in ``out`` and how to load it."""
        ...


@dataclass(frozen=True)
class FinetuneOutcome:
    state: TrainerState
    #: Test-split metrics; None when the run stopped early (``max_steps``) and can be resumed.
    test: dict[str, Any] | None
    saved: str | None


def run_finetune(options: FinetuneOptions) -> FinetuneOutcome:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar (ours) per run, not one per save
    if options.threads:
        torch.set_num_threads(options.threads)
    data = prepare_finetune_data(options)
    strategy: FinetuneStrategy = (
        LoraRun(options, data, options.lora) if options.lora is not None else FullRun(options, data)
    )
    if not options.resume:
        refuse_to_overwrite(options.out)
    device = resolve_device(options.device)
    model, tokenizer = strategy.model_and_tokenizer()
    options.out.mkdir(parents=True, exist_ok=True)
    state = finetune(
        model.to(device),
        tokenizer,
        data.train,
        data.validation,
        options.out,
        options.config,
        run_info=data.run_info,
        resume=options.resume,
        max_steps=options.max_steps,
        progress=options.progress,
    )
    if state.epoch < options.config.epochs:
        return FinetuneOutcome(state, None, None)
    predicted = strategy.test_predictions([item.text for item in data.test])
    test = classification_metrics(label_indices(data.test), predicted)
    strategy.write_metadata(state, test, device)
    return FinetuneOutcome(state, test, strategy.saved())
