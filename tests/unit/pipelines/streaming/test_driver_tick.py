"""``Driver.tick`` through the in-memory actor pool, a scripted lag and a clock the test moves:
what the driver asks of the pool and what it publishes, tick by tick (no Ray, no broker)."""

from __future__ import annotations

from typing import Any

import pytest

import pipelines.streaming.driver as driver_module
from pipelines.streaming.driver import Driver
from pipelines.streaming.pool import ActorKind
from pipelines.streaming.testing import FakeActorPool, ScriptedLag
from schemas.settings import Settings

CLASSIFIER = ActorKind.CLASSIFIER


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def topics_created(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, int]]:
    """``start`` asks for its topics here instead of a broker."""
    asked: list[dict[str, int]] = []

    def ensure_topics(kafka: Any, wanted: dict[str, int]) -> list[str]:
        asked.append(dict(wanted))
        return []

    monkeypatch.setattr(driver_module, "ensure_topics", ensure_topics)
    return asked


def _driver(**overrides: Any) -> tuple[Driver, FakeActorPool, ScriptedLag, _Clock]:
    settings = Settings.load(
        overrides={
            "topics": {"input": "in", "output": "out", "dlq": "dlq"},
            "metrics": {"enabled": False},
            "driver": {"stall_timeout_s": None},
            **overrides,
        }
    )
    pool, lag, clock = FakeActorPool(), ScriptedLag(), _Clock()
    return Driver(settings, pool=pool, clock=clock, lag=lag), pool, lag, clock


def _since(pool: FakeActorPool, mark: int) -> list[tuple[Any, ...]]:
    return pool.calls[mark:]


def test_start_spawns_the_configured_actors_and_the_first_tick_publishes_their_reports(topics_created):
    driver, pool, lag, clock = _driver(workers={"count": 2})
    driver.start(input_partitions=2)

    assert topics_created == [{"in": 2, "out": 2, "dlq": 1}]
    assert pool.calls == [
        ("open",),
        ("spawn", "classifier-0", 0, CLASSIFIER),
        ("spawn", "classifier-1", 1, CLASSIFIER),
    ]
    pool.answer("classifier-0", consumed=5, classified=4, dead_lettered=1)
    lag.set(end={0: 10, 1: 10}, committed={0: 5, 1: 10})
    clock.now = 2.0
    view = driver.tick()

    assert [(a.name, a.state, a.slot) for a in view.actors] == [
        ("classifier-0", "running", 0),
        ("classifier-1", "starting", 1),
    ]
    first = view.actors[0]
    assert (first.consumed, first.classified, first.dead_lettered) == (5, 4, 1)
    assert first.report is not None and first.report.placement.node_id == "fake-node-0"
    assert view.lag.by_partition == {0: 5, 1: 0}
    assert (view.consumed_total, view.replaced_total, view.desired, view.decision) == (5, 0, 2, None)
    assert len(pool.calls) == 3, "a tick that finds everyone healthy changes nothing"


def test_a_dead_actor_is_replaced_in_its_slot_and_a_crash_looping_slot_waits_out_its_back_off(
    topics_created,
):
    driver, pool, _, clock = _driver(workers={"count": 1})
    driver.start()
    pool.answer("classifier-0", consumed=30)
    driver.tick()  # t=0: running

    clock.now = 10.0
    pool.die("classifier-0")
    mark = len(pool.calls)
    view = driver.tick()
    # The first failure of a streak restarts at once, in the same slot.
    assert _since(pool, mark) == [("kill", "classifier-0"), ("spawn", "classifier-1", 0, CLASSIFIER)]
    assert [(a.name, a.state, a.slot) for a in view.actors] == [("classifier-1", "pending", 0)]
    assert (view.replaced_total, view.consumed_total) == (1, 30), "a dead actor's counts stay counted"
    assert driver.dead_members == ["classifier-0"] and driver.restarts_by_slot == {0: 1}

    clock.now = 11.0
    pool.answer("classifier-1")
    driver.tick()
    clock.now = 12.0  # dies 1 s after it started running: the second failure in a row, 2 s back-off
    pool.die("classifier-1", error="GetTimeoutError")
    mark = len(pool.calls)
    assert driver.tick().actors == ()
    assert _since(pool, mark) == [("kill", "classifier-1")]

    clock.now = 13.9
    view = driver.tick()
    assert (view.actors, _since(pool, mark)) == ((), [("kill", "classifier-1")]), "no respawn before 14 s"

    clock.now = 14.0
    view = driver.tick()
    assert _since(pool, mark)[1:] == [("spawn", "classifier-2", 0, CLASSIFIER)]
    assert [(a.name, a.state, a.slot) for a in view.actors] == [("classifier-2", "pending", 0)]
    assert view.replaced_total == 2 and driver.restarts_by_slot == {0: 2}


