"""Test doubles for the control plane, so a test of ``Driver.tick`` needs no Ray and no broker.

``FakeActorPool`` honours the ``ActorPool`` contract in memory: it records every call that
changes something, and the test scripts what each actor answers, when it dies and when it hangs.
``ScriptedLag`` is a lag meter whose reading the test sets. With both, and a clock the test
advances, a driver test reads tick by tick::

    pool, lag, now = FakeActorPool(), ScriptedLag(), [0.0]
    driver = Driver(settings, pool=pool, lag=lag, clock=lambda: now[0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pipelines.kafka_tools.admin import GroupLag
from pipelines.streaming.pool import ActorGone, ActorKind, ActorSpec
from workers.report import ActorReport, LoopCounters, Placement


@dataclass
class FakeActor:
    spec: ActorSpec
    #: What it answers while alive and answering.
    report: ActorReport
    #: The error class it died with; None while alive.
    gone: str | None = None
    #: Alive but never answers (a hung process).
    hung: bool = False
    #: False while it waits for resources (no process yet): silent, and ``placed`` says so.
    placed: bool = True
    draining: bool = False
    killed: bool = False


class FakeActorPool:
    """An in-memory ``ActorPool``.

    ``calls`` holds every call except the reads made for every actor on every tick (``report``,
    ``placed``): ``("open",)``, ``("spawn", name, slot, kind)``, ``("drain", name)``,
    ``("await_reports", names)``, ``("request_capacity", kind, count)``, ``("kill", name)``,
    ``("close",)``. A spawned actor answers ``starting`` at once;
    ``answer`` changes what it says, ``die`` and ``hang`` what happens to it. A drain finishes at
    once (its report says ``stopped``) unless ``drains_finish`` is False.
    """

    def __init__(self, capacity: int = 8, node_id: str = "fake-node-0") -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.actors: dict[str, FakeActor] = {}
        self.capacity_by_kind = dict.fromkeys(ActorKind, capacity)
        self.drains_finish = True
        #: While False, spawned actors wait for resources (silent, not ``placed``) until ``place``.
        self.room = True
        self._placement = Placement(node_id=node_id)

    # -- scripting --------------------------------------------------------------------------

    def answer(
        self,
        name: str,
        state: str = "running",
        error: str | None = None,
        assignment: tuple[int, ...] | None = None,
        **counters: Any,
    ) -> None:
        """From now on ``name`` reports ``state``, ``error``, the input partitions it owns and these
        ``LoopCounters`` fields (others 0)."""
        actor = self.actors[name]
        actor.report = replace(
            actor.report, state=state, error=error, assignment=assignment, counters=LoopCounters(**counters)
        )
        actor.hung = False

    def die(self, name: str, error: str = "RayActorError") -> None:
        self.actors[name].gone = error

    def hang(self, name: str) -> None:
        self.actors[name].hung = True

    def place(self, name: str) -> None:
        """``name``, spawned while there was no ``room``, gets a place now."""
        self.actors[name].placed = True

    def spawned(self) -> list[tuple[str, int]]:
        """(name, slot) of every spawn so far, in order."""
        return [(call[1], call[2]) for call in self.calls if call[0] == "spawn"]

    def live(self) -> list[str]:
        return [name for name, actor in self.actors.items() if not actor.killed]

    # -- the ActorPool contract --------------------------------------------------------------

    def open(self) -> None:
        self.calls.append(("open",))

    def close(self) -> None:
        self.calls.append(("close",))

    def describe(self) -> Mapping[str, Any]:
        return {"CPU": float(self.capacity_by_kind[ActorKind.CLASSIFIER])}

    def capacity(self, kind: ActorKind) -> int:
        return self.capacity_by_kind[kind]

    def request_capacity(self, kind: ActorKind, count: int) -> None:
        self.calls.append(("request_capacity", kind, count))

    def placed(self, name: str) -> bool:
        return self._alive(name).placed

    def spawn(self, spec: ActorSpec) -> None:
        if spec.name in self.actors:
            raise ValueError(f"{spec.name} spawned twice")
        self.calls.append(("spawn", spec.name, spec.slot, spec.kind))
        report = ActorReport(name=spec.name, state="starting", placement=self._placement)
        self.actors[spec.name] = FakeActor(spec, report, placed=self.room)

    def report(self, name: str) -> ActorReport | None:
        actor = self._alive(name)
        if actor.gone is not None:
            raise ActorGone(name, actor.gone)
        if actor.hung or not actor.placed or (actor.draining and not self.drains_finish):
            return None
        return replace(actor.report, state="stopped") if actor.draining else actor.report

    def drain(self, name: str, timeout_s: float) -> None:
        self.calls.append(("drain", name))
        self._alive(name).draining = True

    def await_reports(self, names: Sequence[str], timeout_s: float) -> Mapping[str, ActorReport | ActorGone]:
        self.calls.append(("await_reports", tuple(names)))
        outcomes: dict[str, ActorReport | ActorGone] = {}
        for name in names:
            try:
                answer = self.report(name)
            except ActorGone as gone:
                outcomes[name] = gone
                continue
            if answer is not None:
                outcomes[name] = answer
        return outcomes

    def kill(self, name: str) -> None:
        self.calls.append(("kill", name))
        if name in self.actors:
            self.actors[name].killed = True

    def kafka_state(self, names: Sequence[str], timeout_s: float) -> list[dict[str, Any]]:
        return [{"name": name} for name in names if not self.actors[name].hung]

    def _alive(self, name: str) -> FakeActor:
        actor = self.actors[name]
        if actor.killed:
            raise AssertionError(f"{name} was killed: the driver must not ask it anything")
        return actor


class ScriptedLag:
    """A lag meter: ``measure`` returns ``lag``, which the test sets between ticks."""

    def __init__(self, lag: GroupLag | None = None) -> None:
        self.lag = lag if lag is not None else GroupLag()
        self.closed = False

    def set(self, end: Mapping[int, int], committed: Mapping[int, int]) -> None:
        self.lag = GroupLag(end=dict(end), committed=dict(committed))

    def measure(self) -> GroupLag:
        return self.lag

    def close(self) -> None:
        self.closed = True
