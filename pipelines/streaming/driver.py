"""The driver: starts the classifier actors, watches them, replaces the dead and drains on stop.

Each tick it observes (actor reports, group lag), acts (replace failed or dead actors, apply
scaling decisions) and publishes a frozen ``DriverView``. Actors live in an ``ActorPool``
(``pipelines/streaming/pool.py``; on Ray by default, ``ray_pool.py``), whose reports never block,
so one hung actor cannot stall the watch of the others. A dead actor's replacement takes its
slot, after the slot's back-off (``pipelines/streaming/restarts.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from pipelines.kafka_tools.admin import GroupLag, LagProbe, ensure_topics
from pipelines.streaming.autoscaling import ScalingContext, ScalingDecision, ScalingState, decide_actor_count
from pipelines.streaming.pool import ActorGone, ActorKind, ActorPool, ActorSpec
from pipelines.streaming.restarts import ActorExit, RestartConfig, SlotHistory, decide_restart
from pipelines.streaming.view import ActorView, CountedStats, DriverView, Totals
from pipelines.streaming.watchdog import MemberActivity, Stall, StallWatch
from schemas.settings import Settings
from workers.offline_hub import keep_hub_offline
from workers.report import ActorReport, LoopCounters

if TYPE_CHECKING:
    from pipelines.streaming.metrics import MetricsServer

log = structlog.get_logger("clstream.driver")

#: The state of an actor that no node has room for yet: neither dead nor unresponsive.
WAITING_FOR_RESOURCES = "waiting_for_resources"


class LagMeter(Protocol):
    """The consumer group's lag (``pipelines.kafka_tools.admin.LagProbe``)."""

    def measure(self) -> GroupLag:
        """The lag now, or a ``KafkaError`` saying why not."""

    def close(self) -> None: ...


@dataclass
class _Member:
    """The driver's bookkeeping for one live actor (its own say is ``report``)."""

    name: str
    spawned_at: float
    slot: int = 0
    kind: ActorKind = ActorKind.CLASSIFIER
    last_answer_at: float | None = None
    #: The actor's last report; None until it first answers.
    report: ActorReport | None = None
    rate_per_s: float = 0.0
    #: Records/s while busy (consumed / time spent processing) over the last tick; None if idle.
    busy_rate_per_s: float | None = None
    state: str = "pending"
    #: Last time its consumed count moved, or it began running (for the stall watchdog).
    progressed_at: float | None = None
    #: When it was first seen running (its model loaded): how long it lived decides its slot's back-off.
    running_since: float | None = None
    #: When the pool was first seen to have placed it (its process exists); None while it waits.
    placed_at: float | None = None
    #: While retiring: until when its drain may still finish (after that, any answer is final).
    retire_by: float = 0.0

    @property
    def counters(self) -> LoopCounters:
        """The loop's counters from the last report, all zero until there are some."""
        return (self.report.counters if self.report is not None else None) or LoopCounters()

    @property
    def pid(self) -> int | None:
        """The actor's process id, once it has answered."""
        return self.report.pid if self.report is not None else None

    def flat_report(self) -> dict[str, Any]:
        """The last report as one flat dict ({} before the first answer), for diagnostics."""
        if self.report is None:
            return {}
        flat = {f.name: getattr(self.report, f.name) for f in dataclasses.fields(self.report)}
        counters = flat.pop("counters")
        return flat | (dataclasses.asdict(counters) if counters is not None else {})

    def view(self) -> ActorView:
        return ActorView(
            name=self.name, state=self.state, slot=self.slot, rate_per_s=self.rate_per_s, report=self.report
        )


