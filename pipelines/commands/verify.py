"""``clstream verify``: every input record in the output or the DLQ, counted by a read_committed reader."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.commands.flags import settings_from_args
from pipelines.kafka_tools import verify as accounting


def cmd_verify(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    topics = settings.topics
    report = accounting.verify_topics(
        settings.kafka, topics.input, topics.output, topics.dlq, args.delivery, timeout_s=args.timeout
    )
    print(report.table())
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0 if report.ok else 1


def register(sub: Any) -> None:
    verify = sub.add_parser(
        "verify",
        help="check (read_committed) that every input record is in the output or the DLQ, once",
        description=accounting.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("--config", type=Path, help="TOML settings file (flags > CLSTREAM_* env > file)")
    verify.add_argument("--bootstrap-servers", help="comma-separated host:port list")
    verify.add_argument("--input-topic")
    verify.add_argument("--output-topic")
    verify.add_argument("--dlq-topic")
    verify.add_argument(
        "--delivery",
        choices=["at-least-once", "exactly-once"],
        default="at-least-once",
        help="exactly-once also fails on duplicates, records in both output and DLQ, and reordering",
    )
    verify.add_argument("--json", type=Path, help="also write the report to this JSON file")
    verify.add_argument("--timeout", type=float, default=120.0, help="seconds allowed to read each topic")
    verify.set_defaults(func=cmd_verify)
