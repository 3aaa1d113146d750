"""The per-actor loop: poll -> decode -> classify -> deliver -> commit.

Offsets are committed in exactly one place, ``ClassifierLoop.step``, and only after every output
and dead-letter record of the batch has been acknowledged (at-least-once). If delivery fails the
batch is not committed: the loop seeks back and processes it again after a backoff, so a record
is never skipped, even when the DLQ itself cannot be written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import orjson
import structlog

from schemas.dlq import DlqHeader
from schemas.errors import CommitError, DeliveryError
from schemas.records import SCHEMA_VERSION, Tweet
from schemas.settings import Settings
from workers.decode import Rejection, decode_tweet
from workers.kafka_io import Partition, Sink, Source
from workers.model import Classifier
from workers.records import OutboundRecord, RawRecord

log = structlog.get_logger("clstream.loop")

#: Longest wait between retries of an undelivered batch; keeps recovery quick once the broker is back.
_MAX_BACKOFF_S = 5.0


@dataclass
class LoopStats:
    """Counters since the loop started. Written by the loop thread only; read by anyone."""

    consumed: int = 0
    classified: int = 0
    dead_lettered: int = 0
    batches: int = 0
    commits: int = 0
    delivery_failures: int = 0
    commit_failures: int = 0
    busy_s: float = 0.0
    last_batch_at: float | None = None
    last_error: str | None = None
    committed: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict:
        return asdict(self) | {"committed": dict(self.committed)}


class ClassifierLoop:
    """One consumer-group member's whole data path. Not thread-safe: one thread calls ``step``."""

    def __init__(self, source: Source, sink: Sink, classifier: Classifier, settings: Settings) -> None:
        self.source = source
        self.sink = sink
        self.classifier = classifier
        self.settings = settings
        self.stats = LoopStats()
        self._backoff_s = 0.0
        # Delivered but not yet committed because the group was rebalancing: committed with the next batch.
        self._uncommitted: dict[Partition, int] = {}

    def run(self, stop: threading.Event) -> None:
        """Process batches until ``stop`` is set; the batch in hand is finished and committed first."""
        while not stop.is_set():
            self.step(stop)

    def step(self, stop: threading.Event | None = None) -> int:
        """Poll one batch and see it through to a commit. Returns the number of records committed."""
        workers = self.settings.workers
        records = self.source.poll(timeout_ms=workers.poll_timeout_ms, max_records=workers.max_batch_records)
        if not records:
            if self._uncommitted:
                self._commit({})
            return 0
        started = time.perf_counter()
        outbound, classified, rejected = self._process(records)
        try:
            self.sink.deliver(outbound, timeout_s=workers.produce_timeout_s)
        except DeliveryError as exc:
            self._retry_later(records, exc, stop)
            return 0
        next_offsets = _next_offsets(records)
        self._commit(next_offsets)
        self._backoff_s = 0.0
        stats = self.stats
        stats.consumed += len(records)
        stats.classified += classified
        stats.dead_lettered += rejected
        stats.batches += 1
        stats.busy_s += time.perf_counter() - started
        stats.last_batch_at = time.time()
        return len(records)

    def _commit(self, next_offsets: dict[Partition, int]) -> None:
        """The only commit: offsets of delivered records (plus any left over from a rebalance)."""
        offsets = {**self._uncommitted, **next_offsets}
        try:
            self.source.commit(offsets)
        except CommitError as exc:
            self.stats.commit_failures += 1
            if exc.retriable:  # the rebalance completes in the next poll; commit then
                self._uncommitted = offsets
            else:  # another member owns them now and re-reads from the last commit: duplicates, never loss
                self._uncommitted = {}
                log.warning("delivered records not committed", partitions=len(offsets), error=str(exc))
            return
        self._uncommitted = {}
        self.stats.commits += 1
        self.stats.committed.update({f"{t}/{p}": off for (t, p), off in offsets.items()})

    def _process(self, records: Sequence[RawRecord]) -> tuple[list[OutboundRecord], int, int]:
        decoded = [decode_tweet(record) for record in records]
        valid = [i for i, d in enumerate(decoded) if isinstance(d, Tweet)]
        texts = [decoded[i].text for i in valid]  # type: ignore[union-attr]
        outcomes: list[np.ndarray | Rejection | Tweet] = list(decoded)
        for i, outcome in zip(valid, self._classify_isolating(texts), strict=True):
            outcomes[i] = outcome

        topics = self.settings.topics
        labels = self.classifier.labels
        now = datetime.now(timezone.utc).isoformat()
        out: list[OutboundRecord] = []
        classified = 0
        for record, tweet, outcome in zip(records, decoded, outcomes, strict=True):
            if isinstance(outcome, Rejection):
                out.append(_dead_letter(record, outcome, topics.dlq, now))
                continue
            assert isinstance(tweet, Tweet)
            probs = outcome.tolist()  # type: ignore[union-attr]
            best = max(range(len(labels)), key=probs.__getitem__)
            value = orjson.dumps(
                {
                    "schema_version": SCHEMA_VERSION,
                    "id": tweet.id,
                    "label": labels[best],
                    "scores": dict(zip(labels, probs, strict=True)),
                    "model_id": self.classifier.model_id,
                    "pooling": self.classifier.pooling,
                    "source_topic": record.topic,
                    "source_partition": record.partition,
                    "source_offset": record.offset,
                    "classified_at": now,
                }
            )
            out.append(OutboundRecord(topics.output, record.key or tweet.id.encode(), value))
            classified += 1
        return out, classified, len(records) - classified

    def _classify_isolating(self, texts: list[str]) -> list[np.ndarray | Rejection | Tweet]:
        """Classify ``texts``; if the model fails on a batch, split it until the bad record is alone."""
        if not texts:
            return []
        try:
            return list(self.classifier.classify(texts))
        except Exception as exc:  # noqa: BLE001 - any model failure is isolated, never fatal
            if len(texts) == 1:
                reason = f"the model failed on this record: {type(exc).__name__}: {str(exc)[:200]}"
                return [Rejection("ClassificationFailed", reason, stage="classify")]
            half = len(texts) // 2
            return self._classify_isolating(texts[:half]) + self._classify_isolating(texts[half:])

    def _retry_later(
        self, records: Sequence[RawRecord], exc: DeliveryError, stop: threading.Event | None
    ) -> None:
        self.stats.delivery_failures += 1
        self.stats.last_error = str(exc)
        self.source.seek(_first_offsets(records))
        self._backoff_s = min(_MAX_BACKOFF_S, max(0.1, self._backoff_s * 2))
        log.warning(
            "batch not delivered; will retry it",
            records=len(records),
            backoff_s=self._backoff_s,
            error=str(exc),
        )
        if stop is not None:
            stop.wait(self._backoff_s)
        else:
            time.sleep(self._backoff_s)


