"""The restart back-off, failure by failure with a fake clock: each actor slot backs off on its own."""

from __future__ import annotations

from pipelines.streaming.restarts import ActorExit, RestartConfig, SlotHistory, decide_restart

RUNNING_FOR_S = 5.0  # how long a crash-looping actor runs before a poison record kills it
STABLE_AFTER_S = 60.0

CONFIG = RestartConfig(stable_after_s=STABLE_AFTER_S, max_delay_s=60.0)


def _replay(exits):
    """Feed (slot, failed_at, running_since) exits, keeping each slot's history as the driver does.
    Returns [(slot, streak, delay_s)]."""
    histories: dict[int, SlotHistory] = {}
    decisions = []
    for slot, at, running_since in exits:
        ended = ActorExit(slot=slot, at=at, running_since=running_since, state="failed", error="ValueError")
        decision, histories[slot] = decide_restart(ended, histories.get(slot, SlotHistory()), CONFIG)
        decisions.append((decision.slot, decision.streak, decision.delay_s))
    return decisions


def _crash_loop(slot, failures, start=0.0):
    """A slot whose every actor runs RUNNING_FOR_S then dies; each replacement starts when due."""
    exits, now, delay = [], start, 0.0
    for streak in range(1, failures + 1):
        now += delay + RUNNING_FOR_S
        exits.append((slot, now, now - RUNNING_FOR_S))
        delay = 0.0 if streak == 1 else min(60.0, 2.0 ** (streak - 1))
    return exits


def test_a_slot_whose_actors_keep_failing_backs_off_exponentially_up_to_the_cap():
    assert [delay for _, _, delay in _replay(_crash_loop(0, 9))] == [
        0.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
        60.0,
    ]


def test_another_slot_running_or_failing_once_does_not_reset_a_crash_looping_slot():
    poisoned = _crash_loop(0, 5)
    # Slot 1 has run for ten minutes when it fails once, between slot 0's third and fourth failures.
    healthy = (1, poisoned[2][1] + 1.0, poisoned[2][1] + 1.0 - 600.0)
    exits = sorted([*poisoned, healthy], key=lambda e: e[1])
    assert _replay(exits) == [
        (0, 1, 0.0),
        (0, 2, 2.0),
        (0, 3, 4.0),
        (1, 1, 0.0),
        (0, 4, 8.0),
        (0, 5, 16.0),
    ]


def test_the_streak_starts_again_only_once_the_slots_actor_ran_for_the_stable_time():
    failures = _crash_loop(0, 4)
    last = failures[-1][1]
    ran_almost = (0, last + 10 + STABLE_AFTER_S - 0.5, last + 10)
    ran_enough = (0, ran_almost[1] + STABLE_AFTER_S, ran_almost[1])
    assert [(streak, delay) for _, streak, delay in _replay([*failures, ran_almost, ran_enough])] == [
        (1, 0.0),
        (2, 2.0),
        (3, 4.0),
        (4, 8.0),
        (5, 16.0),  # 59.5 s running is not long enough
        (1, 0.0),  # 60 s is: a fresh failure, restarted at once
    ]


def test_an_actor_that_never_ran_counts_as_a_failure_of_its_slot():
    assert _replay([(2, 10.0, None), (2, 40.0, None), (2, 100.0, None)]) == [
        (2, 1, 0.0),
        (2, 2, 2.0),
        (2, 3, 4.0),
    ]


def test_the_decision_logs_slot_streak_delay_and_when_the_restart_is_due():
    ended = ActorExit(slot=3, at=100.0, running_since=95.0, state="failed", error="ValueError: poison")
    decision, history = decide_restart(ended, SlotHistory(streak=2), CONFIG)
    assert history == SlotHistory(streak=3)
    assert decision.restart_at == 104.0
    assert decision.to_log_fields() == {
        "slot": 3,
        "streak": 3,
        "restart_in_s": 4.0,
        "ran_for_s": 5.0,
        "state": "failed",
        "error": "ValueError: poison",
        "reason": "failed after 5s running (< 60s): 3 in a row",
    }
