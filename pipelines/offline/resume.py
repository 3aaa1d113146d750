"""The resume checkpoint of a ``finetune`` run: where training stands and how to continue it.

``out/checkpoint/`` holds the model (safetensors), ``optimizer.safetensors`` (AdamW moments as
tensors, its hyper-parameters in the file's metadata) and ``trainer_state.json`` (step,
scheduler, best so far, history). Nothing is pickled; nothing is read with ``torch.load``.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from schemas.errors import ClstreamError

CHECKPOINT_DIR = "checkpoint"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where training stands; saved as JSON next to the resume checkpoint."""

    global_step: int = 0
    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # batches of the current epoch already trained on
    epoch_loss_sum: float = 0.0
    epoch_examples: int = 0
    best_val_macro_f1: float = -1.0
    best_epoch: int = 0
    history: dict[str, list[Any]] = field(default_factory=lambda: {"step_loss": [], "epochs": []})
    scheduler: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)  # what must match for --resume to continue


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """AdamW's per-parameter tensors as safetensors (``<param index>.<name>``), its groups as JSON metadata."""
    state = optimizer.state_dict()
    tensors = {
        f"{index}.{name}": value.detach().cpu().contiguous()
        for index, values in state["state"].items()
        for name, value in values.items()
    }
    save_file(tensors, str(path), metadata={"param_groups": json.dumps(state["param_groups"])})


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    with safe_open(str(path), framework="pt") as handle:
        groups = json.loads(handle.metadata()["param_groups"])
    state: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, tensor in load_file(str(path)).items():
        index, name = key.split(".", 1)
        state[int(index)][name] = tensor
    optimizer.load_state_dict({"state": dict(state), "param_groups": groups})


def save_model(model: Any, tokenizer: Any, directory: Path) -> None:
    """The model as safetensors, with the tokenizer unless the model says it reuses its base's."""
    model.save_pretrained(directory, safe_serialization=True)
    if getattr(model, "saves_tokenizer", True):
        tokenizer.save_pretrained(directory)


def save_checkpoint(
    out: Path, model: Any, tokenizer: Any, optimizer: torch.optim.Optimizer, state: TrainerState
) -> None:
    """Write ``out/checkpoint/`` whole or not at all: a run killed mid-save leaves the previous one."""
    final, partial, previous = (
        out / CHECKPOINT_DIR,
        out / f"{CHECKPOINT_DIR}.partial",
        out / f"{CHECKPOINT_DIR}.previous",
    )
    shutil.rmtree(partial, ignore_errors=True)
    save_model(model, tokenizer, partial)
    save_optimizer(optimizer, partial / OPTIMIZER_FILE)
    (partial / STATE_FILE).write_text(json.dumps(asdict(state), indent=1) + "\n")
    shutil.rmtree(previous, ignore_errors=True)
    if final.exists():
        final.rename(previous)
    partial.rename(final)
    shutil.rmtree(previous, ignore_errors=True)


def resume_directory(out: Path) -> Path:
    """The checkpoint to resume from; ``checkpoint.previous`` if a save was cut off between renames."""
    for candidate in (out / CHECKPOINT_DIR, out / f"{CHECKPOINT_DIR}.previous"):
        if (candidate / STATE_FILE).is_file():
            return candidate
    raise ClstreamError(
        f"nothing to resume: {out / CHECKPOINT_DIR} has no {STATE_FILE}; run without --resume"
    )


def resumed_state(out: Path, run_info: dict[str, Any]) -> tuple[Path, TrainerState]:
    """The checkpoint directory and its state; refused unless it was written with ``run_info``."""
    checkpoint = resume_directory(out)
    state = TrainerState(**json.loads((checkpoint / STATE_FILE).read_text()))
    if state.run != run_info:
        raise ClstreamError(
            f"{checkpoint} was written by a run with other data or settings ({state.run}); "
            f"this run has {run_info}: resume with the same flags, or use a new --out"
        )
    return checkpoint, state


def refuse_to_overwrite(out: Path) -> None:
    """A new run must not mix its checkpoints with an earlier run's in the same ``out``."""
    if (out / CHECKPOINT_DIR).exists():
        raise ClstreamError(f"{out} already holds a fine-tuning run: pass --resume, or choose a new --out")
