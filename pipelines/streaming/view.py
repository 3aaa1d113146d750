"""What the driver publishes: a frozen ``DriverView`` per tick and the actors' ``CountedStats``.

The metrics endpoint, ``clstream status``, the benchmark and the soak read these; none of them
reaches into the driver's bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.kafka_tools.admin import GroupLag
from pipelines.streaming.autoscaling import ScalingDecision


@dataclass(frozen=True)
class ActorView:
    name: str
    state: str  # pending | starting | running | draining | stopped | failed | dead | unresponsive
    consumed: int = 0
    classified: int = 0
    dead_lettered: int = 0
    rate_per_s: float = 0.0
    device: str = "unknown"
    error: str | None = None
    inflight_tokens: int = 0
    inflight_batches: int = 0
    paused: bool = False
    rss_bytes: int = 0


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
    decision: ScalingDecision | None = None

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
class CountedStats:
    """The actors' counters at one instant: every actor is in exactly one of ``live`` (running or
    retiring: its last stats) and the retired sums, so totals summed from both never go backwards."""

    live: tuple[dict[str, Any], ...]
    retired: dict[str, int]
    retired_dead_letters_by_class: dict[str, int]
    #: Latency histograms (``latency_counts``, ``latency_sum_s``) of actors that are gone.
    retired_latency: tuple[dict[str, Any], ...]
    restarts_by_slot: dict[int, int]
