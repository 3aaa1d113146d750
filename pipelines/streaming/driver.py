"""The driver: starts the classifier actors, watches them, replaces the dead and drains on stop.

Each tick it observes (actor stats, group lag), acts (replace failed or dead actors) and reports
a frozen ``DriverView``. It never blocks on an actor: health checks are outstanding Ray calls
that are collected when they are ready, so one hung actor cannot stall the watch of the others.
A dead actor's replacement takes its slot, after the slot's back-off (``pipelines/streaming/restarts.py``).
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from pipelines.kafka_tools.admin import GroupLag, LagProbe, ensure_topics
from pipelines.streaming.autoscaling import ScalingContext, ScalingDecision, ScalingState, decide_actor_count
from pipelines.streaming.restarts import ActorExit, RestartConfig, SlotHistory, decide_restart
from pipelines.streaming.view import ActorView, CountedStats, DriverView
from pipelines.streaming.watchdog import MemberActivity, Stall, StallWatch
from schemas.settings import Settings

log = structlog.get_logger("clstream.driver")

#: Counters the driver keeps for actors that are gone (``LoopStats`` fields; ints).
_FOLDED_COUNTS = (
    "consumed",
    "classified",
    "dead_lettered",
    "delivery_failures",
    "commit_failures",
    "unreadable",
)


@dataclass
class _Member:
    name: str
    handle: Any
    spawned_at: float
    slot: int = 0
    pending_ref: Any = None
    last_answer_at: float | None = None
    last: dict[str, Any] = field(default_factory=dict)
    rate_per_s: float = 0.0
    #: Records/s while busy (consumed / time spent processing) over the last tick; None if idle.
    busy_rate_per_s: float | None = None
    state: str = "pending"
    #: Last time its consumed count moved, or it began running (for the stall watchdog).
    progressed_at: float | None = None
    #: When it was first seen running (its model loaded): how long it lived decides its slot's back-off.
    running_since: float | None = None


class Driver:
    """Owns the actors' lifecycle. Call ``start``, then ``tick`` (or ``run``), then ``drain``."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        #: In the actors' transactional ids: see ``DriverSettings.instance_id``.
        self.instance_id = settings.driver.instance_id or secrets.token_hex(4)
        self.members: dict[str, _Member] = {}
        self.replaced_total = 0
        self.dead_members: list[str] = []
        self._names = itertools.count()
        self._own_ray = False
        self._probe: LagProbe | None = None
        self._last_consumed_by_member: dict[str, tuple[float, int]] = {}
        #: Slots whose replacement waits out a back-off, and when it is due; reserved meanwhile.
        self._due_spawns: dict[int, float] = {}
        self._slot_history: dict[int, SlotHistory] = {}
        # An actor that held its partitions for two session timeouts got past whatever killed its
        # predecessor on joining (a dead member keeps its partitions until its session times out).
        self._restart_config = RestartConfig(stable_after_s=2 * settings.workers.session_timeout_ms / 1000)
        #: Actors replaced after they failed, died or stopped answering, by slot.
        self.restarts_by_slot: dict[int, int] = {}
        self._retiring: dict[str, tuple[_Member, Any]] = {}
        self._busy_by_member: dict[str, tuple[float, int]] = {}
        self._scaling = ScalingState()
        self._last_end: tuple[float, int] | None = None
        self.decisions: list[ScalingDecision] = []
        self.last_view: DriverView | None = None
        #: Counters of actors that are gone, so pipeline totals never go backwards.
        self.retired_totals: dict[str, int] = dict.fromkeys(_FOLDED_COUNTS, 0)
        self.retired_dead_letters_by_class: dict[str, int] = {}
        # Held while an actor's counts move from the live ones into the retired totals, so a
        # scrape (another thread) never sees them twice or not at all (``counted_stats``).
        self._counts_lock = threading.Lock()
        #: Last stats of actors that are gone (their latency histograms stay in the totals).
        self.retired_latency: list[dict[str, Any]] = []
        self.metrics_port: int | None = None
        timeout = settings.driver.stall_timeout_s
        self._stalls = StallWatch(timeout) if timeout is not None else None
        self.stalls: list[Stall] = []
        self._lag_fresh = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, input_partitions: int = 4) -> None:
        import ray

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if not ray.is_initialized():
            init_ray(self.settings)
            self._own_ray = True
        topics = self.settings.topics
        created = ensure_topics(
            self.settings.kafka,
            {topics.input: input_partitions, topics.output: input_partitions, topics.dlq: 1},
        )
        if created:
            log.info("created topics", topics=created)
        self._probe = LagProbe(self.settings.kafka, topics.input, topics.group_id)
        log.info(
            "driver starting",
            instance=self.instance_id,
            settings=self.settings.to_log_fields(),
            cluster=_cluster_resources(),
        )
        metrics = self.settings.metrics
        if metrics.enabled:
            from pipelines.streaming.metrics import serve_metrics

            self.metrics_port = serve_metrics(self, metrics.host, metrics.port)
            log.info("metrics served", url=f"http://{metrics.host}:{self.metrics_port}/metrics")
        autoscale = self.settings.autoscale
        for _ in range(autoscale.min_actors if autoscale.enabled else self.settings.workers.count):
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
        import ray

        timeout = self.settings.driver.drain_timeout_s
        refs = {m.name: m.handle.drain.remote(timeout) for m in self.members.values()}
        refs.update({name: ref for name, (_, ref) in self._retiring.items()})
        ready, not_ready = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout + 5)
        for name, ref in refs.items():
            if ref in ready:
                try:
                    final = ray.get(ref)
                    log.info(
                        "actor drained", actor=name, state=final["state"], consumed=final.get("consumed", 0)
                    )
                except Exception as exc:  # noqa: BLE001 - a dead actor has nothing left to drain
                    log.warning("actor could not drain", actor=name, error=type(exc).__name__)
            else:
                log.warning("actor did not drain in time", actor=name, timeout_s=timeout)
        for member in [*self.members.values(), *(m for m, _ in self._retiring.values())]:
            ray.kill(member.handle, no_restart=True)
        self.members.clear()
        self._retiring.clear()
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if self._own_ray:
            ray.shutdown()

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
        self._collect_retired()
        self._watch_for_stalls(now, lag)
        decision = self._autoscale(now, lag) if self.settings.autoscale.enabled else None
        actors = tuple(
            ActorView(
                name=m.name,
                state=m.state,
                consumed=m.last.get("consumed", 0),
                classified=m.last.get("classified", 0),
                dead_lettered=m.last.get("dead_lettered", 0),
                rate_per_s=m.rate_per_s,
                device=m.last.get("device", "unknown"),
                error=m.last.get("error"),
                inflight_tokens=m.last.get("inflight_tokens", 0),
                inflight_batches=m.last.get("inflight_batches", 0),
                paused=bool(m.last.get("paused", False)),
                rss_bytes=m.last.get("rss_bytes", 0),
            )
            for m in self.members.values()
        )
        view = DriverView(
            at=now,
            actors=actors,
            lag=lag,
            replaced_total=self.replaced_total,
            stalls_total=len(self.stalls),
            consumed_total=self.retired_totals["consumed"] + sum(a.consumed for a in actors),
            rate_per_s=sum(a.rate_per_s for a in actors),
            retiring=len(self._retiring),
            decision=decision,
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
        members = [
            MemberActivity(
                name=m.name,
                running=m.state == "running",
                progressed_at=m.progressed_at if m.progressed_at is not None else now,
                paused=bool(m.last.get("paused", False)),
                inflight_batches=int(m.last.get("inflight_batches", 0)),
                assignment=frozenset(m.last["assignment"]) if m.last.get("assignment") is not None else None,
                spawned_at=m.spawned_at,
                unfinished_batches=m.last.get("unfinished_batches"),
            )
            for m in self.members.values()
        ]
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
            self._retire(self.members[name])
            self._spawn()

    def kafka_state(self, names: tuple[str, ...]) -> list[dict[str, Any]]:
        """Each named member's own view of its consumer, for the log; what does not answer in 5 s is skipped."""
        import ray

        refs = [self.members[name].handle.kafka_state.remote() for name in names]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=5)
        states = []
        for ref in ready:
            try:
                states.append(ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - a dying actor has no state to give
                states.append({"error": type(exc).__name__})
        return states

    def _observe(self, member: _Member, now: float) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        if member.pending_ref is None:
            member.pending_ref = member.handle.stats.remote()
        ready, _ = ray.wait([member.pending_ref], timeout=0.05)
        if not ready:
            # A member that never answered is still being scheduled or loading its model.
            waited_since = member.last_answer_at if member.last_answer_at is not None else member.spawned_at
            grace = self.settings.driver.health_timeout_s * (1 if member.last_answer_at is not None else 4)
            if now - waited_since > grace:
                member.state = "unresponsive"
            return
        ref, member.pending_ref = member.pending_ref, None
        try:
            stats = ray.get(ref, timeout=1.0)
        except (RayActorError, GetTimeoutError) as exc:
            member.state = "dead"
            member.last = {**member.last, "error": type(exc).__name__}
            return
        previous = self._last_consumed_by_member.get(member.name)
        if member.progressed_at is None and stats["state"] == "running":
            member.progressed_at = now
        if previous is not None and stats.get("consumed", 0) != previous[1]:
            member.progressed_at = now
        if previous is not None and now > previous[0]:
            member.rate_per_s = (stats.get("consumed", 0) - previous[1]) / (now - previous[0])
        self._last_consumed_by_member[member.name] = (now, stats.get("consumed", 0))
        busy, consumed = stats.get("busy_s", 0.0), stats.get("consumed", 0)
        before = self._busy_by_member.get(member.name)
        # Below a fifth of a second of work the ratio is mostly timer noise.
        if before is not None and busy - before[0] >= 0.2:
            member.busy_rate_per_s = (consumed - before[1]) / (busy - before[0])
        else:
            member.busy_rate_per_s = None
        self._busy_by_member[member.name] = (busy, consumed)
        member.last = stats
        member.last_answer_at = now
        member.state = stats["state"]

    def _spawn(self, slot: int | None = None) -> _Member:
        """Start an actor in ``slot`` (a replacement's: its predecessor's), or in the lowest free one."""
        if slot is None:
            taken = {m.slot for m in self.members.values()} | {m.slot for m, _ in self._retiring.values()}
            slot = next(i for i in itertools.count() if i not in taken and i not in self._due_spawns)
        name = f"classifier-{next(self._names)}"
        member = _Member(name=name, handle=self._launch(name, slot), spawned_at=self.clock(), slot=slot)
        self.members[name] = member
        return member

    def _launch(self, name: str, slot: int) -> Any:
        """Create the Ray actor and start it; returns its handle (the one place actors are created)."""
        import ray

        from workers.actor import ClassifierActor

        workers = self.settings.workers
        options: dict[str, Any] = {"num_cpus": workers.cpus, "max_restarts": 0, "max_concurrency": 4}
        if _cluster_resources().get("GPU", 0) > 0 and self.settings.model.device != "cpu":
            options["num_gpus"] = workers.gpu_fraction
        handle: Any = (
            ray.remote(ClassifierActor).options(**options).remote(self.settings, name, slot, self.instance_id)
        )
        handle.start.remote()
        log.info(
            "actor spawned",
            actor=name,
            slot=slot,
            resources={k: v for k, v in options.items() if k.startswith("num_")},
        )
        return handle

    def _replace(self, member: _Member, now: float) -> None:
        ended = ActorExit(
            slot=member.slot,
            at=now,
            running_since=member.running_since,
            state=member.state,
            error=member.last.get("error"),
        )
        decision, self._slot_history[member.slot] = decide_restart(
            ended, self._slot_history.get(member.slot, SlotHistory()), self._restart_config
        )
        log.warning("replacing actor", actor=member.name, **decision.to_log_fields())
        with self._counts_lock:
            self._fold_retired(member.last)
            del self.members[member.name]
            self.restarts_by_slot[member.slot] = self.restarts_by_slot.get(member.slot, 0) + 1
        self._kill(member)
        self.dead_members.append(member.name)
        self.replaced_total += 1
        self._due_spawns[member.slot] = decision.restart_at

    def _kill(self, member: _Member) -> None:
        import ray

        try:
            ray.kill(member.handle, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - it may already be gone
            log.debug("kill failed", actor=member.name, error=type(exc).__name__)

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
            capacity=_actor_capacity(self.settings),
        )
        decision, self._scaling = decide_actor_count(context, self._scaling, self.settings.autoscale)
        if decision.changes:
            self.decisions.append(decision)
            log.info("scaling decision", **decision.to_log_fields())
            self._apply(decision)
        return decision

    def _apply(self, decision: ScalingDecision) -> None:
        for _ in range(decision.desired - decision.current):
            self._spawn()
        # Retire the newest first: the oldest have warm models and settled partitions.
        for member in sorted(self.members.values(), key=lambda m: m.spawned_at, reverse=True)[
            : max(0, decision.current - decision.desired)
        ]:
            self._retire(member)

    def _retire(self, member: _Member) -> None:
        """Drain then stop one actor: it finishes and commits its batch and leaves the group."""
        ref = member.handle.drain.remote(self.settings.driver.drain_timeout_s)
        with self._counts_lock:
            del self.members[member.name]
            self._retiring[member.name] = (member, ref)
        log.info("actor retiring", actor=member.name)

    def _collect_retired(self) -> None:
        import ray

        for name, (member, ref) in list(self._retiring.items()):
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                continue
            try:
                final = ray.get(ref)
                log.info("actor retired", actor=name, consumed=final.get("consumed", 0), state=final["state"])
            except Exception as exc:  # noqa: BLE001 - it died while draining: its batch is uncommitted, re-read
                final = member.last
                log.warning("actor died while retiring", actor=name, error=type(exc).__name__)
            with self._counts_lock:
                self._fold_retired(final)
                del self._retiring[name]
            ray.kill(member.handle, no_restart=True)

    def counted_stats(self) -> CountedStats:
        """What the pipeline's counters are summed from, read at one instant. Safe from any thread."""
        with self._counts_lock:
            return CountedStats(
                live=(
                    *(m.last for m in self.members.values()),
                    *(m.last for m, _ in self._retiring.values()),
                ),
                retired=dict(self.retired_totals),
                retired_dead_letters_by_class=dict(self.retired_dead_letters_by_class),
                retired_latency=tuple(self.retired_latency),
                restarts_by_slot=dict(self.restarts_by_slot),
            )

    def _fold_retired(self, stats: dict[str, Any]) -> None:
        """Add a departed actor's counts to the retired totals (hold ``_counts_lock``)."""
        for key in self.retired_totals:
            self.retired_totals[key] += stats.get(key, 0)
        for error_class, count in (stats.get("dead_letters_by_class") or {}).items():
            by_class = self.retired_dead_letters_by_class
            by_class[error_class] = by_class.get(error_class, 0) + count
        if stats.get("latency_counts"):
            self.retired_latency.append(
                {"latency_counts": stats["latency_counts"], "latency_sum_s": stats.get("latency_sum_s", 0.0)}
            )

    # -- introspection for tests and the CLI ------------------------------------------------

    def actor_pids(self) -> dict[str, int]:
        import ray

        return {name: ray.get(m.handle.pid.remote(), timeout=30) for name, m in self.members.items()}


def init_ray(settings: Settings) -> None:
    """Connect to ``driver.ray_address`` or start a local Ray bound to loopback."""
    import logging

    import ray

    driver = settings.driver
    if driver.ray_address:
        ray.init(address=driver.ray_address, logging_level=logging.WARNING)
        return
    # Ray resolves 127.0.0.1 to the machine's routable address unless it believes it runs on a
    # single-node-only platform. This switch keeps every Ray port of a local run on loopback: the
    # env var for Ray's child processes, the constant for this one (read when ray was imported).
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        num_cpus=driver.ray_num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        object_store_memory=driver.ray_object_store_bytes,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        configure_logging=True,
    )


def _actor_capacity(settings: Settings) -> int:
    """How many actors the cluster's resources can host in total (GPUs when it has them)."""
    resources = _cluster_resources()
    workers = settings.workers
    if resources.get("GPU", 0) > 0 and settings.model.device != "cpu":
        return int(resources["GPU"] / workers.gpu_fraction + 1e-9)
    return int(resources.get("CPU", 0) / workers.cpus + 1e-9)


def _cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())
