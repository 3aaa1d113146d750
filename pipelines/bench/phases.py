"""The measurements behind ``clstream bench``, one function per column.

Every phase classifies the same tweets with the same model on the same machine:

- ``measure_bare``: texts already in memory -> ``classifier.classify`` (tokenize, token-budgeted
  length-bucketed passes, pool, head). No Kafka, no Ray: the ceiling for the pipeline.
- ``measure_naive``: what a user writes first: a kafka-python consumer polling 32 records,
  ``json.loads`` each, one forward pass padded to the batch's longest tweet in arrival order,
  one ``send`` per result, flush, commit.
- the pipeline (``pipeline_column``): the real thing, Kafka topic -> Driver + Ray actor(s) ->
  Kafka topic, then at a steady offered rate (``produce_at_rate``); latency per record is the
  output record's timestamp minus the input record's timestamp (both producer CreateTime,
  ``latencies_ms``).

Throughput over Kafka is read from the output records themselves: every record of one batch
carries the same ``classified_at``; the first batch (which pays for the first forward pass and
the group join) is left out, and the clock runs from its ``classified_at`` to the last output
record's timestamp. The same rule is applied to the pipeline and the naive loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psutil
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from schemas.errors import ClstreamError
from schemas.settings import KafkaSettings
from workers.model import BertClassifier

#: The naive loop's poll size: the batch size of most first-attempt consumers.
NAIVE_BATCH = 32

Progress = Callable[[int], None]  # called with the number of tweets done so far


class BenchError(ClstreamError):
    """A benchmark phase did not finish; the message says which and why."""


@dataclass(frozen=True)
class OutputRecord:
    """What the throughput and latency rules need from one output record."""

    partition: int
    offset: int
    timestamp_ms: int
    batch_at: str  # the record's ``classified_at``: equal for all records of one batch
    source_partition: int
    source_offset: int
    id: str


@dataclass(frozen=True)
class Throughput:
    tweets_per_s: float
    tweets: int  # tweets counted (the first batch left out)
    seconds: float


@dataclass(frozen=True)
class ModelWork:
    """What the model did in a phase: tokens of the texts (not padding), and the seconds it was
    busy from token ids to probabilities (``BatchStats.forward_s``)."""

    real_tokens: int
    forward_s: float

    def per_second(self, seconds: float) -> tuple[float, float]:
        """``real_tokens_per_s`` and ``device_busy_fraction`` over ``seconds`` of wall time."""
        return self.real_tokens / seconds, min(1.0, self.forward_s / seconds)


# -- rules --------------------------------------------------------------------------------------


def throughput_from_outputs(records: Sequence[OutputRecord]) -> Throughput:
    """Tweets/s from the end of the first batch to the last output record (see module docstring)."""
    if not records:
        raise BenchError("no output records to measure")
    first_batch = min(records, key=lambda r: _iso_ms(r.batch_at)).batch_at
    start_ms = _iso_ms(first_batch)
    counted = [r for r in records if r.batch_at != first_batch]
    if not counted:
        raise BenchError("every output record came from one batch; use more tweets to measure a rate")
    seconds = max(1e-3, (max(r.timestamp_ms for r in counted) - start_ms) / 1000)
    return Throughput(len(counted) / seconds, len(counted), seconds)


def _iso_ms(text: str) -> float:
    return datetime.fromisoformat(text).timestamp() * 1000


def percentile_ms(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


class CpuMeter:
    """System-wide CPU utilisation (all users, %) between ``start`` and ``stop``; GPU too on CUDA."""

    def __init__(self) -> None:
        self.cpu_percent: float | None = None
        self.gpu_percent: float | None = None
        self._gpu_samples: list[float] = []

    def start(self) -> CpuMeter:
        psutil.cpu_percent(interval=None)
        return self

    def sample_gpu(self) -> None:
        if torch.cuda.is_available():
            try:
                self._gpu_samples.append(float(torch.cuda.utilization()))
            except Exception:  # noqa: BLE001 - needs pynvml; utilisation is a nice-to-have
                return

    def stop(self) -> CpuMeter:
        self.cpu_percent = float(psutil.cpu_percent(interval=None))
        self.sample_gpu()
        self.gpu_percent = float(np.mean(self._gpu_samples)) if self._gpu_samples else None
        return self


# -- (a) bare model loop ------------------------------------------------------------------------


def measure_bare(
    classifier: BertClassifier, texts: Sequence[str], chunk: int, progress: Progress | None = None
) -> tuple[Throughput, float | None, CpuMeter, ModelWork]:
    """Classify ``texts`` from memory in ``chunk``-sized calls; the rate, padding, CPU, model work."""
    classifier.classify(texts[:64])  # first pass allocates; not part of the rate
    before = classifier.stats.snapshot()
    meter = CpuMeter().start()
    started = time.perf_counter()
    for start in range(0, len(texts), chunk):
        classifier.classify(texts[start : start + chunk])
        meter.sample_gpu()
        if progress:
            progress(min(len(texts), start + chunk))
    if classifier.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    meter.stop()
    after = classifier.stats.snapshot()
    computed = int(after["computed_tokens"] or 0) - int(before["computed_tokens"] or 0)
    real = int(after["real_tokens"] or 0) - int(before["real_tokens"] or 0)
    forward_s = float(after["forward_s"] or 0) - float(before["forward_s"] or 0)
    return (
        Throughput(len(texts) / seconds, len(texts), seconds),
        (real / computed if computed else None),
        meter,
        ModelWork(real, forward_s),
    )


# -- (c) naive consumer loop --------------------------------------------------------------------


@torch.inference_mode()
def naive_probabilities(
    classifier: BertClassifier, texts: list[str], work: list[float] | None = None
) -> np.ndarray:
    """The same encoder, pooling and head, but one pass padded to the longest text, in order.

    ``work``, when given, accumulates ``[real tokens, seconds from ids to probabilities]``."""
    encoder = classifier.encoder
    batch = encoder.tokenizer(
        texts, padding=True, truncation=True, max_length=encoder.max_length, return_tensors="pt"
    )
    started = time.perf_counter()
    batch = {name: tensor.to(encoder.device) for name, tensor in batch.items()}
    out = encoder.model(**batch)
    pooled = encoder._pool((out.last_hidden_state,), batch["attention_mask"], None)
    probs = classifier.head(pooled.float()).cpu().numpy()
    if work is not None:
        work[0] += int(batch["attention_mask"].sum())
        work[1] += time.perf_counter() - started
    return probs


def measure_naive(
    kafka: KafkaSettings,
    input_topic: str,
    output_topic: str,
    group_id: str,
    classifier: BertClassifier,
    expected: int,
    timeout_s: float,
    progress: Progress | None = None,
) -> tuple[list[OutputRecord], CpuMeter, ModelWork]:
    """Run the naive loop over ``input_topic`` until ``expected`` records are done."""
    consumer = KafkaConsumer(
        input_topic,
        **kafka.client_config(),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=NAIVE_BATCH,
    )
    producer = KafkaProducer(**kafka.client_config())
    labels = classifier.labels
    meter = CpuMeter().start()
    work = [0.0, 0.0]
    done = 0
    deadline = time.monotonic() + timeout_s
    try:
        while done < expected:
            if time.monotonic() > deadline:
                raise BenchError(f"the naive loop did {done} of {expected} tweets in {timeout_s:.0f}s")
            polled = consumer.poll(timeout_ms=500, max_records=NAIVE_BATCH)
            records = [r for batch in polled.values() for r in batch]
            if not records:
                continue
            tweets = [json.loads(r.value) for r in records]
            probs = naive_probabilities(classifier, [t["text"] for t in tweets], work)
            now = datetime.now(UTC).isoformat()
            for record, tweet, row in zip(records, tweets, probs, strict=True):
                value = {
                    "id": tweet["id"],
                    "label": labels[int(row.argmax())],
                    "scores": dict(zip(labels, row.tolist(), strict=True)),
                    "source_partition": record.partition,
                    "source_offset": record.offset,
                    "classified_at": now,
                }
                producer.send(output_topic, key=record.key, value=json.dumps(value).encode())
            producer.flush()
            consumer.commit()
            done += len(records)
            meter.sample_gpu()
            if progress:
                progress(done)
    finally:
        meter.stop()
        consumer.close(autocommit=False)
        producer.close()
    return read_outputs(kafka, output_topic, expected), meter, ModelWork(int(work[0]), work[1])


# -- reading topics back ------------------------------------------------------------------------


def read_records(kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 60.0) -> list[Any]:
    """Every record of ``topic`` (kafka-python ConsumerRecords), once ``expected`` are there."""
    consumer = KafkaConsumer(**kafka.client_config(), group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200, max_records=5_000).values():
                records.extend(batch)
        if len(records) < expected:
            raise BenchError(f"{topic} has {len(records)} records, expected {expected}")
        return records
    finally:
        consumer.close()


def read_outputs(kafka: KafkaSettings, topic: str, expected: int) -> list[OutputRecord]:
    out = []
    for r in read_records(kafka, topic, expected):
        value = json.loads(r.value)
        out.append(
            OutputRecord(
                partition=r.partition,
                offset=r.offset,
                timestamp_ms=r.timestamp,
                batch_at=value["classified_at"],
                source_partition=value["source_partition"],
                source_offset=value["source_offset"],
                id=value["id"],
            )
        )
    return out


# -- latency at a steady offered load -----------------------------------------------------------


def produce_at_rate(
    kafka: KafkaSettings,
    topic: str,
    values: Sequence[tuple[bytes, bytes]],
    rate_per_s: float,
    seconds: float,
    progress: Progress | None = None,
) -> int:
    """Send ``values`` (cycled) at ``rate_per_s`` for ``seconds``; returns how many were sent.

    Paced in 20 ms ticks: the count sent always tracks ``rate × elapsed``, so a late tick
    catches up instead of lowering the rate.
    """
    producer = KafkaProducer(**kafka.client_config(), linger_ms=0)
    sent = 0
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(rate_per_s * elapsed)
            while sent < due:
                key, value = values[sent % len(values)]
                producer.send(topic, key=key, value=value)
                sent += 1
            if progress:
                progress(sent)
            time.sleep(0.02)  # pacing the offered load, not waiting for a condition
        producer.flush()
    finally:
        producer.close()
    return sent


def latencies_ms(
    inputs: Sequence[Any], outputs: Sequence[OutputRecord], ids_prefix: str, skip_ms: float
) -> list[float]:
    """Output timestamp − input timestamp for outputs whose id starts with ``ids_prefix``.

    Records sent within ``skip_ms`` of the first such input are left out (the rate ramps up).
    """
    sent_at = {(r.partition, r.offset): r.timestamp for r in inputs}
    pairs = [
        (sent_at[(o.source_partition, o.source_offset)], o.timestamp_ms)
        for o in outputs
        if o.id.startswith(ids_prefix) and (o.source_partition, o.source_offset) in sent_at
    ]
    if not pairs:
        return []
    first = min(sent for sent, _ in pairs)
    return [float(done - sent) for sent, done in pairs if sent - first >= skip_ms]


# -- what one forward pass costs ----------------------------------------------------------------

#: (rows, width) shapes timed for the pass-cost fit: from a lone short tweet to full batches.
_PASS_SHAPES = ((1, 8), (1, 32), (4, 16), (8, 8), (8, 32), (16, 16), (2, 64), (32, 32), (64, 16), (16, 64))


@torch.inference_mode()
def measure_pass_cost(classifier: BertClassifier, repeats: int = 5) -> dict[str, float]:
    """Fit ``seconds = a + b × token slots`` to the encoder's forward passes over random ids.

    ``a / b`` is the fixed cost of one pass in token slots: the ``pass_cost`` the batch planner
    uses (``workers.batching.CPU_PASS_COST_TOKENS`` on a CPU). Medians of ``repeats`` per shape.
    """
    encoder = classifier.encoder
    timings: list[tuple[int, float]] = []
    generator = torch.Generator().manual_seed(0)
    for rows, width in _PASS_SHAPES:
        ids = torch.randint(1000, 20000, (rows, width), generator=generator).to(encoder.device)
        mask = torch.ones_like(ids)
        encoder.model(input_ids=ids, attention_mask=mask)  # warm this shape
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            encoder.model(input_ids=ids, attention_mask=mask)
            if encoder.device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        timings.append((rows * width, float(np.median(seconds))))
    slots = np.array([s for s, _ in timings], dtype=np.float64)
    took = np.array([t for _, t in timings], dtype=np.float64)
    per_slot, per_pass = np.polyfit(slots, took, 1)
    return {
        "pass_overhead_ms": per_pass * 1000,
        "per_token_slot_ms": per_slot * 1000,
        "pass_cost_tokens": per_pass / per_slot if per_slot > 0 else float("nan"),
    }
