"""What a classifier actor says about itself: one frozen ``ActorReport`` per health check.

The actor builds it (``workers/actor.py``), the driver keeps each actor's latest one and publishes
it in its view (``pipelines/streaming/view.py``), and the metrics endpoint reads it from there.
Imports nothing heavy, so the driver, the metrics and their tests load it without torch, Kafka or
Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Placement:
    """Where the actor runs, as its pool placed it (filled in by the Ray adapter; empty elsewhere)."""

    node_id: str | None = None
    gpu_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoopCounters:
    """A copy of the loop's ``LoopStats`` at one instant (same fields; see ``workers/loop.py`` for
    their meaning). Counters are cumulative since the actor's loop started."""

    consumed: int = 0
    classified: int = 0
    dead_lettered: int = 0
    batches: int = 0
    commits: int = 0
    delivery_failures: int = 0
    commit_failures: int = 0
    #: Seconds spent classifying and delivering (for the records/s of a busy actor).
    busy_s: float = 0.0
    last_batch_at: float | None = None
    last_error: str | None = None
    inflight_batches: int = 0
    inflight_tokens: int = 0
    inflight_bytes: int = 0
    paused: bool = False
    pauses: int = 0
    resumes: int = 0
    revocations: int = 0
    losses: int = 0
    #: Per latency bucket, not cumulative, the last one for anything slower than the last bound.
    latency_counts: tuple[int, ...] = ()
    latency_sum_s: float = 0.0
    committed: Mapping[str, int] = field(default_factory=dict)
    dead_letters_by_class: Mapping[str, int] = field(default_factory=dict)
    unreadable: int = 0


@dataclass(frozen=True)
class ActorReport:
    """One actor's health and counters. Never mutated: a newer report replaces an older one, so
    a reader on another thread (a metrics scrape) always sees one consistent report."""

    name: str
    #: starting -> running -> draining -> stopped, or failed (with ``error``).
    state: str
    error: str | None = None
    device: str = "unknown"
    pid: int | None = None
    uptime_s: float = 0.0
    #: Real tokens / computed tokens so far; None before the first batch.
    padding_efficiency: float | None = None
    #: Tokens of the texts classified so far (special tokens included, padding not).
    real_tokens: int = 0
    #: Seconds the model spent from token ids to probabilities (the device's busy time).
    forward_s: float = 0.0
    rss_bytes: int = 0
    #: Input partitions owned after the last poll; None until the member has joined.
    assignment: tuple[int, ...] | None = None
    #: Batches in flight still being classified or delivered (the rest wait for a commit); None
    #: when not reported, and then every batch in flight counts as work.
    unfinished_batches: int | None = None
    placement: Placement = field(default_factory=Placement)
    #: The loop's counters; None until the loop exists (the model is still loading).
    counters: LoopCounters | None = None
