"""One pipeline under load, as ``clstream soak`` and its outage sweep run it: fresh topics, a
``Driver`` in this process (so this process's RSS is the driver's) with its Ray actors, and a
``NumberedLoad`` in a child process, ticked together.

- ``tick_until`` is the one loop: the driver's own ``run``, with the caller's step on each tick.
- ``measure_capacity`` saturates the pipeline (the load keeps a bounded backlog ahead of the
  commits) and returns the committed records per second once every actor runs.
- ``settle`` holds the load and waits until the group has committed everything produced.
- ``readers`` waits for open transactions (exactly-once), then asks ``clstream verify``'s reader
  and kcat to account for every record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from kafka import KafkaConsumer, TopicPartition

from pipelines.kafka_tools.admin import ensure_topics, remove_run
from pipelines.kafka_tools.verify import VerifyReport, verify_topics
from pipelines.soak.load import NumberedLoad, kcat_count
from pipelines.soak.rules import CopyCount, Delivery, ReaderCount
from pipelines.streaming.driver import Driver
from pipelines.streaming.view import DriverView
from schemas.errors import ClstreamError
from schemas.settings import Settings

log = structlog.get_logger("clstream.soak")

#: How long ``clstream verify`` and kcat may take to read one topic (millions of records).
READ_TIMEOUT_S = 900.0


class SoakError(ClstreamError):
    """A soak phase did not finish; the message says which and what the pipeline looked like."""


@dataclass(frozen=True)
class ActorEnd:
    """An actor the driver replaced: when (driver clock), which, and how it ended."""

    at: float
    name: str
    slot: int
    state: str
    error: str | None


class WatchedDriver(Driver):
    """A ``Driver`` that also keeps every actor it replaces as data (it only logs them)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.ends: list[ActorEnd] = []

    def _replace(self, member: Any, now: float) -> None:
        self.ends.append(
            ActorEnd(
                now,
                member.name,
                member.slot,
                member.state,
                member.report.error if member.report is not None else None,
            )
        )
        super()._replace(member, now)


