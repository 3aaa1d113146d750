"""``clstream bench``: throughput and latency of the bare model, the pipeline and a naive loop."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from pipelines.commands.flags import add_settings_flags, settings_from_args


def cmd_bench(args: argparse.Namespace) -> int:
    from pipelines.bench.benchmark import run_bench

    return run_bench(args, functools.partial(settings_from_args, args))


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="throughput and latency: bare model vs clstream pipeline vs a naive consumer loop"
    )
    add_settings_flags(parser, runs_own=True)
    parser.add_argument("--quick", action="store_true", help="a smaller run (under 3 minutes on 2 CPU cores)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--plot", type=Path, help="write throughput, latency and token-budget charts (PNG) here"
    )
    parser.add_argument("--tweets", type=int, help="tweets per column (default: 1000 quick, 6000 full)")
    parser.add_argument("--latency-seconds", type=float, help="how long to offer the steady load")
    parser.add_argument(
        "--ceiling-tweets",
        type=int,
        help="tweets for the zero-cost-model (data plane ceiling) columns; 0 skips them "
        "(default: 10000 quick, 40000 full)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads for every column (default: half the cores)"
    )
    parser.add_argument(
        "--port", type=int, default=9092, help="local broker port (when no --bootstrap-servers)"
    )
    parser.add_argument(
        "--keep-topics",
        action="store_true",
        help="keep the run's topics and consumer groups (bench-<run>*); by default they are deleted at the end",
    )
    parser.set_defaults(func=cmd_bench)
    return parser