def test_a_stalled_member_is_replaced_in_its_own_slot(topics_created):
    driver, pool, lag, clock = _driver(workers={"count": 2}, driver={"stall_timeout_s": 30})
    driver.start(input_partitions=2)
    lag.set(end={0: 100, 1: 100}, committed={0: 10, 1: 100})
    pool.answer("classifier-0", assignment=(0,), consumed=10)
    pool.answer("classifier-1", assignment=(1,), consumed=90)
    for now in (0.0, 10.0, 20.0, 29.0):
        clock.now = now
        driver.tick()
    assert driver.stalls == []

    clock.now = 31.0  # partition 0 has lag and its owner has not moved for 30 s
    mark = len(pool.calls)
    view = driver.tick()
    assert len(driver.stalls) == 1
    spawned = [call for call in _since(pool, mark) if call[0] == "spawn"]
    assert spawned == [("spawn", "classifier-2", 0, CLASSIFIER)], "the replacement takes slot 0"
    assert sorted((a.name, a.slot) for a in view.actors) == [("classifier-1", 1), ("classifier-2", 0)]


def test_an_actor_that_stops_answering_is_replaced_after_the_health_timeout(topics_created):
    driver, pool, _, clock = _driver(
        workers={"count": 1}, driver={"stall_timeout_s": None, "health_timeout_s": 30}
    )
    driver.start()
    pool.answer("classifier-0")
    driver.tick()
    pool.hang("classifier-0")

    clock.now = 30.0
    assert [(a.name, a.state) for a in driver.tick().actors] == [("classifier-0", "running")]
    clock.now = 30.5
    view = driver.tick()
    assert pool.calls[-2:] == [("kill", "classifier-0"), ("spawn", "classifier-1", 0, CLASSIFIER)]
    assert [a.name for a in view.actors] == ["classifier-1"] and view.replaced_total == 1


def test_a_backlog_scales_up_at_once_and_an_idle_input_scales_down_after_the_delay(topics_created):
    driver, pool, lag, clock = _driver(
        autoscale={
            "enabled": True,
            "min_actors": 1,
            "max_actors": 3,
            "catch_up_s": 10,
            "upscale_delay_s": 0,
            "downscale_delay_s": 4,
            "smoothing": 1.0,
        }
    )
    driver.start()
    assert pool.spawned() == [("classifier-0", 0)], "autoscaling starts from min_actors"
    pool.answer("classifier-0")
    ends = {p: 10_000 for p in range(4)}
    lag.set(end=ends, committed=dict.fromkeys(ends, 0))

    clock.now = 1.0
    mark = len(pool.calls)
    view = driver.tick()
    # 40,000 behind, to be gone in 10 s at 100 records/s per actor: 40 actors, capped at 3.
    assert _since(pool, mark) == [
        ("spawn", "classifier-1", 1, CLASSIFIER),
        ("spawn", "classifier-2", 2, CLASSIFIER),
    ]
    assert view.decision is not None and (view.decision.current, view.decision.desired) == (1, 3)
    assert view.decision.limited_by == "max_actors"
    assert (len(view.actors), view.desired, view.scaled_up, view.scaled_down) == (3, 3, 1, 0)

    pool.answer("classifier-1", consumed=7)
    pool.answer("classifier-2")
    lag.set(end=ends, committed=ends)  # the backlog is gone and nothing new arrives
    clock.now = 2.0
    mark = len(pool.calls)
    view = driver.tick()
    assert view.decision is not None and view.decision.reason.startswith("waiting 4s")
    assert _since(pool, mark) == [] and view.desired == 3

    clock.now = 6.0
    view = driver.tick()
    # The newest two drain; the oldest keeps its warm model and settled partitions.
    assert _since(pool, mark) == [("drain", "classifier-1"), ("drain", "classifier-2")]
    assert [a.name for a in view.actors] == ["classifier-0"]
    assert (view.retiring, view.desired, view.scaled_up, view.scaled_down) == (2, 1, 1, 1)
    assert view.consumed_total == 0, "the view sums its own actors; the retiring still count in the metrics"
    assert sum(r.counters.consumed for r in driver.counted_stats().live if r.counters) == 7

    clock.now = 8.0
    view = driver.tick()
    assert _since(pool, mark)[2:] == [("kill", "classifier-1"), ("kill", "classifier-2")]
    assert (view.retiring, view.consumed_total, len(view.actors)) == (0, 7, 1)
    assert pool.live() == ["classifier-0"]


