"""The per-actor loop: poll -> decode -> repair -> classify -> deliver -> commit, with backpressure.

Three threads share the work, each the only one doing its part:

- the *consumer thread* (``run``) owns the Kafka consumer: it polls, decodes, repairs the texts
  (``workers.text.repair_text``) and tokenizes each poll (``PreparingClassifier.prepare``),
  queues it as a batch for the model, commits finished batches in order, and pauses every
  assigned partition while the in-flight credit is spent. It
  keeps polling while paused (so it stays in the group however long inference takes) but takes
  no records; a finished batch wakes it at once, so the credit comes back without waiting for a
  poll to time out.
- the *model thread* takes every batch that is waiting when the model is free (continuous
  batching: one model call for all of them, up to ``workers.max_call_records`` records), runs
  only the model, and hands the labels on. It never waits for Kafka: while one group is being
  delivered, the next is classified.
- the *delivery thread* builds the output and dead-letter records and delivers the groups in
  order, waiting for every record to be acknowledged (at-least-once) or the transaction to commit
  (exactly-once). It takes every group waiting when it starts, so one delivery (one flush, or one
  transaction) may span several micro-batches; with ``workers.transaction_linger_ms`` an
  exactly-once transaction also waits that long for more (fewer transactions under light load,
  at that latency).

Offsets are committed in exactly one place, ``_commit_finished``, on the consumer thread, and
only for batches whose records were all acknowledged, in the order they were polled, through the
delivery mode's ``workers.commits`` strategy (``self.commits``, chosen once at construction;
its module docstring also says where the commit made during a revocation happens). A batch
whose delivery fails (broker down, DLQ unwritable) is retried with a backoff until it succeeds:
the credit stays spent, the partitions stay paused, consumption stops and ``stats.last_error``
says why; nothing is skipped.

Credit is counted in tokens, estimated from each record's size before tokenization, and in bytes.

With ``workers.delivery = "exactly-once"`` the delivery thread commits the output, DLQ records
and offsets in one Kafka transaction (``ExactlyOnceCommits``), and the consumer thread's commit
has nothing left to do. A batch whose transaction is fenced (the group moved on), or that ends
undelivered for any reason, halts the model and delivery threads: every later batch is dropped
undelivered, and the consumer thread reads them all again from the first undelivered offsets.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from queue import Empty, SimpleQueue
from typing import Any

import numpy as np
import orjson
import structlog

from schemas.dlq import DlqHeader
from schemas.errors import CommitError, DeliveryError, DeviceError, FatalWorkerError, FencedError
from schemas.records import SCHEMA_VERSION, Tweet
from schemas.settings import Settings
from workers.commits import commits_for
from workers.decode import Rejection, decode_tweet
from workers.devices import is_device_failure, release_device_memory
from workers.ports import (
    Classifier,
    GroupMetadata,
    Headers,
    OutboundRecord,
    Partition,
    PreparingClassifier,
    RawRecord,
    Sink,
    Source,
    TransactionalSink,
)
from workers.text import repair_text

log = structlog.get_logger("clstream.loop")

#: Longest wait between retries of an undelivered batch; keeps recovery quick once the broker is back.
_MAX_BACKOFF_S = 5.0
#: Upper bounds of the end-to-end latency histogram, seconds (Prometheus ``le`` buckets).
LATENCY_BUCKETS_S: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: WordPiece averages roughly 4 bytes of English per token; the JSON envelope makes this an overestimate.
_BYTES_PER_TOKEN = 4


@dataclass
class LoopStats:
    """Counters since the loop started. Written by the loop's threads; read by anyone."""

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
    inflight_batches: int = 0
    inflight_tokens: int = 0
    inflight_bytes: int = 0
    paused: bool = False
    pauses: int = 0
    resumes: int = 0
    #: Partitions taken away by a rebalance (revoked) or by eviction from the group (lost).
    revocations: int = 0
    losses: int = 0
    #: End-to-end latency (record timestamp -> output acknowledged): counts per ``LATENCY_BUCKETS_S``
    #: bucket (not cumulative), the last one for anything slower; records without a timestamp skipped.
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0
    committed: dict[str, int] = field(default_factory=dict)
    #: Dead letters committed, by error class (the ``clstream.error.class`` header).
    dead_letters_by_class: dict[str, int] = field(default_factory=dict)
    #: Records the consumer could not read at all, skipped and dead-lettered by coordinates.
    unreadable: int = 0

    def snapshot(self) -> dict:
        return asdict(self) | {
            "committed": dict(self.committed),
            "latency_counts": list(self.latency_counts),
            "dead_letters_by_class": dict(self.dead_letters_by_class),
        }

    def observe_latencies(self, latencies_s: np.ndarray) -> None:
        if latencies_s.size:
            bins = np.searchsorted(LATENCY_BUCKETS_S, latencies_s, side="left")
            counts = np.bincount(bins, minlength=len(self.latency_counts))
            self.latency_counts = [a + int(b) for a, b in zip(self.latency_counts, counts, strict=True)]
            self.latency_sum_s += float(latencies_s.sum())


