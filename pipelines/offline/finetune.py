"""The ``finetune`` training loop: encoder and head trained together, BERT's recipe for sequence
classification.

AdamW (no decay on biases and LayerNorm), linear warm-up then linear decay, class-weighted
cross-entropy and gradient clipping; bf16 autocast on a CUDA GPU. Every epoch ends with a pass
over the validation split; ``out`` always holds the epoch with the best validation macro-F1, and
``out/checkpoint/`` the latest state (``resume``). The loop does not care which model it trains:
a ``*ForSequenceClassification`` model (``full_finetune``) or BERT with LoRA adapters and a
softmax head (``lora``); ``finetune_run`` prepares either and runs the command.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipelines.offline import datasets
from pipelines.offline.metrics import classification_metrics, label_indices
from pipelines.offline.resume import (
    OPTIMIZER_FILE,
    TrainerState,
    load_optimizer,
    resumed_state,
    save_checkpoint,
    save_model,
)
from pipelines.offline.train_head import example_weights
from schemas.records import LABELS


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 2
    lr: float = 2e-5
    batch_size: int = 32
    max_length: int = 64
    seed: int = 0
    #: Devlin et al. warm up over the first 10% of steps; fewer makes early steps wreck the encoder.
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    #: Optimizer steps between resume checkpoints (besides one at every epoch's end); 0: epochs only.
    save_every: int = 200
    #: >0: batches are cut from runs of this many batches' worth of shuffled texts sorted by length
    #: (then shuffled), so a batch pads to similar lengths: ~40% fewer tokens on tweets. 0: plain.
    bucket_batches: int = 0
    #: ``train_head.BALANCES``: what the weighted cross-entropy makes equal (``example_weights``).
    balance: str = "label"


def finetune(
    model: Any,
    tokenizer: Any,
    train: Sequence[datasets.LabeledText],
    validation: Sequence[datasets.LabeledText],
    out: Path,
    config: FinetuneConfig,
    *,
    run_info: dict[str, Any],
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
) -> TrainerState:
    """Train ``model`` (already on its device) on ``train``; keep the best epoch in ``out``.

    With ``resume`` the model, optimizer, schedule and position come from ``out/checkpoint/``
    (whose ``run`` must equal ``run_info``); the resumed run sees the same batches in the same
    order as an uninterrupted one (dropout masks differ). ``max_steps`` stops after that many
    optimizer steps in all, saving a checkpoint first. Returns the final state.
    """
    from transformers import get_linear_schedule_with_warmup

    device = next(model.parameters()).device
    texts = [item.text for item in train]
    targets = torch.from_numpy(label_indices(train))
    groups = [item.topic for item in train] if config.balance == "topic" else None
    weights = example_weights(targets, len(LABELS), groups).to(device)
    total_steps = math.ceil(len(train) / config.batch_size) * config.epochs
    optimizer = _optimizer(model, config)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total_steps), total_steps
    )
    state = TrainerState(run=run_info)
    if resume:
        checkpoint, state = resumed_state(out, run_info)
        load_optimizer(optimizer, checkpoint / OPTIMIZER_FILE)
        scheduler.load_state_dict(state.scheduler)
    torch.manual_seed(config.seed + state.global_step)

    def save() -> None:
        state.scheduler = scheduler.state_dict()
        save_checkpoint(out, model, tokenizer, optimizer, state)

    with tqdm(
        total=total_steps,
        initial=state.global_step,
        desc="fine-tuning",
        unit="step",
        disable=not progress,
        file=sys.stderr,
    ) as bar:
        while state.epoch < config.epochs:
            # Seeded by epoch alone, so a resumed epoch replays the same batches and skips those done.
            batches = epoch_batches(texts, config, state.epoch)
            model.train()
            for batch in batches[state.step_in_epoch :]:
                if max_steps is not None and state.global_step >= max_steps:
                    save()
                    return state
                loss = _train_step(
                    model, tokenizer, [texts[i] for i in batch], targets[batch], weights[batch], config
                )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                _count_step(state, loss, len(batch))
                bar.update(1)
                bar.set_postfix(
                    epoch=state.epoch + 1, loss=f"{loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}"
                )
                if config.save_every and state.global_step % config.save_every == 0:
                    save()
            _end_epoch(model, tokenizer, validation, out, config, state)
            save()
    return state


def epoch_batches(texts: Sequence[str], config: FinetuneConfig, epoch: int) -> list[torch.Tensor]:
    """The epoch's batches of indices into ``texts``: a pure function of the texts, config and epoch."""
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    order = torch.randperm(len(texts), generator=generator)
    if config.bucket_batches <= 0:
        return list(order.split(config.batch_size))
    batches: list[torch.Tensor] = []
    for run in order.split(config.batch_size * config.bucket_batches):
        # Characters stand in for tokens: free to compute, and close enough to group similar lengths.
        by_length = sorted(run.tolist(), key=lambda i: len(texts[i]))
        batches.extend(torch.tensor(by_length).split(config.batch_size))
    shuffled = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in shuffled.tolist()]


