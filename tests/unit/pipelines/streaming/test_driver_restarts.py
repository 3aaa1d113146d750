"""The driver's restart bookkeeping tick by tick, through the in-memory pool and a fake clock: a
crash-looping slot backs off while another slot runs, and its replacements keep its slot."""

from __future__ import annotations

from pipelines.streaming.driver import Driver
from pipelines.streaming.testing import FakeActorPool
from schemas.settings import Settings

LIFETIME_S = 5.0  # slot 0's actors: running 5 s after they start, then failed (a poison record)


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _driver() -> tuple[Driver, FakeActorPool, _Clock]:
    settings = Settings.load(overrides={"driver": {"stall_timeout_s": None}, "metrics": {"enabled": False}})
    pool, clock = FakeActorPool(), _Clock()
    driver = Driver(settings, pool=pool, clock=clock)
    driver._spawn()
    driver._spawn()
    return driver, pool, clock


def _tick(driver: Driver, pool: FakeActorPool, clock: _Clock, now: float) -> list[tuple[float, int]]:
    """Script every actor's answer for ``now``, tick; returns (time, slot) of this tick's spawns."""
    clock.now = now
    for name, member in driver.members.items():
        failed = member.slot == 0 and now - member.spawned_at >= LIFETIME_S
        pool.answer(
            name, "failed" if failed else "running", error="ValueError" if failed else None, consumed=10
        )
    before = len(pool.spawned())
    driver.tick()
    return [(now, slot) for _, slot in pool.spawned()[before:]]


def test_a_crash_looping_slot_backs_off_while_another_slot_runs():
    driver, pool, clock = _driver()
    launched = [(0.0, slot) for _, slot in pool.spawned()]
    for second in range(60):
        launched += _tick(driver, pool, clock, float(second))
    # Slot 0's actors fail 5 s after each start: the first is replaced at once, the next ones
    # after 2, 4, 8, 16 s; slot 1's actor running all along resets nothing.
    assert launched == [(0.0, 0), (0.0, 1), (5.0, 0), (12.0, 0), (21.0, 0), (34.0, 0), (55.0, 0)]
    assert driver.restarts_by_slot == {0: 5}
    assert driver.counted_stats().restarts_by_slot == {0: 5}
    assert sorted(m.slot for m in driver.members.values()) == [0, 1]
    assert [name for name, *_ in pool.calls if name == "kill"] == ["kill"] * 5


def test_a_slot_waiting_out_its_back_off_is_not_given_to_a_new_actor():
    driver, pool, clock = _driver()
    for second in range(11):  # slot 0 fails at 5 s (restarted at once) and at 10 s (due at 12 s)
        _tick(driver, pool, clock, float(second))
    assert driver._due_spawns == {0: 12.0}
    newcomer = driver._spawn()  # e.g. the autoscaler scaling up during the back-off
    assert newcomer.slot == 2