@dataclass
class _Batch:
    """The records of one poll: committed together, in poll order."""

    records: list[RawRecord]
    tokens: int
    next_offsets: dict[Partition, int]
    size_bytes: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    delivered: bool = False
    delivered_at: float = 0.0
    #: Group membership when polled: fences the batch's transaction if the group has moved on.
    group_metadata: GroupMetadata | None = None
    #: The loop's rewind count when polled: a batch from before a rewind is skipped, never delivered.
    epoch: int = 0
    classified: int = 0
    rejected: int = 0
    #: Dead letters of this batch by error class.
    rejections: dict[str, int] = field(default_factory=dict)
    #: This batch's share of the model thread's time (its model calls).
    busy_s: float = 0.0
    #: Per record, decoded on the consumer thread: the tweet, or why it cannot be classified.
    decoded: list[Tweet | Rejection] = field(default_factory=list)
    #: The model's inputs of the tweets among ``decoded``, in order (``Classifier.prepare``).
    inputs: list[Any] = field(default_factory=list)
    #: Per input, after the model thread: probabilities, or why the model failed on it.
    outcomes: list[np.ndarray | Rejection] = field(default_factory=list)


@dataclass
class _Group:
    """Batches classified in one model call, in poll order."""

    batches: list[_Batch]

    @property
    def epoch(self) -> int:
        return self.batches[0].epoch

    @property
    def group_metadata(self) -> GroupMetadata | None:
        return self.batches[0].group_metadata


