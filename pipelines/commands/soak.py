"""``clstream soak``: the long runs of ``make soak`` (``pipelines/soak/``)."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from pipelines.commands.flags import add_settings_flags, settings_from_args
from pipelines.soak import runner
from pipelines.soak.runner import SOAK_BROKER_PORT


def cmd_soak(args: argparse.Namespace) -> int:
    return runner.run_soak(args, functools.partial(settings_from_args, args))


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "soak",
        help="long run under load with actors SIGKILLed (or --outage-sweep: broker pauses); not in CI",
        description=runner.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_flags(parser, pipeline=False)
    parser.add_argument("--minutes", type=float, default=30.0, help="steady load per mode (default 30)")
    parser.add_argument(
        "--delivery",
        dest="soak_delivery",
        choices=["at-least-once", "exactly-once", "both"],
        default="exactly-once",
        help="delivery mode(s) to run, one after the other (default exactly-once)",
    )
    parser.add_argument("--kill-every-s", type=float, default=120.0, help="SIGKILL an actor this often")
    parser.add_argument(
        "--rate", type=float, help="records/s offered (default: half of the capacity measured first)"
    )
    parser.add_argument(
        "--capacity-s", type=float, default=60.0, help="how long to saturate the pipeline to measure capacity"
    )
    parser.add_argument(
        "--model",
        choices=["tiny", "default"],
        default="default",
        help="tiny: a random 2-layer BERT (the data plane alone); default: the shipped model",
    )
    parser.add_argument("--out", type=Path, default=Path("out/soak"), help="results directory")
    parser.add_argument("--sample-every-s", type=float, default=10.0, help="RSS sampling period")
    parser.add_argument("--workers", type=int, help="classifier actors (default: workers.count)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the input and output topics")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--port", type=int, default=SOAK_BROKER_PORT, help="local broker port (when no --bootstrap-servers)"
    )
    parser.add_argument(
        "--keep-topics",
        action="store_true",
        help="keep the run's topics and consumer groups (default: deleted)",
    )
    sweep = parser.add_argument_group("outage sweep (pipelines/soak/outage_sweep.py)")
    sweep.add_argument(
        "--outage-sweep",
        action="store_true",
        help="instead of the soak: pause the broker for lengths straddling each timeout",
    )
    sweep.add_argument(
        "--outage-factors",
        type=lambda text: tuple(float(f) for f in text.split(",")),
        default=(0.5, 1.5),
        help="outage lengths as multiples of each timeout (default 0.5,1.5)",
    )
    sweep.add_argument("--max-outage-s", type=float, default=120.0, help="cap on one outage (default 120)")
    sweep.add_argument(
        "--recovery-timeout-s", type=float, default=300.0, help="how long to wait for commits after an outage"
    )
    parser.set_defaults(func=cmd_soak)
    return parser
