"""The driver's metrics endpoint and ``clstream status`` reading it: a real HTTP scrape of a driver
whose view is set by hand (no Ray, no broker)."""

from __future__ import annotations

import urllib.request
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from pipelines.commands.status import parse_metrics, render
from pipelines.kafka_tools.admin import GroupLag
from pipelines.streaming.autoscaling import ScalingDecision
from pipelines.streaming.driver import Driver, _Member
from pipelines.streaming.metrics import PipelineCollector, serve_metrics
from pipelines.streaming.view import ActorView, DriverView
from pipelines.streaming.watchdog import Stall
from schemas.settings import Settings
from workers.loop import LATENCY_BUCKETS_S, LoopStats


def _driver() -> Driver:
    driver = Driver(Settings.load(overrides={"metrics": {"port": 0}}))
    stats = LoopStats(
        consumed=90, classified=80, dead_lettered=10, batches=3, inflight_tokens=512, paused=True
    )
    stats.pauses, stats.resumes = 2, 1
    stats.observe_latencies(np.array([0.02, 0.02, 0.3, 7.0]))
    member = _Member(name="classifier-0", handle=None, spawned_at=0.0, state="running")
    member.last = {**stats.snapshot(), "rss_bytes": 300 * 2**20, "padding_efficiency": 0.93}
    driver.members[member.name] = member
    driver.retired_totals.update(consumed=10, classified=10)
    driver.decisions.append(ScalingDecision(at=1.0, current=1, desired=2, wanted=2, reason="lag"))
    driver.stalls.append(
        Stall(partitions=(0,), lag={0: 60}, owners={0: None}, stalled_for_s=61, replace=("x",))
    )
    driver.last_view = DriverView(
        at=1.0,
        actors=(ActorView(name="classifier-0", state="running"),),
        lag=GroupLag(end={0: 100, 1: 50}, committed={0: 40, 1: 50}),
        replaced_total=0,
    )
    return driver


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_a_scrape_shows_lag_totals_backpressure_and_latency():
    port = serve_metrics(_driver(), "127.0.0.1", 0)
    status = parse_metrics(_scrape(port))

    assert status.lag_by_partition == {"0": 60.0, "1": 0.0}
    assert status.actors_by_state == {"running": 1.0}
    assert status.desired == 2.0
    # Retired actors' counts stay in the totals.
    assert status.totals == {"consumed": 100.0, "produced": 90.0, "dead_lettered": 10.0}
    actor = status.per_actor["classifier-0"]
    assert actor["partitions_paused"] == 1.0 and actor["inflight_tokens"] == 512.0
    assert actor["pauses"] == 2.0 and actor["resumes"] == 1.0
    assert actor["batch_records_mean"] == 30.0 and actor["padding_efficiency"] == 0.93
    assert actor["actor_resident_bytes"] == 300 * 2**20
    assert status.latency_buckets[-1] == (float("inf"), 4.0)
    assert status.latency_quantile(0.5) == 0.025 and status.latency_quantile(0.99) == 10.0
    assert status.driver_rss > 0


def test_a_scrape_counts_the_stalls_the_watchdog_acted_on():
    port = serve_metrics(_driver(), "127.0.0.1", 0)
    assert "\nclstream_stalls_total 1.0\n" in _scrape(port)


def test_latency_observations_land_in_their_buckets():
    stats = LoopStats()
    stats.observe_latencies(np.array([0.0, 0.01, 0.011, 1000.0]))
    assert stats.latency_counts[0] == 2  # le=0.01 holds 0.0 and exactly 0.01
    assert stats.latency_counts[1] == 1
    assert stats.latency_counts[len(LATENCY_BUCKETS_S)] == 1  # slower than the last bound: +Inf
    assert sum(stats.latency_counts) == 4


def test_status_renders_every_actor_and_partition():
    from rich.console import Console

    port = serve_metrics(_driver(), "127.0.0.1", 0)
    console = Console(width=160, record=True)
    console.print(render(parse_metrics(_scrape(port)), {"consumed": 12.5}))
    text = console.export_text()
    assert "classifier-0" in text and "1 running (desired 2)" in text
    assert "12.5/s" in text and "p50 <= 0.025s, p99 <= 10s" in text


_FAILURE_SAMPLES = (
    "clstream_delivery_failures_total",
    "clstream_commit_failures_total",
    "clstream_unreadable_records_total",
    "clstream_dead_letters_total",
    "clstream_records_dead_lettered_total",
    "clstream_actor_restarts_total",
)


def _failure_samples(driver: Driver) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(driver))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name in _FAILURE_SAMPLES
    }


class _DriverWithoutRay(Driver):
    def _kill(self, member: _Member) -> None:
        pass  # no actor behind the member


def _actor(name: str, slot: int, **stats: Any) -> _Member:
    member = _Member(name=name, handle=None, spawned_at=0.0, slot=slot, state="running")
    member.last = {"state": "running", **stats}
    return member


def test_failure_counters_and_dead_letters_by_class_never_go_back_when_actors_are_replaced():
    driver = _DriverWithoutRay(Settings.load(overrides={"metrics": {"port": 0}}))
    first = _actor(
        "classifier-0",
        0,
        dead_lettered=6,
        delivery_failures=3,
        commit_failures=1,
        unreadable=2,
        dead_letters_by_class={"InvalidJson": 4, "Unreadable": 2},
    )
    retiring = _actor("classifier-1", 1, dead_lettered=1, dead_letters_by_class={"SchemaError": 1})
    driver.members[first.name] = first
    driver._retiring[retiring.name] = (retiring, None)  # draining: its counts still count
    before = _failure_samples(driver)
    assert before == {
        ("clstream_delivery_failures_total", ()): 3.0,
        ("clstream_commit_failures_total", ()): 1.0,
        ("clstream_unreadable_records_total", ()): 2.0,
        ("clstream_records_dead_lettered_total", ()): 7.0,
        ("clstream_dead_letters_total", (("error_class", "InvalidJson"),)): 4.0,
        ("clstream_dead_letters_total", (("error_class", "SchemaError"),)): 1.0,
        ("clstream_dead_letters_total", (("error_class", "Unreadable"),)): 2.0,
    }

    first.state = "failed"
    driver._replace(first, now=10.0)
    assert _failure_samples(driver) == {**before, ("clstream_actor_restarts_total", (("slot", "0"),)): 1.0}

    # Its replacement counts from 0 again; the totals carry on from where they were.
    second = _actor("classifier-2", 0, delivery_failures=1, dead_letters_by_class={"InvalidJson": 1})
    driver.members[second.name] = second
    after = _failure_samples(driver)
    assert after[("clstream_delivery_failures_total", ())] == 4.0
    assert after[("clstream_dead_letters_total", (("error_class", "InvalidJson"),))] == 5.0
    assert after[("clstream_unreadable_records_total", ())] == 2.0


def test_actors_without_per_class_or_unreadable_counts_export_zero_and_no_classes():
    driver = Driver(Settings.load(overrides={"metrics": {"port": 0}}))
    member = _actor("classifier-0", 0, dead_lettered=5, delivery_failures=2, commit_failures=0)
    driver.members[member.name] = member
    assert _failure_samples(driver) == {
        ("clstream_delivery_failures_total", ()): 2.0,
        ("clstream_commit_failures_total", ()): 0.0,
        ("clstream_unreadable_records_total", ()): 0.0,
        ("clstream_records_dead_lettered_total", ()): 5.0,
    }
