"""``clstream dlq list`` and ``clstream dlq replay``: the way back from the dead-letter topic.

The reading, choosing and re-sending live in ``pipelines/kafka_tools/dlq_replay.py``.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from pipelines.commands.flags import add_settings_flags, settings_from_args
from pipelines.kafka_tools import dlq_replay
from pipelines.kafka_tools.dlq_replay import (
    DEFAULT_MAX_REPLAYS,
    OffsetRange,
    Selection,
    read_dead_letters,
    replay,
    summarize,
    summary_table,
)
from workers.logs import configure_logging


def _selection(args: argparse.Namespace) -> Selection:
    after: dict[int, int] = {}
    for text in args.after or []:
        match = re.fullmatch(r"(\d+):(\d+)", text.strip())
        if match is None:
            raise ValueError(f"--after {text!r}: expected PARTITION:OFFSET")
        after[int(match[1])] = int(match[2])
    return Selection(
        error_classes=frozenset(args.error_class or ()),
        offsets=tuple(OffsetRange.parse(t) for t in args.offsets or ()),
        source_partitions=frozenset(args.source_partition or ()),
        after=after,
        max_replays=getattr(args, "max_replays", DEFAULT_MAX_REPLAYS),
    )


def cmd_list(args: argparse.Namespace) -> int:

    settings = settings_from_args(args)
    configure_logging(settings.log.level, settings.log.format)
    selection = _selection(args)
    letters = read_dead_letters(settings.kafka, settings.topics.dlq, args.timeout)
    print(summary_table(summarize(letter for letter in letters if selection.matches(letter))))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:

    settings = settings_from_args(args)
    configure_logging(settings.log.level, settings.log.format)
    selection = _selection(args)
    if not (selection.chooses or args.all):
        raise ValueError("say what to replay: --error-class, --offsets or --source-partition (or --all)")
    report = replay(
        settings.kafka,
        settings.topics.dlq,
        selection,
        args.to_topic,
        dry_run=args.dry_run,
        timeout_s=args.timeout,
    )
    print("\n".join(report.lines()))
    return 0


def register(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="list dead letters, or re-send chosen ones to the input topic")
    actions = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = actions.add_parser("list", help="dead letters by error class: counts and DLQ offsets")
    again = actions.add_parser(
        "replay",
        help="re-send chosen dead letters, as the original records, to their source topic",
        description=dlq_replay.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for parser in (listing, again):
        add_settings_flags(parser, pipeline=False)
        parser.add_argument("--dlq-topic", help="default: the configured DLQ topic")
        parser.add_argument("--error-class", action="append", help="e.g. ClassificationFailed (repeatable)")
        parser.add_argument(
            "--offsets", action="append", metavar="P:FROM-TO", help="DLQ offsets, both included (repeatable)"
        )
        parser.add_argument(
            "--source-partition", action="append", type=int, help="input partition (repeatable)"
        )
        parser.add_argument(
            "--after",
            action="append",
            metavar="P:OFFSET",
            help="only DLQ offsets after this one (repeatable)",
        )
        parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed to read the DLQ")
    listing.set_defaults(func=cmd_list)
    again.add_argument("--all", action="store_true", help="every dead letter (when no other choice is given)")
    again.add_argument("--to-topic", help="default: each record's source topic and partition")
    again.add_argument("--dry-run", action="store_true", help="print what would be re-sent; send nothing")
    again.add_argument(
        "--max-replays",
        type=int,
        default=DEFAULT_MAX_REPLAYS,
        help="skip dead letters already replayed this many times (default %(default)s)",
    )
    again.set_defaults(func=cmd_replay)
