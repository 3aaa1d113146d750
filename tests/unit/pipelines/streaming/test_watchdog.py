"""The stall watchdog, tick by tick: when a partition counts as stalled, and whom it replaces."""

from __future__ import annotations

import pytest

from pipelines.streaming.watchdog import MemberActivity, StallWatch

TIMEOUT = 60.0


def _member(
    name: str,
    partitions: set[int] | None,
    progressed_at: float = 0.0,
    paused: bool = False,
    inflight: int = 0,
    running: bool = True,
    spawned_at: float = 0.0,
    unfinished: int | None = None,
) -> MemberActivity:
    return MemberActivity(
        name=name,
        running=running,
        progressed_at=progressed_at,
        paused=paused,
        inflight_batches=inflight,
        assignment=frozenset(partitions) if partitions is not None else None,
        spawned_at=spawned_at,
        unfinished_batches=unfinished,
    )


def _tick(
    watch: StallWatch, now: float, committed: dict[int, int], lag: dict[int, int], members, settled=True
):
    return watch.observe(now, committed, lag, members, group_settled=settled)


def test_an_idle_owner_of_a_lagging_partition_is_replaced_on_the_tick_the_timeout_is_reached():
    watch = StallWatch(TIMEOUT)
    members = [_member("a", {0, 1}), _member("b", {2, 3})]
    committed, lag = {0: 10, 1: 10, 2: 50, 3: 50}, {0: 0, 1: 0, 2: 300, 3: 200}
    for now in range(0, 60, 2):
        assert _tick(watch, float(now), committed, lag, members) is None
    stall = _tick(watch, 60.0, committed, lag, members)
    assert stall is not None
    assert stall.partitions == (2, 3)
    assert stall.owners == {2: "b", 3: "b"}
    assert stall.replace == ("b",)
    assert stall.lag == {2: 300, 3: 200}
    assert stall.stalled_for_s == 60.0
    # Acted on: the next verdict needs a whole timeout more.
    assert _tick(watch, 62.0, committed, lag, members) is None
    assert _tick(watch, 120.0, committed, lag, members).replace == ("b",)


def test_a_busy_owner_is_never_a_stall_however_long_one_partition_waits():
    watch = StallWatch(TIMEOUT)
    committed, lag = {0: 0, 1: 0}, {0: 5000, 1: 5000}
    for now in range(0, 600, 2):
        # It commits partition 1 all the time; partition 0 waits behind it.
        committed = {0: 0, 1: now * 10}
        members = [_member("a", {0, 1}, progressed_at=float(now))]
        assert _tick(watch, float(now), committed, lag, members) is None


@pytest.mark.parametrize("busy", [{"paused": True}, {"inflight": 1}], ids=["paused", "batch in flight"])
def test_an_owner_with_work_in_hand_is_not_idle(busy):
    watch = StallWatch(TIMEOUT)
    members = [_member("a", {0}, **busy)]
    for now in range(0, 300, 2):
        assert _tick(watch, float(now), {0: 0}, {0: 100}, members) is None


def test_partitions_nobody_owns_get_the_oldest_member_replaced():
    watch = StallWatch(TIMEOUT)
    members = [_member("new", {0}, spawned_at=5.0), _member("old", {1}, spawned_at=1.0)]
    committed, lag = {0: 0, 1: 0, 2: 0, 3: 0}, {0: 0, 1: 0, 2: 10, 3: 10}
    assert _tick(watch, 0.0, committed, lag, members) is None
    stall = _tick(watch, 60.0, committed, lag, members)
    assert stall.partitions == (2, 3) and stall.owners == {2: None, 3: None}
    assert stall.replace == ("old",)


def test_an_offset_that_moves_restarts_its_clock():
    watch = StallWatch(TIMEOUT)
    members = [_member("a", {0})]
    assert _tick(watch, 0.0, {0: 0}, {0: 100}, members) is None
    assert _tick(watch, 50.0, {0: 20}, {0: 80}, members) is None
    assert _tick(watch, 100.0, {0: 20}, {0: 80}, members) is None
    assert _tick(watch, 110.0, {0: 20}, {0: 80}, members).replace == ("a",)


def test_a_partition_without_lag_is_never_stalled():
    watch = StallWatch(TIMEOUT)
    members = [_member("a", {0})]
    for now in range(0, 300, 10):
        assert _tick(watch, float(now), {0: 100}, {0: 0}, members) is None


@pytest.mark.parametrize(
    "unsettled",
    [
        {"settled": False},
        {"members": [_member("a", {0}), _member("b", set(), running=False)]},
        {"members": [_member("a", None)]},
        {"members": []},
    ],
    ids=["rebalancing or lag not measured", "a member not running", "assignment not reported", "no members"],
)
def test_no_verdict_while_the_group_is_unsettled_and_one_as_soon_as_it_is(unsettled):
    watch = StallWatch(TIMEOUT)
    members = unsettled.get("members", [_member("a", {0})])
    settled = unsettled.get("settled", True)
    for now in range(0, 200, 10):
        assert _tick(watch, float(now), {0: 0}, {0: 100}, members, settled) is None
    # The clock kept running while unsettled: the first settled tick gives the verdict.
    assert _tick(watch, 200.0, {0: 0}, {0: 100}, [_member("a", {0})]).replace == ("a",)


def test_a_non_positive_timeout_is_refused():
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        StallWatch(0)


def test_an_owner_paused_by_batches_that_are_all_finished_but_never_committed_is_replaced():
    # Seen in `clstream bench`: a member stuck half way through a rejoin had its commits refused as
    # "rebalancing" for ten minutes; its four finished batches held the credit, so it stayed paused.
    watch = StallWatch(TIMEOUT)
    stuck = _member("a", {0, 1}, paused=True, inflight=4, unfinished=0)
    assert _tick(watch, 0.0, {0: 0, 1: 0}, {0: 256, 1: 266}, [stuck]) is None
    stall = _tick(watch, 60.0, {0: 0, 1: 0}, {0: 256, 1: 266}, [stuck])
    assert stall.partitions == (0, 1) and stall.replace == ("a",)


def test_an_owner_with_one_batch_still_being_delivered_is_busy_however_long_it_takes():
    # The broker is down: delivery retries, the batch stays unfinished; a replacement would not help.
    watch = StallWatch(TIMEOUT)
    retrying = _member("a", {0}, paused=True, inflight=4, unfinished=1)
    for now in range(0, 300, 2):
        assert _tick(watch, float(now), {0: 0}, {0: 100}, [retrying]) is None