def test_drain_asks_every_actor_to_finish_then_stops_them_all_and_the_pool(topics_created):
    driver, pool, lag, clock = _driver(workers={"count": 3})
    driver.start()
    pool.answer("classifier-0", consumed=3)
    pool.answer("classifier-1")
    driver.tick()
    pool.hang("classifier-1")  # does not finish in time: stopped all the same
    pool.die("classifier-2")  # nothing left to drain

    mark = len(pool.calls)
    driver.drain()

    names = ("classifier-0", "classifier-1", "classifier-2")
    assert _since(pool, mark) == [
        *[("drain", name) for name in names],
        ("await_reports", names),
        *[("kill", name) for name in names],
        ("close",),
    ]
    assert pool.live() == [] and lag.closed and driver.members == {}
    assert driver.tick().actors == ()


def test_actors_no_node_has_room_for_wait_for_resources_and_are_never_replaced(topics_created):
    driver, pool, _, clock = _driver(
        workers={"count": 2}, driver={"stall_timeout_s": None, "health_timeout_s": 30}
    )
    driver.start()
    pool.actors["classifier-1"].placed = False  # one node with room for one actor
    pool.answer("classifier-0", consumed=5)
    assert [a.state for a in driver.tick().actors] == ["running", "waiting_for_resources"]
    pool.room = False  # the node is lost: the replacement finds no room either
    pool.die("classifier-0", error="ActorDiedError")

    clock.now = 1.0
    mark = len(pool.calls)
    view = driver.tick()
    assert _since(pool, mark) == [("kill", "classifier-0"), ("spawn", "classifier-2", 0, CLASSIFIER)]
    assert [(a.name, a.state) for a in view.actors] == [
        ("classifier-1", "waiting_for_resources"),
        ("classifier-2", "pending"),  # spawned this tick, observed from the next
    ]

    # Far past 4 x the health timeout (the grace of a member that never answered): still waiting,
    # not unresponsive, not replaced; a crash loop would only add churn.
    clock.now = 1_000.0
    mark = len(pool.calls)
    view = driver.tick()
    assert _since(pool, mark) == []
    assert {a.state for a in view.actors} == {"waiting_for_resources"} and view.replaced_total == 1

    # The node returns: both are placed, load their models and run, in their slots.
    pool.place("classifier-1")
    pool.place("classifier-2")
    pool.answer("classifier-1", "starting")
    pool.answer("classifier-2", "starting")
    clock.now = 1_001.0
    assert {a.state for a in driver.tick().actors} == {"starting"}
    pool.answer("classifier-1")
    pool.answer("classifier-2")
    clock.now = 1_002.0
    view = driver.tick()
    assert [(a.name, a.state, a.slot) for a in view.actors] == [
        ("classifier-1", "running", 1),
        ("classifier-2", "running", 0),
    ]
    assert view.replaced_total == 1


def test_a_placed_actor_that_never_answers_is_unresponsive_after_its_grace_counted_from_placement(
    topics_created,
):
    driver, pool, _, clock = _driver(
        workers={"count": 1}, driver={"stall_timeout_s": None, "health_timeout_s": 30}
    )
    pool.room = False
    driver.start()
    driver.tick()
    clock.now = 500.0
    pool.place("classifier-0")
    pool.hang("classifier-0")  # placed, then hangs while loading its model
    assert driver.tick().actors[0].state == "pending"
    clock.now = 500.0 + 4 * 30  # the first answer's grace, from placement, not from spawn
    assert driver.tick().actors[0].state == "pending"
    clock.now += 0.5
    mark = len(pool.calls)
    driver.tick()
    assert _since(pool, mark)[:1] == [("kill", "classifier-0")]