class ClassifierLoop:
    """One consumer-group member's whole data path.

    ``run`` is the threaded loop used by actors. ``step`` does one batch synchronously on the
    calling thread (for tests and embedding); the two must not be mixed on one instance.
    """

    def __init__(
        self, source: Source, sink: Sink | TransactionalSink, classifier: Classifier, settings: Settings
    ) -> None:
        self.source = source
        self.sink = sink
        self.classifier = classifier
        self.settings = settings
        #: How batches are delivered and their offsets committed, per ``workers.delivery``.
        self.commits = commits_for(settings.workers.delivery, source, sink)
        self.stats = LoopStats()
        self._inflight: deque[_Batch] = deque()
        self._work: SimpleQueue[_Batch | None] = SimpleQueue()
        self._deliveries: SimpleQueue[_Group | None] = SimpleQueue()
        # Set when retries must give up (drain deadline passed): the batch stays uncommitted.
        self._abandon = threading.Event()
        # Set whenever a batch finishes (delivered or dropped): wakes a paused consumer thread.
        self._finished = threading.Event()
        self._epoch = 0
        # Set by the model or delivery thread when a batch ends undelivered (fenced, given up,
        # failed unexpectedly): both skip every later batch until the consumer thread has
        # rewound, so no delivery (no transaction) commits offsets past an undelivered batch.
        self._halted = False
        #: Set when the actor cannot go on (``FatalWorkerError``): ``run`` stops polling, commits
        #: nothing past the failed batch and raises it.
        self._fatal: FatalWorkerError | None = None

    # -- the threaded loop (consumer thread) ---------------------------------------------------

    def run(self, stop: threading.Event, drain_timeout_s: float = 25.0) -> None:
        """Consume until ``stop`` is set, then finish and commit the batches in flight."""
        # Waits for the batches in flight before partitions move, up to half the rebalance timeout.
        self.source.on_revoke(
            self._on_revoke,
            settled=self._settled,
            timeout_s=self.settings.workers.max_poll_interval_ms / 2000,
        )
        # Each stage thread runs in a copy of this thread's context, so its log lines carry the
        # fields the actor bound (actor, node, GPUs, device).
        threads = [
            threading.Thread(
                target=contextvars.copy_context().run, args=(stage,), name=f"clstream-{what}", daemon=True
            )
            for stage, what in ((self._model_loop, "model"), (self._delivery_loop, "delivery"))
        ]
        for thread in threads:
            thread.start()
        try:
            while not stop.is_set() and self._fatal is None:
                self._poll_and_dispatch()
                self._commit_finished()
                self._apply_credit()
            if self._fatal is None:
                self._finish_inflight(timeout_s=drain_timeout_s)
        finally:
            self._abandon.set()
            self._work.put(None)  # the model thread passes it on to the delivery thread
            deadline = time.monotonic() + drain_timeout_s
            for thread in threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            # Batches given up at the deadline: rewind to them, so the loop can be run again.
            self._commit_finished()
        if self._fatal is not None:
            raise self._fatal

    def _poll_and_dispatch(self) -> None:
        workers = self.settings.workers
        timeout_ms = workers.poll_timeout_ms
        if self.stats.paused and self._finished.wait(timeout_ms / 1000):
            # Nothing could be fetched and a batch finished (its credit comes back): commit and
            # resume at once rather than when a poll times out. When nothing finished, the poll
            # gets its full timeout: a rejoin under way completes only inside a poll that waits
            # for it (with no wait kafka-python returns before touching it, and the member
            # stays half joined; tests/integration/test_pipeline.py found that).
            timeout_ms = 0
        self._finished.clear()
        records = self.source.poll(timeout_ms=timeout_ms, max_records=workers.max_batch_records)
        if records:
            batch = self._new_batch(records)
            self._inflight.append(batch)
            self._work.put(batch)
            self._count_inflight()

    def _apply_credit(self) -> None:
        """Pause while the credit is spent; resume once it has come back. Never stops polling."""
        workers = self.settings.workers
        spent = (
            self.stats.inflight_tokens >= workers.max_inflight_tokens
            or self.stats.inflight_bytes >= workers.max_inflight_bytes
            or len(self._inflight) >= workers.max_inflight_batches
        )
        if spent and not self.stats.paused:
            self.source.pause_all()
            self.stats.paused, self.stats.pauses = True, self.stats.pauses + 1
            log.debug("credit spent: partitions paused", inflight_tokens=self.stats.inflight_tokens)
        elif not spent and self.stats.paused:
            self.source.resume_all()
            self.stats.paused, self.stats.resumes = False, self.stats.resumes + 1

    def unfinished_batches(self) -> int:
        """Batches in flight not finished yet (being classified or delivered). Any thread."""
        return sum(1 for batch in list(self._inflight) if not batch.done.is_set())

    def _settled(self) -> bool:
        """Every batch in flight is finished (delivered or given up): safe to hand partitions over."""
        return self.unfinished_batches() == 0

    def _on_revoke(self, partitions: list[Partition], lost: bool) -> None:
        """Called inside ``poll`` before partitions move, once ``_settled`` (or its deadline): commit
        the finished batches so the new owner starts after them; what is unfinished is re-read by
        the new owner (duplicates, never loss). Must not block: the source has done the waiting."""
        if lost:
            self.stats.losses += 1
        else:
            self.stats.revocations += 1
            self._commit_finished()
        if lost:
            # Evicted from the group: a commit would fail; the new owner re-reads from the last commit.
            self._inflight.clear()
            self._count_inflight()

    def _finish_inflight(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for batch in list(self._inflight):
            if not batch.done.wait(max(0.0, deadline - time.monotonic())):
                log.warning("batches still in flight at the deadline", batches=len(self._inflight))
                break
        self._commit_finished()

    def _commit_finished(self) -> int:
        """Commit, in poll order, every leading batch that was fully delivered. The only commit:
        ``self.commits.commit`` commits on the source (at-least-once) or has nothing left to do
        (exactly-once: each batch's transaction committed its offsets); the counters follow."""
        finished: list[_Batch] = []
        while self._inflight and self._inflight[0].done.is_set():
            if not self._inflight[0].delivered:  # fenced, or abandoned at a deadline
                self._rewind()
                break
            finished.append(self._inflight.popleft())
        if not finished:
            return 0
        next_offsets: dict[Partition, int] = {}
        for batch in finished:
            next_offsets.update(batch.next_offsets)
        try:
            self.commits.commit(next_offsets)
        except CommitError as exc:
            self.stats.commit_failures += 1
            if exc.retriable:  # rebalancing, or no coordinator: keep them, in order, and commit
                # after the next poll (which rejoins); a rewind here would repeat delivered batches
                log.debug(
                    "commit refused; retrying after the next poll", batches=len(finished), error=str(exc)
                )
                self._inflight.extendleft(reversed(finished))
            else:  # the new owner re-reads them from the last commit: duplicates, never loss
                log.warning("batches delivered but not committed", batches=len(finished), error=str(exc))
                self._count_inflight()
            return 0
        stats = self.stats
        for batch in finished:
            stats.consumed += len(batch.records)
            stats.classified += batch.classified
            stats.dead_lettered += batch.rejected
            for error_class, count in batch.rejections.items():
                stats.dead_letters_by_class[error_class] = (
                    stats.dead_letters_by_class.get(error_class, 0) + count
                )
            stats.unreadable += batch.rejections.get("Unreadable", 0)
            stats.busy_s += batch.busy_s
            stamps = np.fromiter(
                (r.timestamp_ms for r in batch.records), dtype=np.float64, count=len(batch.records)
            )
            stats.observe_latencies(np.maximum(0.0, batch.delivered_at - stamps[stamps >= 0] / 1000))
        stats.batches += len(finished)
        stats.commits += 1
        stats.last_batch_at = time.time()
        stats.committed.update({f"{t}/{p}": off for (t, p), off in next_offsets.items()})
        self._count_inflight()
        return sum(len(b.records) for b in finished)

    def _rewind(self) -> None:
        """Drop every batch in flight, from the first undelivered one on, and read them again from
        their first offsets; the model thread skips those it has not reached yet."""
        first: dict[Partition, int] = {}
        for batch in self._inflight:
            for key, offset in _first_offsets(batch.records).items():
                first[key] = min(first.get(key, offset), offset)
        self._inflight.clear()
        self.source.seek(first)
        self._epoch += 1  # before un-halting: the model thread then skips every batch polled earlier
        self._halted = False
        self._count_inflight()
        log.warning("batches not delivered will be read again", partitions=len(first))

    def _count_inflight(self) -> None:
        self.stats.inflight_batches = len(self._inflight)
        self.stats.inflight_tokens = sum(b.tokens for b in self._inflight)
        self.stats.inflight_bytes = sum(b.size_bytes for b in self._inflight)

    def _new_batch(self, records: list[RawRecord]) -> _Batch:
        cap = self.settings.model.max_length
        tokens = sum(
            min(cap, len(r.value) // _BYTES_PER_TOKEN + 2) if r.value is not None else 1 for r in records
        )
        size = sum(
            len(r.key or b"") + len(r.value or b"") + sum(len(v or b"") for _, v in r.headers)
            for r in records
        )
        batch = _Batch(
            records,
            tokens,
            _next_offsets(records),
            size,
            group_metadata=self.commits.group_metadata(),
            epoch=self._epoch,
        )
        self._decode_and_prepare(batch)
        return batch

    def _prepare(self, texts: list[str]) -> list[Any]:
        """Model inputs for ``texts``: repaired (``workers.repair_text``) as the offline tools repair
        them, then tokenized here, on the consumer thread, when the classifier can
        (``PreparingClassifier``), so the model thread only runs the model."""
        if self.settings.workers.repair_text:
            texts = [repair_text(text) for text in texts]
        classifier = self.classifier
        return classifier.prepare(texts) if isinstance(classifier, PreparingClassifier) else texts

    def _run_model(self, inputs: list[Any]) -> np.ndarray:
        classifier = self.classifier
        if isinstance(classifier, PreparingClassifier):
            return classifier.classify_prepared(inputs)
        return classifier.classify(inputs)

    def _decode_and_prepare(self, batch: _Batch) -> None:
        """Decode every record and prepare the tweets' model inputs. A text the classifier cannot
        prepare is dead-lettered alone, like a record the model fails on."""
        decoded: list[Tweet | Rejection] = [decode_tweet(record) for record in batch.records]
        texts = [d.text for d in decoded if isinstance(d, Tweet)]
        try:
            batch.inputs = self._prepare(texts)
        except Exception:  # noqa: BLE001 - find the text at fault, one at a time
            batch.inputs = []
            for i, tweet in enumerate(decoded):
                if isinstance(tweet, Tweet):
                    try:
                        batch.inputs.extend(self._prepare([tweet.text]))
                    except Exception as exc:  # noqa: BLE001 - this text's own failure
                        decoded[i] = _model_rejection(exc, stage="prepare")
        batch.decoded = decoded

    # -- the model thread ---------------------------------------------------------------------

    def _model_loop(self) -> None:
        failures = 0
        waiting: _Batch | None = None
        running = True
        while running:
            first = waiting if waiting is not None else self._work.get()
            if first is None:
                break
            batches, waiting, running = self._take_waiting(first)
            try:
                group = self._classify(batches)
                if group is not None:
                    self._deliveries.put(group)
                failures = 0
            except FatalWorkerError as exc:
                self._stop_fatally(exc, batches)
            except Exception as exc:  # noqa: BLE001 - a bug here must not wedge the consumer thread
                self._halt_unexpectedly(exc, batches)
                # The same records will come back after the rewind: do not spin on them.
                failures += 1
                self._abandon.wait(min(_MAX_BACKOFF_S, 0.1 * 2**failures))
        self._deliveries.put(None)

    def _take_waiting(self, first: _Batch) -> tuple[list[_Batch], _Batch | None, bool]:
        """``first`` and the batches queued behind it that can share its model call: same epoch
        and group membership, at most ``workers.max_call_records`` records in all (``first``
        always goes). Returns them, a batch taken that could not join (it goes next), and
        whether the loop goes on (False: the stop sentinel was taken)."""
        batches, records = [first], len(first.records)
        limit = self.settings.workers.max_call_records
        while True:
            try:
                batch = self._work.get_nowait()
            except Empty:
                return batches, None, True
            if batch is None:
                return batches, None, False
            joins = (
                batch.epoch == first.epoch
                and batch.group_metadata == first.group_metadata
                and records + len(batch.records) <= limit
            )
            if not joins:
                return batches, batch, True
            batches.append(batch)
            records += len(batch.records)

    def _classify(self, batches: list[_Batch]) -> _Group | None:
        """Run the model over the prepared inputs of ``batches`` in one call; None when they are
        dropped (a rewind will read them again, or the actor is stopping)."""
        batches = [b for b in batches if not self._skip(b)]
        if not batches:
            return None
        started = time.perf_counter()
        outcomes = self._classify_isolating([item for b in batches for item in b.inputs])
        elapsed = time.perf_counter() - started
        records = sum(len(b.records) for b in batches)
        start = 0
        for batch in batches:
            batch.outcomes = outcomes[start : start + len(batch.inputs)]
            batch.busy_s = elapsed * len(batch.records) / records
            start += len(batch.inputs)
        return _Group(batches)

    def _skip(self, batch: _Batch) -> bool:
        """Drop ``batch`` undelivered if a rewind will read it again or the actor is stopping."""
        if self._halted or self._fatal is not None or batch.epoch != self._epoch:
            self._finish(batch)
            return True
        return False

    def _finish(self, batch: _Batch) -> None:
        batch.done.set()
        self._finished.set()

    def _stop_fatally(self, exc: FatalWorkerError, batches: list[_Batch]) -> None:
        # Every later batch is skipped; the consumer thread stops and ``run`` raises it.
        self._fatal = exc
        self._halted = True
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        log.error("the actor must stop", error=self.stats.last_error)
        for batch in batches:
            self._finish(batch)

    def _halt_unexpectedly(self, exc: Exception, batches: list[_Batch]) -> None:
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        log.error("batch failed unexpectedly; it will be read again", error=self.stats.last_error)
        self._halted = True
        for batch in batches:
            self._finish(batch)

    # -- the delivery thread ------------------------------------------------------------------

    def _delivery_loop(self) -> None:
        failures = 0
        waiting: _Group | None = None
        running = True
        while running:
            first = waiting if waiting is not None else self._deliveries.get()
            if first is None:
                break
            groups, waiting, running = self._take_deliveries(first)
            try:
                self._deliver(groups)
                failures = 0
            except FatalWorkerError as exc:
                self._stop_fatally(exc, [b for g in groups for b in g.batches])
            except Exception as exc:  # noqa: BLE001 - a bug here must not wedge the consumer thread
                self._halt_unexpectedly(exc, [b for g in groups for b in g.batches])
                failures += 1
                self._abandon.wait(min(_MAX_BACKOFF_S, 0.1 * 2**failures))

    def _take_deliveries(self, first: _Group) -> tuple[list[_Group], _Group | None, bool]:
        """``first`` and the groups that can share its delivery (same epoch and membership):
        those already waiting, and in exactly-once mode those that arrive within
        ``workers.transaction_linger_ms``. Same return shape as ``_take_waiting``."""
        groups = [first]
        linger_s = (
            self.settings.workers.transaction_linger_ms / 1000
            if self.settings.workers.delivery == "exactly-once"
            else 0.0
        )
        deadline = time.monotonic() + linger_s
        while True:
            try:
                remaining = deadline - time.monotonic()
                group = (
                    self._deliveries.get(timeout=remaining)
                    if remaining > 0
                    else self._deliveries.get_nowait()
                )
            except Empty:
                return groups, None, True
            if group is None:
                return groups, None, False
            if group.epoch != first.epoch or group.group_metadata != first.group_metadata:
                return groups, group, True
            groups.append(group)

    def _deliver(self, groups: list[_Group]) -> None:
        """Deliver ``groups`` at once, retrying until delivered or abandoned; then their batches
        are finished, delivered or not."""
        batches = [b for g in groups for b in g.batches if not self._skip(b)]
        if not batches:
            return
        outbound = [record for batch in batches for record in self._outbound(batch)]
        next_offsets: dict[Partition, int] = {}
        for batch in batches:
            next_offsets.update(batch.next_offsets)
        delivered = self._deliver_with_retries(
            outbound, next_offsets, batches[0].group_metadata, len(batches)
        )
        delivered_at = time.time()
        if not delivered:
            # Fenced or given up: no later batch may be delivered (its transaction would commit
            # offsets past this one) until the consumer thread has rewound to it.
            self._halted = True
        for batch in batches:
            batch.delivered, batch.delivered_at = delivered, delivered_at
            self._finish(batch)

    def _deliver_with_retries(
        self,
        outbound: list[OutboundRecord],
        next_offsets: dict[Partition, int],
        group_metadata: GroupMetadata | None,
        batches: int,
    ) -> bool:
        backoff = 0.0
        timeout_s = self.settings.workers.produce_timeout_s
        while True:
            try:
                self.commits.deliver(outbound, next_offsets, group_metadata, timeout_s)
                return True
            except FencedError as exc:
                self.stats.delivery_failures += 1
                self.stats.last_error = str(exc)
                log.warning("transaction fenced; the batch will be read again", error=str(exc))
                return False
            except DeliveryError as exc:
                self.stats.delivery_failures += 1
                self.stats.last_error = str(exc)
                backoff = min(_MAX_BACKOFF_S, max(0.1, backoff * 2))
                log.warning(
                    "batch not delivered; retrying",
                    records=len(outbound),
                    batches=batches,
                    backoff_s=backoff,
                    error=str(exc),
                )
                if self._abandon.wait(backoff):
                    return False

    # -- one batch synchronously ----------------------------------------------------------------

    def step(self) -> int:
        """Poll one batch and see it through to a commit on this thread. Returns records committed.

        Retries an undelivered batch until it is delivered: for tests and embedding, not for actors.
        """
        workers = self.settings.workers
        records = self.source.poll(timeout_ms=workers.poll_timeout_ms, max_records=workers.max_batch_records)
        if not records:
            return 0
        batch = self._new_batch(records)
        self._inflight.append(batch)
        group = self._classify([batch])
        if group is not None:
            self._deliver([group])
        return self._commit_finished()

    def _outbound(self, batch: _Batch) -> list[OutboundRecord]:
        """One output or dead-letter record per input record of ``batch``, in order; counts them."""
        topics = self.settings.topics
        labels = self.classifier.labels
        model_id, pooling = self.classifier.model_id, self.classifier.pooling
        now = datetime.now(UTC).isoformat()
        outcomes = iter(batch.outcomes)
        out: list[OutboundRecord] = []
        rejections: dict[str, int] = {}
        for record, tweet in zip(batch.records, batch.decoded, strict=True):
            outcome = next(outcomes) if isinstance(tweet, Tweet) else tweet
            if isinstance(outcome, Rejection):
                rejections[outcome.error_class] = rejections.get(outcome.error_class, 0) + 1
                out.append(_dead_letter(record, outcome, topics.dlq, now, topics.dlq_max_record_bytes))
                continue
            assert isinstance(tweet, Tweet)
            probs = outcome.tolist()
            best = max(range(len(labels)), key=probs.__getitem__)
            value = orjson.dumps(
                {
                    "schema_version": SCHEMA_VERSION,
                    "id": tweet.id,
                    "label": labels[best],
                    "scores": dict(zip(labels, probs, strict=True)),
                    "model_id": model_id,
                    "pooling": pooling,
                    "source_topic": record.topic,
                    "source_partition": record.partition,
                    "source_offset": record.offset,
                    "classified_at": now,
                }
            )
            out.append(OutboundRecord(topics.output, record.key or tweet.id.encode(), value))
        batch.rejections = rejections
        batch.rejected = sum(rejections.values())
        batch.classified = len(batch.records) - batch.rejected
        return out

    def _classify_isolating(self, texts: list[Any]) -> list[np.ndarray | Rejection]:
        """Classify ``texts`` (prepared inputs); if the model fails on a batch, split it until the
        bad record is alone.

        A device error (``workers.devices.is_device_failure``) is not the records' fault: a
        smaller batch may fit, so it splits too, but a single record that still fails is retried,
        and then ``DeviceError`` stops the actor; no record is dead-lettered for it."""
        if not texts:
            return []
        try:
            return list(self._run_model(texts))
        except Exception as exc:  # noqa: BLE001 - any model failure is isolated, never fatal
            if len(texts) == 1:
                if is_device_failure(exc):
                    return self._retry_on_device(texts, exc)
                return [_model_rejection(exc)]
            half = len(texts) // 2
            return self._classify_isolating(texts[:half]) + self._classify_isolating(texts[half:])

    def _retry_on_device(self, texts: list[Any], error: Exception) -> list[np.ndarray | Rejection]:
        """Retry one record after a device error, with a backoff; ``DeviceError`` if it persists."""
        retries = self.settings.workers.device_retries
        for attempt in range(retries):
            release_device_memory()
            if self._abandon.wait(min(_MAX_BACKOFF_S, 0.5 * 2**attempt)):
                break
            try:
                return list(self._run_model(texts))
            except Exception as exc:  # noqa: BLE001 - sorted below: device or record
                if not is_device_failure(exc):
                    return [_model_rejection(exc)]
                error = exc
        raise DeviceError(
            f"the model's device failed on a single record after {retries} retries "
            f"({type(error).__name__}: {str(error)[:200]}); the actor stops and its batch stays "
            "uncommitted"
        ) from error


def _model_rejection(exc: Exception, stage: str = "classify") -> Rejection:
    reason = f"the model failed on this record: {type(exc).__name__}: {str(exc)[:200]}"
    return Rejection("ClassificationFailed", reason, stage=stage)


def _dead_letter(
    record: RawRecord, rejection: Rejection, topic: str, now: str, max_bytes: int
) -> OutboundRecord:
    error_headers: Headers = [
        (DlqHeader.SOURCE_TOPIC.value, record.topic.encode()),
        (DlqHeader.SOURCE_PARTITION.value, str(record.partition).encode()),
        (DlqHeader.SOURCE_OFFSET.value, str(record.offset).encode()),
        (DlqHeader.ERROR_CLASS.value, rejection.error_class.encode()),
        (DlqHeader.ERROR_MESSAGE.value, rejection.message.encode()),
        (DlqHeader.ERROR_STAGE.value, rejection.stage.encode()),
        (DlqHeader.FAILED_AT.value, now.encode()),
    ]
    # Original key, value and headers byte for byte; ours are appended after the originals.
    copy = OutboundRecord(topic, record.key, record.value, [*record.headers, *error_headers])
    return copy if record_bytes(copy) <= max_bytes else _cut_to_fit(record, error_headers, topic, max_bytes)


#: Framing a record may take besides its bytes: the batch header (61 bytes) and the record's
#: varints (at most 5 bytes each for length, attributes, timestamp and offset deltas, key and
#: value lengths, header count); per header, two more length varints.
_RECORD_FRAMING_BYTES = 100
_HEADER_FRAMING_BYTES = 10


def record_bytes(record: OutboundRecord) -> int:
    """An upper bound on the bytes ``record`` takes in a produce request."""
    headers = sum(
        len(name.encode()) + len(value or b"") + _HEADER_FRAMING_BYTES for name, value in record.headers
    )
    return len(record.key or b"") + len(record.value or b"") + headers + _RECORD_FRAMING_BYTES


def _cut_to_fit(record: RawRecord, error_headers: Headers, topic: str, max_bytes: int) -> OutboundRecord:
    """The largest copy of ``record`` within ``max_bytes``: the value's first bytes, then without
    the original headers, then the key's first bytes, with a header naming what was cut."""
    key, value, headers = record.key, record.value, list(record.headers)
    cut: list[str] = []
    # Room for the TRUNCATED header itself (name, and up to three "part=size" entries).
    budget = max_bytes - 120

    def size() -> int:
        return record_bytes(OutboundRecord(topic, key, value, [*headers, *error_headers]))

    if value is not None and size() > budget:
        cut.append(f"value={len(value)}")
        value = value[: max(0, len(value) - (size() - budget))]
    if headers and size() > budget:
        cut.append(f"headers={sum(len(n.encode()) + len(v or b'') for n, v in headers)}")
        headers = []
    if key is not None and size() > budget:
        cut.append(f"key={len(key)}")
        key = key[: max(0, len(key) - (size() - budget))]
    truncated = (DlqHeader.TRUNCATED.value, ",".join(cut).encode())
    return OutboundRecord(topic, key, value, [*headers, *error_headers, truncated])


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
