"""What the driver publishes: a frozen ``DriverView`` per tick and the actors' ``CountedStats``.

The metrics endpoint, ``clstream status``, the benchmark and the soak read these; none of them
reaches into the driver's bookkeeping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pipelines.kafka_tools.admin import GroupLag
from pipelines.streaming.autoscaling import ScalingDecision
from workers.report import ActorReport, LoopCounters, Placement

#: What an actor that has not answered yet reads as.
_NO_REPORT = ActorReport(name="", state="pending")
_NO_COUNTERS = LoopCounters()


@dataclass(frozen=True)
class ActorView:
    """One actor as the driver saw it on a tick: the driver's verdict on its state, the rate it
    measured, and the actor's own last report (None until it first answers)."""

    name: str
    state: str  # pending | starting | running | draining | stopped | failed | dead | unresponsive
    slot: int = 0
    rate_per_s: float = 0.0
    report: ActorReport | None = None

    @property
    def counters(self) -> LoopCounters:
        """The loop's counters, all zero until the loop exists."""
        return (self.report or _NO_REPORT).counters or _NO_COUNTERS

    @property
    def consumed(self) -> int:
        return self.counters.consumed

    @property
    def classified(self) -> int:
        return self.counters.classified

    @property
    def dead_lettered(self) -> int:
        return self.counters.dead_lettered

    @property
    def inflight_tokens(self) -> int:
        return self.counters.inflight_tokens

    @property
    def inflight_batches(self) -> int:
        return self.counters.inflight_batches

    @property
    def paused(self) -> bool:
        return self.counters.paused

    @property
    def device(self) -> str:
        return (self.report or _NO_REPORT).device

    @property
    def placement(self) -> Placement:
        """Where the pool placed the actor (its Ray node and GPU ids); empty until it answers."""
        return (self.report or _NO_REPORT).placement

    @property
    def error(self) -> str | None:
        return (self.report or _NO_REPORT).error

    @property
    def rss_bytes(self) -> int:
        return (self.report or _NO_REPORT).rss_bytes


@dataclass(frozen=True)
class DriverView:
    """What the driver saw on one tick."""

    at: float
    actors: tuple[ActorView, ...]
    lag: GroupLag
    replaced_total: int
    consumed_total: int = 0
    #: Stalls the watchdog acted on (``pipelines/streaming/watchdog.py``).
    stalls_total: int = 0
    rate_per_s: float = 0.0
    retiring: int = 0
    #: This tick's scaling decision (None with autoscaling off, or before partitions are known).
    decision: ScalingDecision | None = None
    #: The actor count the driver aims for: the last applied decision's, else the actors it has.
    desired: int = 0
    #: Scaling decisions applied so far, by direction.
    scaled_up: int = 0
    scaled_down: int = 0

    @property
    def running(self) -> int:
        return sum(1 for a in self.actors if a.state == "running")

    def to_log_fields(self) -> dict[str, Any]:
        return {
            "actors": {a.name: a.state for a in self.actors},
            "running": self.running,
            "lag": self.lag.total,
            "lag_by_partition": self.lag.by_partition,
            "consumed": self.consumed_total,
            "rate_per_s": round(self.rate_per_s, 1),
            "replaced": self.replaced_total,
            "stalls": self.stalls_total,
            "retiring": self.retiring,
            "inflight_tokens": sum(a.inflight_tokens for a in self.actors),
            "paused": [a.name for a in self.actors if a.paused],
        }


@dataclass(frozen=True)
class Totals:
    """Counters summed over actors: each only grows while its actor lives, and a departed actor's
    last counts stay in the sum."""

    consumed: int = 0
    classified: int = 0
    dead_lettered: int = 0
    delivery_failures: int = 0
    commit_failures: int = 0
    unreadable: int = 0
    dead_letters_by_class: Mapping[str, int] = field(default_factory=dict)
    #: Latency histogram per ``LATENCY_BUCKETS_S`` bucket (not cumulative), and its sum.
    latency_counts: tuple[int, ...] = ()
    latency_sum_s: float = 0.0

    def plus(self, counters: LoopCounters) -> Totals:
        by_class = dict(self.dead_letters_by_class)
        for error_class, count in counters.dead_letters_by_class.items():
            by_class[error_class] = by_class.get(error_class, 0) + count
        width = max(len(self.latency_counts), len(counters.latency_counts))
        mine = (*self.latency_counts, *[0] * (width - len(self.latency_counts)))
        theirs = (*counters.latency_counts, *[0] * (width - len(counters.latency_counts)))
        return replace(
            self,
            consumed=self.consumed + counters.consumed,
            classified=self.classified + counters.classified,
            dead_lettered=self.dead_lettered + counters.dead_lettered,
            delivery_failures=self.delivery_failures + counters.delivery_failures,
            commit_failures=self.commit_failures + counters.commit_failures,
            unreadable=self.unreadable + counters.unreadable,
            dead_letters_by_class=by_class,
            latency_counts=tuple(a + b for a, b in zip(mine, theirs, strict=True)),
            latency_sum_s=self.latency_sum_s + counters.latency_sum_s,
        )


@dataclass(frozen=True)
class CountedStats:
    """The actors' counters at one instant: every actor is in exactly one of ``live`` (running or
    retiring: its last report) and ``retired`` (the sums of the departed), so totals summed from
    both never go backwards."""

    live: tuple[ActorReport, ...]
    retired: Totals
    restarts_by_slot: Mapping[int, int]

    @property
    def totals(self) -> Totals:
        totals = self.retired
        for report in self.live:
            if report.counters is not None:
                totals = totals.plus(report.counters)
        return totals
