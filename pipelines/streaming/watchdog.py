"""Is the consumer group stuck? A pure function of what the driver saw, tick by tick.

A partition is *stalled* when it has lag, its committed offset has not moved for ``timeout_s``,
and nobody is working on it: no member owns it, or its owner has committed nothing at all for
``timeout_s`` while none of its batches is being classified or delivered. A busy owner is
never a stall, however long one partition waits behind the others (kafka-python can serve one
partition's fetched records for a minute before the next), and neither is a member still
starting, a rebalance in progress (someone joining or retiring) or a tick whose lag could not be
measured. Each of those resets nothing: the clock of a stalled partition only starts over once
its offset moves or the stall has been acted on.

What it catches is a member that has stopped asking for records it owns, one whose finished
batches can never be committed, or partitions nobody owns, whatever the cause. All three have
been seen with kafka-python 3.0.12 (a resumed partition never fetched again; after a broker
pause, two partitions never consumed again with both members idle; a member stuck half way
through a rejoin, its finished batches refused as "rebalancing" for ten minutes while their
credit kept it paused). The driver's answer is the one that always works: replace the owner
(or, with no owner, the oldest member); its clean leave and the replacement's join rebalance
the group.

``observe`` never reads a clock (``now`` is a parameter) and never touches the network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MemberActivity:
    """One member as the driver last saw it."""

    name: str
    #: Starting, draining or gone members make the group's shape uncertain: no verdict is given.
    running: bool
    #: Last time its committed count moved (or it started running).
    progressed_at: float
    paused: bool
    inflight_batches: int
    #: Input partitions it owns; None when it has not reported them yet.
    assignment: frozenset[int] | None
    spawned_at: float = 0.0
    #: Batches in flight that are still being classified or delivered (None: not reported, and
    #: then every batch in flight counts). Finished batches waiting for a commit are not work.
    unfinished_batches: int | None = None


@dataclass(frozen=True)
class Stall:
    """Partitions nobody is consuming, and the members whose replacement will unstick them."""

    partitions: tuple[int, ...]
    lag: Mapping[int, int]
    owners: Mapping[int, str | None]
    stalled_for_s: float
    replace: tuple[str, ...]

    def to_log_fields(self) -> dict[str, Any]:
        return {
            "partitions": list(self.partitions),
            "lag": dict(self.lag),
            "owners": dict(self.owners),
            "stalled_for_s": round(self.stalled_for_s, 1),
            "replace": list(self.replace),
        }


@dataclass
class StallWatch:
    """Per-partition committed offsets and since when each has stood still. Mutable; one driver."""

    timeout_s: float
    _since: dict[int, tuple[int, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")

    def observe(
        self,
        now: float,
        committed: Mapping[int, int],
        lag: Mapping[int, int],
        members: Sequence[MemberActivity],
        group_settled: bool = True,
    ) -> Stall | None:
        """Record this tick's offsets; return a ``Stall`` when one must be acted on.

        ``committed`` and ``lag`` are per input partition, from this tick's measurement (pass
        ``group_settled=False`` when it is stale, or when members are joining or leaving).
        """
        for partition, offset in committed.items():
            previous = self._since.get(partition)
            if previous is None or previous[0] != offset:
                self._since[partition] = (offset, now)
        for partition in lag:
            self._since.setdefault(partition, (committed.get(partition, 0), now))
        stuck = [
            p for p, behind in sorted(lag.items()) if behind > 0 and now - self._since[p][1] >= self.timeout_s
        ]
        if not stuck or not group_settled or not members or not all(m.running for m in members):
            return None
        if any(m.assignment is None for m in members):
            return None
        owners = {p: _owner(members, p) for p in stuck}
        idle = {m.name for m in members if _idle(m, now, self.timeout_s)}
        stalled = [p for p in stuck if owners[p] is None or owners[p] in idle]
        if not stalled:
            return None
        replace = sorted({owner for p in stalled if (owner := owners[p]) is not None})
        if not replace:  # nobody owns them: any member's leave and rejoin rebalances the group
            replace = [min(members, key=lambda m: (m.spawned_at, m.name)).name]
        stalled_for_s = min(now - self._since[p][1] for p in stalled)
        for p in stalled:  # acted on: wait a whole timeout again before the next verdict
            self._since[p] = (self._since[p][0], now)
        return Stall(
            partitions=tuple(stalled),
            lag={p: lag[p] for p in stalled},
            owners={p: owners[p] for p in stalled},
            stalled_for_s=stalled_for_s,
            replace=tuple(replace),
        )


def _owner(members: Sequence[MemberActivity], partition: int) -> str | None:
    for member in members:
        if member.assignment is not None and partition in member.assignment:
            return member.name
    return None


def _idle(member: MemberActivity, now: float, timeout_s: float) -> bool:
    """Nothing committed for ``timeout_s`` and nothing being worked on. A paused member is idle
    too when every batch holding its credit is finished: only their commit is missing."""
    if member.unfinished_batches is not None:
        working = member.unfinished_batches > 0
    else:
        working = member.paused or member.inflight_batches > 0
    return not working and now - member.progressed_at >= timeout_s
