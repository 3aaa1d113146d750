"""How many classifier actors the pipeline should have: a pure function of what the driver saw.

``decide_actor_count(context, state, config)`` returns a frozen ``ScalingDecision`` and the next
``ScalingState``; ``config`` is the ``autoscale`` settings (``schemas.settings.AutoscaleSettings``,
validated there). It never reads a clock or the network (``context.now`` is the clock), so tests
drive it tick by tick. It is composed of small steps:

1. ``_smooth``: exponentially weighted ingest rate and per-actor throughput, so one noisy tick
   does not move anything;
2. ``_demand``: actors needed = (ingest rate + total lag / catch-up time) / per-actor rate;
3. ``_apply_hysteresis``: scale up as soon as demand exceeds what we have, scale down only when
   the smaller count would still have ``downscale_headroom`` to spare;
4. ``_apply_bounds``: min/max actors, the partition count (an actor beyond it idles), and what the
   cluster can host now (more is reported as ``limited_by``, not requested);
5. ``_apply_delay``: a change must be wanted continuously for ``upscale_delay_s`` (or the longer
   ``downscale_delay_s``) before it is made; a change of direction restarts the wait.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from schemas.settings import AutoscaleSettings


@dataclass(frozen=True)
class ScalingContext:
    """One tick's observations. Rates in records per second."""

    now: float
    current: int
    lag_by_partition: Mapping[int, int]
    ingest_rate: float
    #: Throughput of actors that were busy this tick (idle actors say nothing about capacity).
    busy_actor_rates: tuple[float, ...] = ()
    #: How many actors the cluster could host in total right now (GPUs, or CPUs without GPUs).
    capacity: int = 1_000_000

    @property
    def partitions(self) -> int:
        return len(self.lag_by_partition)

    @property
    def total_lag(self) -> int:
        return sum(self.lag_by_partition.values())


@dataclass(frozen=True)
class ScalingState:
    ingest_rate: float | None = None
    actor_rate: float | None = None
    #: The change being waited on (a count), and since when it has been wanted.
    pending: int | None = None
    pending_since: float | None = None


@dataclass(frozen=True)
class ScalingDecision:
    at: float
    current: int
    desired: int
    #: What the load alone asks for, before bounds and delays.
    wanted: int
    reason: str
    limited_by: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return self.desired != self.current

    def to_log_fields(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "desired": self.desired,
            "wanted": self.wanted,
            "reason": self.reason,
            "limited_by": self.limited_by,
            **self.inputs,
        }


def decide_actor_count(
    context: ScalingContext, state: ScalingState, config: AutoscaleSettings
) -> tuple[ScalingDecision, ScalingState]:
    state = _smooth(context, state, config)
    ingest_rate, actor_rate = state.ingest_rate or 0.0, state.actor_rate or config.initial_actor_rate
    demand = _demand(context, state, config)
    wanted = _apply_hysteresis(context.current, demand, config)
    target, limited_by = _apply_bounds(wanted, context, config)
    desired, reason, state = _apply_delay(context, target, state, config)
    inputs = {
        "lag": context.total_lag,
        "partitions": context.partitions,
        "ingest_rate": round(ingest_rate, 2),
        "actor_rate": round(actor_rate, 2),
        "demand_actors": round(demand, 3),
        "capacity": context.capacity,
    }
    decision = ScalingDecision(context.now, context.current, desired, wanted, reason, limited_by, inputs)
    return decision, state


def _ewma(previous: float | None, value: float, alpha: float) -> float:
    return value if previous is None else alpha * value + (1 - alpha) * previous


def _smooth(context: ScalingContext, state: ScalingState, config: AutoscaleSettings) -> ScalingState:
    ingest = _ewma(state.ingest_rate, max(0.0, context.ingest_rate), config.smoothing)
    measured = [r for r in context.busy_actor_rates if r > 0]
    if measured:
        actor_rate = _ewma(state.actor_rate, sum(measured) / len(measured), config.smoothing)
    else:
        actor_rate = state.actor_rate if state.actor_rate is not None else config.initial_actor_rate
    return replace(state, ingest_rate=ingest, actor_rate=actor_rate)


def _demand(context: ScalingContext, state: ScalingState, config: AutoscaleSettings) -> float:
    assert state.ingest_rate is not None and state.actor_rate is not None
    needed_rate = state.ingest_rate + context.total_lag / config.catch_up_s
    return needed_rate / state.actor_rate


def _apply_hysteresis(current: int, demand: float, config: AutoscaleSettings) -> int:
    up = math.ceil(demand - 1e-9)
    if up > current:
        return up
    # Down only to a count that would still have headroom to spare: no flapping around a boundary.
    down = math.ceil(demand / (1 - config.downscale_headroom) - 1e-9)
    return min(current, max(down, 0))


def _apply_bounds(wanted: int, context: ScalingContext, config: AutoscaleSettings) -> tuple[int, str | None]:
    bounds = [
        ("max_actors", config.max_actors),
        ("partitions", max(context.partitions, config.min_actors)),
        ("capacity", max(context.capacity, 1)),
    ]
    target, limited_by = max(wanted, config.min_actors), None
    for name, ceiling in bounds:
        if target > ceiling:
            target, limited_by = ceiling, name
    return target, limited_by


def _apply_delay(
    context: ScalingContext, target: int, state: ScalingState, config: AutoscaleSettings
) -> tuple[int, str, ScalingState]:
    current = context.current
    if target == current:
        return current, "steady", replace(state, pending=None, pending_since=None)
    direction_changed = state.pending is None or (state.pending > current) != (target > current)
    since = context.now if direction_changed or state.pending_since is None else state.pending_since
    state = replace(state, pending=target, pending_since=since)
    delay = config.upscale_delay_s if target > current else config.downscale_delay_s
    waited = context.now - since
    if waited >= delay:
        verb = "scale up" if target > current else "scale down"
        return target, f"{verb}: wanted for {waited:.0f}s", replace(state, pending=None, pending_since=None)
    return current, f"waiting {delay - waited:.0f}s more before changing to {target}", state
