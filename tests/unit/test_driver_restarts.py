"""The driver's restart bookkeeping tick by tick, with a fake clock and Ray scripted out: a
crash-looping slot backs off while another slot runs, and its replacements keep its slot."""

from __future__ import annotations

from typing import Any

from pipelines.streaming.driver import Driver, _Member
from schemas.settings import Settings

LIFETIME_S = 5.0  # slot 0's actors: running 5 s after they start, then failed (a poison record)


class _ScriptedDriver(Driver):
    """Actors are not created: each slot-0 actor fails ``LIFETIME_S`` after its spawn, others run."""

    def __init__(self, settings: Settings) -> None:
        self.now = 0.0
        super().__init__(settings, clock=lambda: self.now)
        self.launched: list[tuple[float, str, int]] = []

    def _launch(self, name: str, slot: int) -> Any:
        self.launched.append((self.now, name, slot))
        return None

    def _kill(self, member: _Member) -> None:
        pass

    def _observe(self, member: _Member, now: float) -> None:
        failed = member.slot == 0 and now - member.spawned_at >= LIFETIME_S
        member.state = "failed" if failed else "running"
        member.last = {"state": member.state, "consumed": 10, "error": "ValueError" if failed else None}


def _driver() -> _ScriptedDriver:
    driver = _ScriptedDriver(Settings.load(overrides={"driver": {"stall_timeout_s": None}}))
    driver._spawn()
    driver._spawn()
    return driver


def test_a_crash_looping_slot_backs_off_while_another_slot_runs():
    driver = _driver()
    for second in range(60):
        driver.now = float(second)
        driver.tick()
    # Slot 0's actors fail 5 s after each start: the first is replaced at once, the next ones
    # after 2, 4, 8, 16 s; slot 1's actor running all along resets nothing.
    assert [(at, slot) for at, _, slot in driver.launched] == [
        (0.0, 0),
        (0.0, 1),
        (5.0, 0),
        (12.0, 0),
        (21.0, 0),
        (34.0, 0),
        (55.0, 0),
    ]
    assert driver.restarts_by_slot == {0: 5}
    assert driver.counted_stats().restarts_by_slot == {0: 5}
    assert sorted(m.slot for m in driver.members.values()) == [0, 1]


def test_a_slot_waiting_out_its_back_off_is_not_given_to_a_new_actor():
    driver = _driver()
    for second in range(11):  # slot 0 fails at 5 s (restarted at once) and at 10 s (due at 12 s)
        driver.now = float(second)
        driver.tick()
    assert driver._due_spawns == {0: 12.0}
    newcomer = driver._spawn()  # e.g. the autoscaler scaling up during the back-off
    assert newcomer.slot == 2
