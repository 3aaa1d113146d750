"""The soak's judgements, from numbers alone: duplicate bound, flat memory, kills, outages, report."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

import pytest

from pipelines.commands.cli import build_parser, settings_from_args
from pipelines.soak.rules import (
    Candidate,
    FlatnessWindows,
    ReaderCount,
    Timeout,
    count_copies,
    delivery_timeout_ms,
    duplicate_bound,
    flatness_windows,
    kills_planned,
    memory_flat,
    outage_plan,
    outage_timeouts,
    pick_victim,
    soak_checks,
    soak_markdown,
    sweep_markdown,
)
from schemas.settings import Settings, WorkerSettings

MB = 1024**2


# -- duplicate bound ---------------------------------------------------------------------------


def test_the_at_least_once_bound_is_the_in_flight_credit_times_the_members_hit():
    bound = duplicate_bound("at-least-once", WorkerSettings(), members_hit=14)
    assert bound.value == 4 * 256 * 14 == 14_336
    assert bound.formula == "max_inflight_batches 4 × max_batch_records 256 × members hit 14 = 14,336"


def test_the_exactly_once_bound_is_zero_whatever_the_faults():
    bound = duplicate_bound("exactly-once", WorkerSettings(max_batch_records=500), members_hit=14)
    assert (bound.value, bound.formula) == (0, "exactly-once: 0")


# -- flat memory -----------------------------------------------------------------------------------


def test_thirty_minutes_compare_minutes_5_to_15_with_20_to_30():
    assert flatness_windows(1800) == FlatnessWindows(300, (300, 900), (1200, 1800))
    assert flatness_windows(3600) == FlatnessWindows(300, (300, 900), (3000, 3600))


def test_a_short_run_keeps_the_proportions():
    assert flatness_windows(120) == FlatnessWindows(20, (20, 60), (80, 120))


WINDOWS = FlatnessWindows(300, (300, 900), (1200, 1800))


def test_a_late_peak_of_exactly_one_point_one_times_the_early_one_is_flat():
    samples = [(10, 900 * MB), (400, 100 * MB), (1000, 200 * MB), (1500, 110 * MB)]
    verdict = memory_flat("driver", samples, WINDOWS)
    # The warm-up peak (900 MB at 10 s) and the gap between the windows do not count.
    assert (verdict.first_peak_bytes, verdict.last_peak_bytes) == (100 * MB, 110 * MB)
    assert verdict.ok and verdict.ratio == pytest.approx(1.1)


def test_a_late_peak_above_one_point_one_times_the_early_one_is_growth():
    verdict = memory_flat("actor slot 0", [(400, 100 * MB), (1500, 111 * MB)], WINDOWS)
    assert not verdict.ok
    assert verdict.detail == "last-window peak 111 MB vs first-window peak 100 MB (×1.110, at most ×1.1)"


def test_a_window_without_samples_fails_rather_than_passes():
    verdict = memory_flat("actor slot 1", [(400, 100 * MB)], WINDOWS)
    assert (verdict.ok, verdict.ratio, verdict.detail) == (False, None, "no samples in a window")


# -- faults ----------------------------------------------------------------------------------------


def test_kills_fall_every_period_strictly_before_the_end():
    assert kills_planned(1800, 120) == 14
    assert kills_planned(120, 40) == 2
    assert kills_planned(130, 40) == 3
    assert kills_planned(30, 40) == 0


def test_the_victim_is_the_running_actor_in_the_highest_slot():
    actors = [
        Candidate("classifier-0", 0, running=True, consumed=10),
        Candidate("classifier-3", 1, running=True, consumed=5),
        Candidate("classifier-4", 2, running=False, consumed=0),  # still loading its model
    ]
    assert pick_victim(actors) == "classifier-3"
    assert pick_victim([Candidate("classifier-0", 0, running=True, consumed=10)]) == "classifier-0"
    assert pick_victim([Candidate("classifier-5", 1, running=True, consumed=0)]) is None


def test_the_outage_plan_straddles_each_default_timeout():
    timeouts = outage_timeouts(Settings())
    assert [(t.name, t.seconds) for t in timeouts] == [
        ("workers.session_timeout_ms", 30.0),
        ("kafka.request_timeout_ms", 30.0),
        ("producer delivery_timeout_ms", 31.002),
        ("workers.transaction_timeout_ms", 60.0),
        ("driver.health_timeout_s", 30.0),
        ("driver.stall_timeout_s", 60.0),
    ]
    plan = outage_plan(timeouts)
    # 15 s and 15.5 s (half the request and delivery timeouts) are one outage; so are 45 and 46.5 s.
    assert [o.seconds for o in plan] == [15.5, 30.0, 46.5, 90.0]
    assert plan[0].straddles == (
        "0.52 × workers.session_timeout_ms (30 s)",
        "0.52 × kafka.request_timeout_ms (30 s)",
        "0.5 × producer delivery_timeout_ms (31.002 s)",
        "0.52 × driver.health_timeout_s (30 s)",
    )
    assert plan[-1].straddles == (
        "1.5 × workers.transaction_timeout_ms (60 s)",
        "1.5 × driver.stall_timeout_s (60 s)",
    )
    assert not any(o.capped for o in plan)


def test_an_outage_longer_than_the_cap_is_capped_and_says_so():
    plan = outage_plan([Timeout("workers.transaction_timeout_ms", 900.0)], cap_s=120)
    assert [(o.seconds, o.capped) for o in plan] == [(120.0, True)]
    assert plan[0].straddles == ("0.13 × workers.transaction_timeout_ms (900 s)",)


def test_the_delivery_timeout_is_the_one_the_pipeline_producers_get(monkeypatch):
    import workers.kafka_io as kafka_io

    built: dict = {}
    monkeypatch.setattr(kafka_io, "KafkaProducer", lambda **config: built.update(config))
    for settings in (
        Settings(),
        Settings.load(overrides={"workers": {"produce_timeout_s": 90}}),
        Settings.load(overrides={"kafka": {"request_timeout_ms": 5_000}}),
        Settings.load(overrides={"workers": {"producer_linger_ms": 50}}),
        Settings.load(overrides={"workers": {"producer_batch_bytes": 1_000_000}}),
    ):
        kafka_io._producer(settings, "probe")
        assert built["linger_ms"] == settings.workers.producer_linger_ms
        assert built["batch_size"] == settings.workers.producer_batch_bytes
        assert built["delivery_timeout_ms"] == delivery_timeout_ms(settings)
    # A batch never outgrows what the dead-letter topic is said to take.
    kafka_io._producer(Settings.load(overrides={"topics": {"dlq_max_record_bytes": 100_000}}), "probe")
    assert built["batch_size"] == 100_000


# -- the verdict -----------------------------------------------------------------------------------


def test_copies_are_counted_by_id_against_how_often_each_id_was_sent():
    inputs = Counter({"soak-0": 1, "soak-1": 1, "soak-2": 1, "soak-3": 2})
    outputs = Counter({"soak-0": 3, "soak-3": 2, "stranger": 1, None: 1})
    counted = count_copies(inputs, outputs, Counter({"soak-1": 1}))
    assert (counted.input_records, counted.output_records, counted.dlq_records) == (5, 7, 1)
    assert (counted.lost, counted.duplicates, counted.unexpected, counted.unreadable) == (1, 2, 1, 1)


def _readers(lost: int = 0, duplicates: int = 0) -> list[ReaderCount]:
    return [
        ReaderCount("clstream verify", 1000, lost, duplicates),
        ReaderCount("kcat (read_committed)", 1000, lost, duplicates),
    ]


FLAT = memory_flat("driver", [(400, 100 * MB), (1500, 100 * MB)], WINDOWS)


def test_a_clean_run_passes_every_check():
    bound = duplicate_bound("at-least-once", WorkerSettings(), members_hit=2)
    checks = soak_checks(_readers(duplicates=2048), bound, [FLAT], (2, 2))
    assert [c.name for c in checks if not c.ok] == []
    assert len(checks) == 6


@pytest.mark.parametrize(
    ("readers", "kills", "failed"),
    [
        (_readers(lost=1), (2, 2), ["clstream verify: 0 lost", "kcat (read_committed): 0 lost"]),
        (
            _readers(duplicates=2049),
            (2, 2),
            [
                "clstream verify: duplicates within the bound",
                "kcat (read_committed): duplicates within the bound",
            ],
        ),
        (_readers(), (1, 2), ["every planned SIGKILL done"]),
        (
            [ReaderCount("clstream verify", 1000, 0, 0, ("out_of_order=3",))],
            (2, 2),
            ["clstream verify: nothing else wrong"],
        ),
    ],
)
def test_each_failure_fails_its_own_check(readers, kills, failed):
    bound = duplicate_bound("at-least-once", WorkerSettings(), members_hit=2)
    checks = soak_checks(readers, bound, [FLAT], kills)
    assert [c.name for c in checks if not c.ok] == failed


def test_an_exactly_once_run_fails_on_a_single_duplicate():
    bound = duplicate_bound("exactly-once", WorkerSettings(), members_hit=14)
    checks = soak_checks(_readers(duplicates=1), bound, [FLAT], (14, 14))
    assert [c.name for c in checks if not c.ok] == [
        "clstream verify: duplicates within the bound",
        "kcat (read_committed): duplicates within the bound",
    ]


def test_the_reports_render_from_their_json_summaries():
    bound = duplicate_bound("at-least-once", WorkerSettings(), members_hit=2)
    checks = soak_checks(_readers(duplicates=5), bound, [FLAT], (2, 2))
    summary = {
        "command": "clstream soak --minutes 2",
        "delivery": "at-least-once",
        "ok": True,
        "minutes": 2,
        "rate_per_s": 500.0,
        "rate_source": "half of the measured capacity",
        "capacity_per_s": 1000.0,
        "model": "tiny",
        "actors": 2,
        "partitions": 4,
        "kills_done": 2,
        "kills_planned": 2,
        "kill_every_s": 40,
        "replaced": 2,
        "produced": 1000,
        "duplicate_bound": {"formula": bound.formula},
        "windows": {"first": (20, 60), "last": (80, 120)},
        "took_s": 200.0,
        "checks": [asdict(c) for c in checks],
        "readers": [asdict(r) for r in _readers(duplicates=5)],
        "kills": [{"at_s": 40.2, "actor": "classifier-1", "slot": 1, "pid": 7}],
    }
    text = soak_markdown(summary)
    assert text.startswith("# clstream soak, at-least-once: PASSED\n")
    assert "| clstream verify: duplicates within the bound | pass | 5 ≤ max_inflight_batches 4" in text
    assert "| 40 | classifier-1 | 1 | 7 |" in text
    row = {
        "delivery": "exactly-once",
        "outage_s": 46.5,
        "capped": False,
        "straddles": ["1.5 × kafka.request_timeout_ms (30 s)"],
        "first_commit_s": None,
        "caught_up_s": None,
        "replaced": 2,
        "stalls": 0,
        "lost": 0,
        "kcat_lost": 0,
        "duplicates": 0,
        "kcat_duplicates": 0,
        "bound": 0,
        "ok": False,
        "notes": ["classifier-1 failed: CommitError"],
    }
    sweep = sweep_markdown({"command": "c", "ok": False, "timeouts": [], "rows": [row]})
    assert (
        "| exactly-once | 46.5 | 1.5 × kafka.request_timeout_ms (30 s) | none | no | 2 | 0 | 0/0 | 0/0; 0 |"
        in sweep
    )
    assert "**FAIL** | classifier-1 failed: CommitError |" in sweep


def test_soak_flags_leave_the_pipeline_settings_alone():
    args = build_parser().parse_args(["soak", "--delivery", "both", "--workers", "3", "--outage-sweep"])
    assert (args.soak_delivery, args.outage_sweep, args.outage_factors) == ("both", True, (0.5, 1.5))
    settings = settings_from_args(args)
    assert (settings.workers.count, settings.workers.delivery) == (3, "at-least-once")