@torch.inference_mode()
def predict(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int) -> np.ndarray:
    """Argmax label indices (into ``LABELS``) for ``texts``; leaves the model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    predicted = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in chunk],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        with _autocast(device):
            predicted[chunk] = model(**batch).logits.argmax(dim=-1).cpu().numpy()
    return predicted


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    # bf16 keeps fp32's range, so no loss scaling; CPUs gain little from it and some lack it.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _optimizer(model: torch.nn.Module, config: FinetuneConfig) -> torch.optim.AdamW:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:  # a frozen encoder under LoRA
            continue
        # Decaying biases and LayerNorm gains only pulls them toward 0, which no one wants.
        (no_decay if parameter.ndim < 2 or "LayerNorm" in name else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def _train_step(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    targets: torch.Tensor,
    weights: torch.Tensor,
    config: FinetuneConfig,
) -> float:
    device = next(model.parameters()).device
    batch = tokenizer(
        texts, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt"
    ).to(device)
    with _autocast(device):
        logits = model(**batch).logits
    # Weighted mean over the batch: with label balancing, cross-entropy with class weights exactly.
    losses = F.cross_entropy(logits.float(), targets.to(device), reduction="none")
    loss = (losses * weights).sum() / weights.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    return float(loss.detach())


def _count_step(state: TrainerState, loss: float, examples: int) -> None:
    state.global_step += 1
    state.step_in_epoch += 1
    state.epoch_loss_sum += loss * examples
    state.epoch_examples += examples
    state.history["step_loss"].append([state.global_step, round(loss, 5)])


def _end_epoch(
    model: Any,
    tokenizer: Any,
    validation: Sequence[datasets.LabeledText],
    out: Path,
    config: FinetuneConfig,
    state: TrainerState,
) -> None:
    """Score validation, keep the model in ``out`` if it is the best yet, start the next epoch."""
    predicted = predict(
        model, tokenizer, [item.text for item in validation], config.max_length, config.batch_size * 2
    )
    metrics = classification_metrics(label_indices(validation), predicted)
    state.epoch += 1
    state.history["epochs"].append(
        {
            "epoch": state.epoch,
            "train_loss": round(state.epoch_loss_sum / max(state.epoch_examples, 1), 5),
            "val_accuracy": metrics["accuracy"],
            "val_macro_f1": metrics["macro_f1"],
        }
    )
    print(
        f"epoch {state.epoch}: train loss {state.history['epochs'][-1]['train_loss']:.4f}, "
        f"validation accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}",
        file=sys.stderr,
    )
    if metrics["macro_f1"] > state.best_val_macro_f1:
        state.best_val_macro_f1, state.best_epoch = metrics["macro_f1"], state.epoch
        save_model(model, tokenizer, out)
    state.step_in_epoch, state.epoch_loss_sum, state.epoch_examples = 0, 0.0, 0
    model.train()
