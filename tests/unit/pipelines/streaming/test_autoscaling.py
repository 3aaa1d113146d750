"""The scaling policy driven tick by tick with a fake clock (a tick every 2 s)."""

import pytest

from pipelines.streaming.autoscaling import ScalingContext, ScalingState, decide_actor_count
from schemas.settings import AutoscaleSettings

TICK_S = 2.0
CONFIG = AutoscaleSettings(
    min_actors=1, max_actors=4, catch_up_s=60, upscale_delay_s=10, downscale_delay_s=30, smoothing=1.0
)


def _run(loads, current=1, config=CONFIG, partitions=4, capacity=100, actor_rate=100.0):
    """Feed (ingest_rate, total_lag) per tick; apply each decision. Returns [(tick, desired)] of changes."""
    state = ScalingState()
    changes, decisions = [], []
    for tick, (ingest, lag) in enumerate(loads):
        lags = {p: lag // partitions + (1 if p < lag % partitions else 0) for p in range(partitions)}
        context = ScalingContext(
            now=tick * TICK_S,
            current=current,
            lag_by_partition=lags,
            ingest_rate=ingest,
            busy_actor_rates=(actor_rate,) * current,
            capacity=capacity,
        )
        decision, state = decide_actor_count(context, state, config)
        decisions.append(decision)
        if decision.changes:
            changes.append((tick, decision.desired))
            current = decision.desired
    return changes, decisions


def test_backlog_scales_up_exactly_after_the_upscale_delay():
    # 24,000 behind at 100/s per actor: 400/s to catch up in 60 s -> 4 actors.
    changes, decisions = _run([(0.0, 24_000)] * 10)
    assert changes == [(5, 4)]  # wanted from t=0, changed at t=10 s = tick 5
    assert decisions[0].wanted == 4 and decisions[0].desired == 1
    assert decisions[4].reason.startswith("waiting 2s more")


def test_idle_input_scales_down_exactly_after_the_downscale_delay():
    changes, _ = _run([(0.0, 0)] * 20, current=4)
    assert changes == [(15, 1)]  # t=30 s


def test_bounds_cap_at_partitions_max_and_capacity():
    heavy = [(0.0, 10_000_000)] * 8
    assert _run(heavy, partitions=3)[0] == [(5, 3)]
    assert _run(heavy, config=AutoscaleSettings(max_actors=2, upscale_delay_s=10, smoothing=1.0))[0] == [
        (5, 2)
    ]
    changes, decisions = _run(heavy, capacity=2)
    assert changes == [(5, 2)]
    assert decisions[-1].limited_by == "capacity" and decisions[-1].wanted > 2


def test_min_actors_holds_even_with_no_load():
    config = AutoscaleSettings(min_actors=2, max_actors=4, downscale_delay_s=10, smoothing=1.0)
    changes, _ = _run([(0.0, 0)] * 20, current=4, config=config)
    assert changes == [(5, 2)]


def test_oscillating_load_does_not_flap():
    # Ingest swings between 150/s and 50/s every tick: the average needs 1 actor with headroom,
    # the peaks 2. Smoothed, with a longer downscale delay, it settles instead of flapping.
    config = AutoscaleSettings(max_actors=4, upscale_delay_s=10, downscale_delay_s=60, smoothing=0.3)
    loads = [(150.0 if tick % 2 else 50.0, 0) for tick in range(300)]
    changes, _ = _run(loads, current=2, config=config)
    assert len(changes) <= 1


def test_a_blip_shorter_than_the_upscale_delay_changes_nothing():
    loads = [(0.0, 0)] * 3 + [(0.0, 50_000)] * 3 + [(0.0, 0)] * 20
    changes, _ = _run(loads)
    assert changes == []


def test_change_of_direction_restarts_the_wait():
    # Wants 3 for 8 s, then 0 for a while, then 3 again: the second wait starts from scratch.
    loads = [(0.0, 18_000)] * 4 + [(0.0, 0)] * 2 + [(0.0, 18_000)] * 6
    changes, _ = _run(loads)
    assert changes == [(11, 3)]  # wanted again from tick 6 (t=12 s) -> t=22 s = tick 11


def test_decision_logs_its_inputs_once_as_plain_fields():
    _, decisions = _run([(10.0, 600)])
    fields = decisions[0].to_log_fields()
    assert fields["lag"] == 600 and fields["partitions"] == 4 and fields["ingest_rate"] == 10.0
    assert fields["current"] == 1 and fields["desired"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_actors": 3, "max_actors": 2}, "min_actors"),
        ({"smoothing": 0}, "smoothing"),
        ({"downscale_headroom": 1}, "headroom"),
    ],
)
def test_invalid_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AutoscaleSettings(**kwargs)