class LoadedPipeline:
    """Topics, driver and load for one run. ``start``; tick; ``settle``; ``readers``; ``close``."""

    def __init__(self, settings: Settings, partitions: int) -> None:
        self.settings = settings
        self.partitions = partitions
        self.driver = WatchedDriver(settings)
        self.load = NumberedLoad(settings.kafka, settings.topics.input)
        #: Whether the driver started (its actors may need draining) and was drained.
        self._driving = False

    def start(self) -> None:
        topics = self.settings.topics
        ensure_topics(
            self.settings.kafka,
            {topics.input: self.partitions, topics.output: self.partitions, topics.dlq: 1},
        )
        self.load.start()
        self._driving = True
        self.driver.start(input_partitions=self.partitions)

    def tick_until(self, done: Callable[[DriverView], bool], timeout_s: float, what: str) -> DriverView:
        """Tick the driver until ``done(view)``; ``SoakError`` after ``timeout_s``."""
        stop = threading.Event()
        finished = {"done": False}

        def until(view: DriverView) -> bool:
            self.load.check()
            finished["done"] = done(view)
            return finished["done"]

        timer = threading.Timer(timeout_s, stop.set)
        timer.start()
        try:
            view = self.driver.run(stop, until=until)
        finally:
            timer.cancel()
        if not finished["done"]:
            raise SoakError(f"timed out after {timeout_s:.0f}s waiting for {what}: {view.to_log_fields()}")
        return view

    def measure_capacity(self, seconds: float, timeout_s: float = 900.0) -> float:
        """Committed records/s over ``seconds`` of saturation, counted from the first tick on which
        every actor runs and something was committed (model loading and the group join left out)."""
        workers = self.settings.workers
        # Enough backlog that no actor waits for records: each may hold its credit in flight.
        floor = 2 * workers.max_inflight_batches * workers.max_batch_records * workers.count
        ahead = 4 * self.settings.driver.watch_interval_s  # ticks of records at the rate seen so far
        previous: list[tuple[float, int]] = []
        start: list[tuple[float, int]] = []

        def saturated(view: DriverView) -> bool:
            now, committed = self.driver.clock(), view.lag.total_committed
            rate = 0.0
            if previous and now > previous[-1][0]:
                rate = (committed - previous[-1][1]) / (now - previous[-1][0])
            previous.append((now, committed))
            self.load.saturate(committed + max(floor, int(rate * ahead)))
            if not start and view.running == workers.count and committed > 0:
                start.append((now, committed))
            return bool(start) and now - start[0][0] >= seconds

        view = self.tick_until(saturated, timeout_s, "the capacity measurement")
        (t0, c0), t1 = start[0], self.driver.clock()
        return (view.lag.total_committed - c0) / max(1e-3, t1 - t0)

    def settle(self, timeout_s: float = 900.0) -> int:
        """Hold the load; return how many records it produced once the group committed them all."""
        produced = self.load.hold()
        self.tick_until(
            lambda v: v.lag.total_end >= produced and v.lag.total == 0, timeout_s, "the backlog to drain"
        )
        return produced

    def drain(self) -> None:
        """The driver's drain: every actor finishes and commits its batch, then stops."""
        if self._driving:
            self._driving = False
            self.driver.drain()

    def readers(self, delivery: Delivery) -> tuple[VerifyReport, CopyCount]:
        """``clstream verify``'s report and kcat's count, both read_committed."""
        topics, kafka = self.settings.topics, self.settings.kafka
        if delivery == "exactly-once":
            self.wait_for_transactions()
        report = verify_topics(
            kafka,
            topics.input,
            topics.output,
            topics.dlq,
            delivery,
            READ_TIMEOUT_S,
        )
        counted = kcat_count(
            ",".join(kafka.bootstrap_servers), topics.input, topics.output, topics.dlq, READ_TIMEOUT_S
        )
        return report, counted

    def wait_for_transactions(self) -> None:
        """Until no transaction is open on the output and DLQ topics (last stable offset = log end).

        A SIGKILLed producer's open transaction hides every later record from read_committed
        readers until its replacement fences it or the broker aborts it at the transaction
        timeout; the broker looks for timed-out transactions every 10 s."""
        topics, kafka = self.settings.topics, self.settings.kafka
        committed = KafkaConsumer(**kafka.client_config(), isolation_level="read_committed")
        uncommitted = KafkaConsumer(**kafka.client_config())
        deadline = time.monotonic() + self.settings.workers.transaction_timeout_ms / 1000 + 30
        try:
            tps = [
                TopicPartition(topic, p)
                for topic in (topics.output, topics.dlq)
                for p in uncommitted.partitions_for_topic(topic) or ()
            ]
            while committed.end_offsets(tps) != uncommitted.end_offsets(tps):
                if time.monotonic() > deadline:
                    raise SoakError("a transaction stayed open past the transaction timeout + 30 s")
                time.sleep(0.5)
        finally:
            committed.close()
            uncommitted.close()

    def close(self, delete_topics: bool) -> None:
        self.load.stop()
        self.drain()
        if delete_topics:
            # The run's topics and groups (run_topics names them after its group); a leftover
            # is not a soak failure.
            removed = remove_run(self.settings.kafka, self.settings.topics.group_id)
            if removed.problems:
                log.warning("topics or groups not deleted", problems=removed.problems)


def reader_counts(report: VerifyReport, counted: CopyCount) -> list[ReaderCount]:
    """Both readers' accounts, as ``soak_rules.soak_checks`` judges them."""
    verify_other = tuple(f for f in report.failures if not f.startswith(("lost=", "duplicates=")))
    kcat_other = tuple(
        f"{name}={count}"
        for name, count in (("unexpected", counted.unexpected), ("unreadable", counted.unreadable))
        if count
    )
    return [
        ReaderCount("clstream verify", report.input_records, report.lost, report.duplicates, verify_other),
        ReaderCount(
            "kcat (read_committed)", counted.input_records, counted.lost, counted.duplicates, kcat_other
        ),
    ]