def _dead_letter(record: RawRecord, rejection: Rejection, topic: str, now: str) -> OutboundRecord:
    error_headers = [
        (DlqHeader.SOURCE_TOPIC.value, record.topic.encode()),
        (DlqHeader.SOURCE_PARTITION.value, str(record.partition).encode()),
        (DlqHeader.SOURCE_OFFSET.value, str(record.offset).encode()),
        (DlqHeader.ERROR_CLASS.value, rejection.error_class.encode()),
        (DlqHeader.ERROR_MESSAGE.value, rejection.message.encode()),
        (DlqHeader.ERROR_STAGE.value, rejection.stage.encode()),
        (DlqHeader.FAILED_AT.value, now.encode()),
    ]
    # Original key, value and headers byte for byte; ours are appended after the originals.
    return OutboundRecord(topic, record.key, record.value, [*record.headers, *error_headers])


def _next_offsets(records: Sequence[RawRecord]) -> dict[Partition, int]:
    offsets: dict[Partition, int] = {}
    for r in records:
        key = (r.topic, r.partition)
        offsets[key] = max(offsets.get(key, -1), r.offset + 1)
    return offsets


def _first_offsets(records: Sequence[RawRecord]) -> dict[Partition, int]:
    offsets: dict[Partition, int] = {}
    for r in records:
        key = (r.topic, r.partition)
        offsets[key] = min(offsets.get(key, r.offset), r.offset)
    return offsets