def test_an_elastic_cluster_is_told_the_demand_and_scale_down_cancels_waiting_actors_first(topics_created):
    driver, pool, lag, clock = _driver(
        autoscale={
            "enabled": True,
            "elastic": True,
            "min_actors": 1,
            "max_actors": 3,
            "catch_up_s": 10,
            "upscale_delay_s": 0,
            "downscale_delay_s": 0,
            "smoothing": 1.0,
        }
    )
    driver.start()
    assert pool.calls[:2] == [("open",), ("request_capacity", CLASSIFIER, 1)]
    pool.answer("classifier-0")
    ends = {p: 10_000 for p in range(4)}
    lag.set(end=ends, committed=dict.fromkeys(ends, 0))
    pool.room = False  # the cluster has to grow for more

    clock.now = 1.0
    mark = len(pool.calls)
    view = driver.tick()
    assert _since(pool, mark) == [
        ("request_capacity", CLASSIFIER, 3),
        ("spawn", "classifier-1", 1, CLASSIFIER),
        ("spawn", "classifier-2", 2, CLASSIFIER),
    ]
    clock.now = 2.0
    view = driver.tick()
    assert [a.state for a in view.actors] == ["running", "waiting_for_resources", "waiting_for_resources"]
    assert view.replaced_total == 0

    pool.room = True
    pool.place("classifier-1")
    pool.answer("classifier-1")
    lag.set(end=ends, committed=ends)  # caught up before classifier-2 found a node
    clock.now = 3.0
    mark = len(pool.calls)
    view = driver.tick()
    # Down to 1: the waiting actor is cancelled at once (nothing to drain), then the newest drains.
    assert _since(pool, mark) == [
        ("request_capacity", CLASSIFIER, 1),
        ("kill", "classifier-2"),
        ("drain", "classifier-1"),
    ]
    assert [a.name for a in view.actors] == ["classifier-0"] and view.replaced_total == 0


def test_drain_stops_waiting_actors_at_once_and_an_elastic_driver_withdraws_its_demand(topics_created):
    driver, pool, _, _ = _driver(workers={"count": 2}, autoscale={"elastic": True})
    driver.start()
    pool.actors["classifier-1"].placed = False
    pool.answer("classifier-0")
    assert [a.state for a in driver.tick().actors] == ["running", "waiting_for_resources"]

    mark = len(pool.calls)
    driver.drain()
    # Nothing to finish for the waiting one; a drain would wait out its timeout, and an actor
    # placed meanwhile could join the group and rebalance the others mid-drain.
    assert _since(pool, mark) == [
        ("kill", "classifier-1"),
        ("request_capacity", CLASSIFIER, 0),
        ("drain", "classifier-0"),
        ("await_reports", ("classifier-0",)),
        ("kill", "classifier-0"),
        ("close",),
    ]


def test_a_retiring_actor_whose_drain_answer_was_lost_is_asked_again_until_its_deadline(topics_created):
    driver, pool, lag, clock = _driver(
        autoscale={
            "enabled": True,
            "min_actors": 1,
            "max_actors": 2,
            "upscale_delay_s": 0,
            "downscale_delay_s": 0,
        },
        driver={"stall_timeout_s": None, "drain_timeout_s": 25},
    )
    driver.start()
    pool.answer("classifier-0")
    ends = {p: 10_000 for p in range(4)}
    lag.set(end=ends, committed=dict.fromkeys(ends, 0))
    clock.now = 1.0
    driver.tick()  # scales up to 2
    pool.answer("classifier-1")
    lag.set(end=ends, committed=ends)
    clock.now = 2.0
    driver.tick()  # idle: classifier-1 retires
    assert pool.calls[-1] == ("drain", "classifier-1")

    # What comes back is a health check's "draining" (the drain's own call was lost): not final.
    pool.drains_finish = True
    pool.actors["classifier-1"].draining = False
    pool.answer("classifier-1", "draining", consumed=5)
    clock.now = 3.0
    mark = len(pool.calls)
    assert driver.tick().retiring == 1
    assert _since(pool, mark) == [("drain", "classifier-1")], "asked again, not killed mid-drain"

    # Past its deadline (retired at 2 s, drain_timeout_s 25) any answer is final: a drain that
    # never ends is cut short.
    pool.actors["classifier-1"].draining = False
    clock.now = 27.5
    mark = len(pool.calls)
    assert driver.tick().retiring == 0
    assert _since(pool, mark) == [("kill", "classifier-1")]