class Driver:
    """Owns the actors' lifecycle. Call ``start``, then ``tick`` (or ``run``), then ``drain``.

    ``pool`` runs the actors (default: a ``RayActorPool``, created on first use); ``clock`` is
    the driver's time in seconds; ``lag`` measures the group's lag (default: a ``LagProbe``
    created by ``start``). Not thread-safe, except ``counted_stats`` and ``last_view``, which
    a metrics scrape reads from its own thread.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pool: ActorPool | None = None,
        clock: Callable[[], float] = time.monotonic,
        lag: LagMeter | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        #: In the actors' transactional ids: see ``DriverSettings.instance_id``.
        self.instance_id = settings.driver.instance_id or secrets.token_hex(4)
        self._pool = pool
        self.members: dict[str, _Member] = {}
        self.replaced_total = 0
        self.dead_members: list[str] = []
        self._names = itertools.count()
        self._probe = lag
        self._last_consumed_by_member: dict[str, tuple[float, int]] = {}
        #: Slots whose replacement waits out a back-off, and when it is due; reserved meanwhile.
        self._due_spawns: dict[int, float] = {}
        self._slot_history: dict[int, SlotHistory] = {}
        # An actor that held its partitions for two session timeouts got past whatever killed its
        # predecessor on joining (a dead member keeps its partitions until its session times out).
        self._restart_config = RestartConfig(stable_after_s=2 * settings.workers.session_timeout_ms / 1000)
        #: Actors replaced after they failed, died or stopped answering, by slot.
        self.restarts_by_slot: dict[int, int] = {}
        #: Actors draining before they stop (scale-down, stall): no longer members, still counted.
        self._retiring: dict[str, _Member] = {}
        self._busy_by_member: dict[str, tuple[float, int]] = {}
        self._scaling = ScalingState()
        self._last_end: tuple[float, int] | None = None
        self.decisions: list[ScalingDecision] = []
        self.last_view: DriverView | None = None
        #: Counters of actors that are gone, so pipeline totals never go backwards.
        self.retired = Totals()
        # Held while an actor's counts move from the live ones into the retired totals, so a
        # scrape (another thread) never sees them twice or not at all (``counted_stats``).
        self._counts_lock = threading.Lock()
        self.metrics_port: int | None = None
        self._metrics_server: MetricsServer | None = None
        timeout = settings.driver.stall_timeout_s
        self._stalls = StallWatch(timeout) if timeout is not None else None
        self.stalls: list[Stall] = []
        self._lag_fresh = False

    @property
    def pool(self) -> ActorPool:
        if self._pool is None:
            # Imported here: Ray loads only when a driver without an injected pool needs actors.
            from pipelines.streaming.ray_pool import RayActorPool

            self._pool = RayActorPool(self.settings, self.instance_id)
        return self._pool

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, input_partitions: int = 4) -> None:
        keep_hub_offline()  # inherited by the actors' processes
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.pool.open()
        topics = self.settings.topics
        created = ensure_topics(
            self.settings.kafka,
            {topics.input: input_partitions, topics.output: input_partitions, topics.dlq: 1},
        )
        if created:
            log.info("created topics", topics=created)
        if self._probe is None:
            self._probe = LagProbe(self.settings.kafka, topics.input, topics.group_id)
        log.info(
            "driver starting",
            instance=self.instance_id,
            settings=self.settings.to_log_fields(),
            cluster=dict(self.pool.describe()),
        )
        metrics = self.settings.metrics
        if metrics.enabled:
            from pipelines.streaming.metrics import serve_metrics

            self._metrics_server = serve_metrics(self, metrics.host, metrics.port)
            self.metrics_port = self._metrics_server.port
            log.info("metrics served", url=f"http://{metrics.host}:{self.metrics_port}/metrics")
        autoscale = self.settings.autoscale
        initial = autoscale.min_actors if autoscale.enabled else self.settings.workers.count
        if autoscale.elastic:
            self.pool.request_capacity(ActorKind.CLASSIFIER, initial)
        for _ in range(initial):
            self._spawn()

    def run(self, stop: threading.Event, until: Callable[[DriverView], bool] | None = None) -> DriverView:
        """Tick every ``watch_interval_s`` until ``stop`` is set or ``until(view)`` is true."""
        interval = self.settings.driver.watch_interval_s
        last_logged = 0.0
        while True:
            view = self.tick()
            if self.clock() - last_logged >= 10 * interval:
                log.info("pipeline", **view.to_log_fields())
                last_logged = self.clock()
            if stop.is_set() or (until is not None and until(view)):
                return view
            stop.wait(interval)

    def drain(self) -> None:
        """Ask every actor to finish and commit its batch in hand and leave the group; then stop them."""
        timeout = self.settings.driver.drain_timeout_s
        if self._pool is not None:
            # Never placed, so nothing to finish: stopped now, or a drain would wait out its timeout
            # and one placed meanwhile could join the group and rebalance the others mid-drain.
            for member in [m for m in self.members.values() if m.state == WAITING_FOR_RESOURCES]:
                self._retire(member)
            if self.settings.autoscale.elastic:
                self._pool.request_capacity(ActorKind.CLASSIFIER, 0)  # the cluster may shrink again
        names = [*self.members, *self._retiring]
        if self._pool is not None:
            pool = self._pool
            for name in self.members:
                pool.drain(name, timeout)
            finals = pool.await_reports(names, timeout + 5) if names else {}
            for name in names:
                final = finals.get(name)
                if isinstance(final, ActorReport):
                    consumed = final.counters.consumed if final.counters is not None else 0
                    log.info("actor drained", actor=name, state=final.state, consumed=consumed)
                elif isinstance(final, ActorGone):
                    log.warning("actor could not drain", actor=name, error=final.error)
                else:
                    log.warning("actor did not drain in time", actor=name, timeout_s=timeout)
            for name in names:
                pool.kill(name)
        self.members.clear()
        self._retiring.clear()
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if self._pool is not None:
            self._pool.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None

    # -- one tick ----------------------------------------------------------------------------

    def tick(self) -> DriverView:
        now = self.clock()
        for member in list(self.members.values()):
            self._observe(member, now)
        for member in list(self.members.values()):
            if member.state == "running" and member.running_since is None:
                member.running_since = now
            elif member.state in ("failed", "dead", "unresponsive", "stopped"):
                self._replace(member, now)
        for slot, due in sorted(self._due_spawns.items()):
            if due <= now:
                del self._due_spawns[slot]
                self._spawn(slot)
        lag = self._measure_lag()
        self._collect_retired(now)
        self._watch_for_stalls(now, lag)
        decision = self._autoscale(now, lag) if self.settings.autoscale.enabled else None
        actors = tuple(m.view() for m in self.members.values())
        view = DriverView(
            at=now,
            actors=actors,
            lag=lag,
            replaced_total=self.replaced_total,
            stalls_total=len(self.stalls),
            consumed_total=self.retired.consumed + sum(a.consumed for a in actors),
            rate_per_s=sum(a.rate_per_s for a in actors),
            retiring=len(self._retiring),
            decision=decision,
            desired=self.decisions[-1].desired if self.decisions else len(self.members),
            scaled_up=sum(1 for d in self.decisions if d.desired > d.current),
            scaled_down=sum(1 for d in self.decisions if d.desired < d.current),
        )
        self.last_view = view
        return view

    def _measure_lag(self) -> GroupLag:
        from kafka.errors import KafkaError

        previous = self.last_view.lag if self.last_view is not None else GroupLag()
        self._lag_fresh = False
        if self._probe is None:
            return previous
        try:
            lag = self._probe.measure()
        except KafkaError as exc:
            # e.g. no group coordinator yet right after the broker started: keep the last view.
            log.debug("lag not measured this tick", error=type(exc).__name__)
            return previous
        self._lag_fresh = True
        return lag

    def _watch_for_stalls(self, now: float, lag: GroupLag) -> None:
        """Replace the members that sit idle on partitions with lag (``pipelines/streaming/watchdog.py``)."""
        if self._stalls is None:
            return
        # Members waiting for a node own no partitions and must not keep the group from settling.
        members = [_activity(m, now) for m in self.members.values() if m.state != WAITING_FOR_RESOURCES]
        # Joins and leaves move partitions: only a settled group with a fresh lag gets a verdict.
        settled = self._lag_fresh and not self._retiring and not self._due_spawns
        stall = self._stalls.observe(now, lag.committed, lag.by_partition, members, settled)
        if stall is None:
            return
        self.stalls.append(stall)
        log.error(
            "consumer group stalled: partitions with lag are not being consumed; replacing their owners",
            **stall.to_log_fields(),
            kafka_state=self.kafka_state(stall.replace),
        )
        for name in stall.replace:
            member = self.members[name]
            self._retire(member)
            # Its slot, not a new one: a slot is a position in the pool (its restart history, its
            # memory series), and the retiring member only drains there until it stops.
            self._spawn(member.slot)

    def kafka_state(self, names: tuple[str, ...]) -> list[dict[str, Any]]:
        """Each named member's own view of its consumer, for the log; what does not answer in 5 s is skipped."""
        return self.pool.kafka_state(names, timeout_s=5)

    def _observe(self, member: _Member, now: float) -> None:
        try:
            report = self.pool.report(member.name)
        except ActorGone as gone:
            member.state = "dead"
            member.report = dataclasses.replace(
                member.report or ActorReport(name=member.name, state="dead"), error=gone.error
            )
            return
        if report is None:
            if member.last_answer_at is None and not self._is_placed(member, now):
                # No node has room for it yet (a lost node, a cluster still growing): replacing it
                # would not help. It is shown as waiting, and placed as soon as room appears.
                if member.state != WAITING_FOR_RESOURCES:
                    log.warning(
                        "actor waiting for resources: no node has room for it yet",
                        actor=member.name,
                        slot=member.slot,
                        elastic=self.settings.autoscale.elastic,
                    )
                member.state = WAITING_FOR_RESOURCES
                return
            # A member that never answered is still loading its model.
            if member.last_answer_at is not None:
                waited_since = member.last_answer_at
            else:
                waited_since = member.placed_at if member.placed_at is not None else member.spawned_at
            grace = self.settings.driver.health_timeout_s * (1 if member.last_answer_at is not None else 4)
            if now - waited_since > grace:
                member.state = "unresponsive"
            return
        consumed = report.counters.consumed if report.counters is not None else 0
        busy = report.counters.busy_s if report.counters is not None else 0.0
        previous = self._last_consumed_by_member.get(member.name)
        if member.progressed_at is None and report.state == "running":
            member.progressed_at = now
        if previous is not None and consumed != previous[1]:
            member.progressed_at = now
        if previous is not None and now > previous[0]:
            member.rate_per_s = (consumed - previous[1]) / (now - previous[0])
        self._last_consumed_by_member[member.name] = (now, consumed)
        before = self._busy_by_member.get(member.name)
        # Below a fifth of a second of work the ratio is mostly timer noise.
        if before is not None and busy - before[0] >= 0.2:
            member.busy_rate_per_s = (consumed - before[1]) / (busy - before[0])
        else:
            member.busy_rate_per_s = None
        self._busy_by_member[member.name] = (busy, consumed)
        member.report = report
        member.last_answer_at = now
        member.state = report.state

    def _is_placed(self, member: _Member, now: float) -> bool:
        if member.placed_at is None:
            if not self.pool.placed(member.name):
                return False
            member.placed_at = now
            if member.state == WAITING_FOR_RESOURCES:
                member.state = "pending"
                log.info("actor placed", actor=member.name, waited_s=round(now - member.spawned_at, 1))
        return True

    def _spawn(self, slot: int | None = None, kind: ActorKind = ActorKind.CLASSIFIER) -> _Member:
        """Start an actor in ``slot`` (a replacement's: its predecessor's), or in the lowest free one."""
        if slot is None:
            taken = {m.slot for m in self.members.values()} | {m.slot for m in self._retiring.values()}
            slot = next(i for i in itertools.count() if i not in taken and i not in self._due_spawns)
        name = f"{kind.value}-{next(self._names)}"
        self.pool.spawn(ActorSpec(name=name, slot=slot, kind=kind))
        member = _Member(name=name, spawned_at=self.clock(), slot=slot, kind=kind)
        self.members[name] = member
        return member

    def _replace(self, member: _Member, now: float) -> None:
        ended = ActorExit(
            slot=member.slot,
            at=now,
            running_since=member.running_since,
            state=member.state,
            error=member.report.error if member.report is not None else None,
        )
        decision, self._slot_history[member.slot] = decide_restart(
            ended, self._slot_history.get(member.slot, SlotHistory()), self._restart_config
        )
        log.warning("replacing actor", actor=member.name, **decision.to_log_fields())
        with self._counts_lock:
            self._fold_retired(member.report)
            del self.members[member.name]
            self.restarts_by_slot[member.slot] = self.restarts_by_slot.get(member.slot, 0) + 1
        self.pool.kill(member.name)
        self.dead_members.append(member.name)
        self.replaced_total += 1
        self._due_spawns[member.slot] = decision.restart_at

    # -- scaling -----------------------------------------------------------------------------

    def _autoscale(self, now: float, lag: GroupLag) -> ScalingDecision | None:
        if not lag.end:
            return None  # no partition metadata yet: nothing to decide from
        ingest = 0.0
        if self._last_end is not None and now > self._last_end[0]:
            ingest = (lag.total_end - self._last_end[1]) / (now - self._last_end[0])
        self._last_end = (now, lag.total_end)
        context = ScalingContext(
            now=now,
            current=len(self.members) + len(self._due_spawns),
            lag_by_partition=lag.by_partition,
            ingest_rate=ingest,
            busy_actor_rates=tuple(
                m.busy_rate_per_s for m in self.members.values() if m.busy_rate_per_s is not None
            ),
            capacity=self.pool.capacity(ActorKind.CLASSIFIER),
        )
        decision, self._scaling = decide_actor_count(context, self._scaling, self.settings.autoscale)
        if decision.changes:
            self.decisions.append(decision)
            log.info("scaling decision", **decision.to_log_fields())
            if self.settings.autoscale.elastic:
                self.pool.request_capacity(ActorKind.CLASSIFIER, decision.desired)
            self._apply(decision)
        return decision

    def _apply(self, decision: ScalingDecision) -> None:
        for _ in range(decision.desired - decision.current):
            self._spawn()
        # Retire those still waiting for a node first, then the newest: the oldest have warm
        # models and settled partitions.
        newest_first = sorted(
            self.members.values(),
            key=lambda m: (m.state == WAITING_FOR_RESOURCES, m.spawned_at),
            reverse=True,
        )
        for member in newest_first[: max(0, decision.current - decision.desired)]:
            self._retire(member)

    def _retire(self, member: _Member) -> None:
        """Drain then stop one actor: it finishes and commits its batch and leaves the group."""
        if member.state == WAITING_FOR_RESOURCES:  # it never started: nothing to drain
            with self._counts_lock:
                del self.members[member.name]
            self.pool.kill(member.name)
            log.info("actor cancelled while waiting for resources", actor=member.name)
            return
        timeout = self.settings.driver.drain_timeout_s
        self.pool.drain(member.name, timeout)
        member.retire_by = self.clock() + timeout
        with self._counts_lock:
            del self.members[member.name]
            self._retiring[member.name] = member
        log.info("actor retiring", actor=member.name)

    def _collect_retired(self, now: float) -> None:
        for name, member in list(self._retiring.items()):
            try:
                final = self.pool.report(name)
            except ActorGone as gone:  # it died while draining: its batch is uncommitted, re-read
                final = member.report
                log.warning("actor died while retiring", actor=name, error=gone.error)
            else:
                if final is None:
                    continue
                if final.state in ("starting", "running", "draining") and now < member.retire_by:
                    # A health check's answer, not the drain's (whose call was lost to a moment
                    # of unavailability): drain is idempotent, ask again for what is left.
                    self.pool.drain(name, member.retire_by - now)
                    continue
                consumed = final.counters.consumed if final.counters is not None else 0
                log.info("actor retired", actor=name, consumed=consumed, state=final.state)
            with self._counts_lock:
                self._fold_retired(final)
                del self._retiring[name]
            self.pool.kill(name)

    def counted_stats(self) -> CountedStats:
        """What the pipeline's counters are summed from, read at one instant. Safe from any thread."""
        with self._counts_lock:
            reports = [m.report for m in (*self.members.values(), *self._retiring.values())]
            return CountedStats(
                live=tuple(r for r in reports if r is not None),
                retired=self.retired,
                restarts_by_slot=dict(self.restarts_by_slot),
            )

    def _fold_retired(self, report: ActorReport | None) -> None:
        """Add a departed actor's counts to the retired totals (hold ``_counts_lock``)."""
        if report is not None and report.counters is not None:
            self.retired = self.retired.plus(report.counters)


def _activity(member: _Member, now: float) -> MemberActivity:
    """What the stall watchdog needs of one member."""
    report, counters = member.report, member.counters
    assignment = report.assignment if report is not None else None
    return MemberActivity(
        name=member.name,
        running=member.state == "running",
        progressed_at=member.progressed_at if member.progressed_at is not None else now,
        paused=counters.paused,
        inflight_batches=counters.inflight_batches,
        assignment=frozenset(assignment) if assignment is not None else None,
        spawned_at=member.spawned_at,
        unfinished_batches=report.unfinished_batches if report is not None else None,
    )
