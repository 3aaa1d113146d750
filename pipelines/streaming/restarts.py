"""When to restart a dead classifier actor: a pure function of its slot's history and the clock.

Each actor holds a slot (its transactional id in exactly-once mode), and its replacement takes
the same slot. ``decide_restart(ended, history, config)`` returns a frozen ``RestartDecision`` and
the slot's next ``SlotHistory``; it reads no clock (``ended.at`` is now), so tests drive it failure
by failure. A slot whose actors keep dying backs off exponentially, whatever the other slots do:
one poison record then costs one rebalance per back-off, not one per actor start (and in
exactly-once mode each rebalance fences every open transaction of the group).

1. ``_ran_healthily``: an actor that ran ``stable_after_s`` before it failed was healthy, and its
   failure starts a fresh streak. Running time rather than a commit is the evidence: an actor
   that owns several partitions commits batches from the others before it reaches the poison
   record in one of them, so a commit does not tell a poisoned actor from a healthy one.
2. ``_delay``: the first failure of a streak restarts at once; then 2, 4, 8 ... up to the cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RestartConfig:
    #: An actor running this long has joined, been assigned, and polled past what killed its
    #: predecessor; dying later is a new failure. The driver uses two session timeouts.
    stable_after_s: float = 60.0
    #: Cap on the back-off: a slot still retries once a minute (the cause may be fixed meanwhile).
    max_delay_s: float = 60.0

    def __post_init__(self) -> None:
        if self.stable_after_s <= 0 or self.max_delay_s < 0:
            raise ValueError("stable_after_s must be positive and max_delay_s not negative")


@dataclass(frozen=True)
class ActorExit:
    """One actor's end, as the driver saw it. Times in seconds on the driver's clock."""

    slot: int
    at: float
    #: When it first reported ``running`` (its model loaded); None if it never did.
    running_since: float | None
    state: str
    error: str | None = None

    @property
    def ran_for_s(self) -> float | None:
        return None if self.running_since is None else self.at - self.running_since


@dataclass(frozen=True)
class SlotHistory:
    #: Failures in a row of this slot's actors, none of which ran ``stable_after_s``.
    streak: int = 0


@dataclass(frozen=True)
class RestartDecision:
    slot: int
    at: float
    streak: int
    delay_s: float
    ran_for_s: float | None
    state: str
    error: str | None
    reason: str

    @property
    def restart_at(self) -> float:
        return self.at + self.delay_s

    def to_log_fields(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "streak": self.streak,
            "restart_in_s": self.delay_s,
            "ran_for_s": None if self.ran_for_s is None else round(self.ran_for_s, 1),
            "state": self.state,
            "error": self.error,
            "reason": self.reason,
        }


def decide_restart(
    ended: ActorExit, history: SlotHistory, config: RestartConfig
) -> tuple[RestartDecision, SlotHistory]:
    healthy = _ran_healthily(ended, config)
    streak = 1 if healthy else history.streak + 1
    delay = _delay(streak, config)
    ran = ended.ran_for_s
    if ran is None:
        reason = f"never ran: {streak} in a row"
    elif healthy:
        reason = f"failed after {ran:.0f}s running (>= {config.stable_after_s:.0f}s): a fresh failure"
    else:
        reason = f"failed after {ran:.0f}s running (< {config.stable_after_s:.0f}s): {streak} in a row"
    decision = RestartDecision(ended.slot, ended.at, streak, delay, ran, ended.state, ended.error, reason)
    return decision, SlotHistory(streak=streak)


def _ran_healthily(ended: ActorExit, config: RestartConfig) -> bool:
    ran = ended.ran_for_s
    return ran is not None and ran >= config.stable_after_s


def _delay(streak: int, config: RestartConfig) -> float:
    if streak <= 1:
        return 0.0
    # The exponent is capped too: 2.0 ** 1024 overflows a float (a slot failing for a day or so).
    return min(config.max_delay_s, 2.0 ** min(streak - 1, 32))
