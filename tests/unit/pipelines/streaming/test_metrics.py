"""The driver's metrics endpoint and ``clstream status`` reading it: a real HTTP scrape of what a
driver publishes, set by hand or driven through the in-memory actor pool (no Ray, no broker)."""

from __future__ import annotations

import dataclasses
import urllib.request
from dataclasses import dataclass

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from pipelines.commands.status import ActorInfo, actor_line, parse_metrics, render
from pipelines.kafka_tools.admin import GroupLag
from pipelines.streaming.driver import Driver
from pipelines.streaming.metrics import PipelineCollector, serve_metrics
from pipelines.streaming.testing import FakeActorPool
from pipelines.streaming.view import ActorView, CountedStats, DriverView, Totals
from schemas.settings import Settings
from workers.actor import loop_counters
from workers.loop import LATENCY_BUCKETS_S, LoopStats
from workers.report import ActorReport, Placement

NODE = "3f2a9c01d4e5b6a7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b"


@dataclass
class _Published:
    """All the collector reads: a driver's last view and its counted stats."""

    last_view: DriverView | None
    counted: CountedStats

    def counted_stats(self) -> CountedStats:
        return self.counted


def _published() -> _Published:
    stats = LoopStats(
        consumed=90, classified=80, dead_lettered=10, batches=3, inflight_tokens=512, paused=True
    )
    stats.pauses, stats.resumes = 2, 1
    stats.observe_latencies(np.array([0.02, 0.02, 0.3, 7.0]))
    report = ActorReport(
        name="classifier-0",
        state="running",
        rss_bytes=300 * 2**20,
        padding_efficiency=0.93,
        counters=loop_counters(stats),
        device="cuda:0",
        placement=Placement(NODE, ("0",)),
    )
    view = DriverView(
        at=1.0,
        actors=(ActorView(name="classifier-0", state="running", report=report),),
        lag=GroupLag(end={0: 100, 1: 50}, committed={0: 40, 1: 50}),
        replaced_total=0,
        stalls_total=1,
        desired=2,
        scaled_up=1,
    )
    retired = Totals(consumed=10, classified=10)
    return _Published(view, CountedStats(live=(report,), retired=retired, restarts_by_slot={}))


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_a_scrape_shows_lag_totals_backpressure_and_latency():
    with serve_metrics(_published(), "127.0.0.1", 0) as server:
        status = parse_metrics(_scrape(server.port))

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
    with serve_metrics(_published(), "127.0.0.1", 0) as server:
        assert "\nclstream_stalls_total 1.0\n" in _scrape(server.port)


def test_latency_observations_land_in_their_buckets():
    stats = LoopStats()
    stats.observe_latencies(np.array([0.0, 0.01, 0.011, 1000.0]))
    assert stats.latency_counts[0] == 2  # le=0.01 holds 0.0 and exactly 0.01
    assert stats.latency_counts[1] == 1
    assert stats.latency_counts[len(LATENCY_BUCKETS_S)] == 1  # slower than the last bound: +Inf
    assert sum(stats.latency_counts) == 4


def test_status_renders_every_actor_and_partition():
    from rich.console import Console

    console = Console(width=160, record=True)
    with serve_metrics(_published(), "127.0.0.1", 0) as server:
        console.print(render(parse_metrics(_scrape(server.port)), {"consumed": 12.5}))
    text = console.export_text()
    assert "classifier-0" in text and "1 running (desired 2)" in text
    assert "12.5/s" in text and "p50 <= 0.025s, p99 <= 10s" in text
    assert "classifier-0 · running · node 3f2a9c01… · GPU 0 · device cuda:0" in text


def test_a_scrape_says_where_each_actor_runs_and_on_what_device():
    published = _published()
    assert published.last_view is not None
    answered = dataclasses.replace(published.last_view.actors[0], slot=1)
    pending = ActorView(name="classifier-1", state="pending", slot=2)
    published.last_view = dataclasses.replace(published.last_view, actors=(answered, pending))
    with serve_metrics(published, "127.0.0.1", 0) as server:
        text = _scrape(server.port)
    status = parse_metrics(text)

    assert (
        'clstream_actor_info{actor="classifier-0",device="cuda:0",gpu_ids="0",'
        f'node="{NODE}",slot="1",state="running"}} 1.0'
    ) in text
    assert status.actors == {
        "classifier-0": ActorInfo("running", NODE, "0", "cuda:0"),
        "classifier-1": ActorInfo("pending", "", "", "unknown"),
    }
    assert "actor_info" not in status.per_actor["classifier-0"]


@pytest.mark.parametrize(
    ("info", "line"),
    [
        (
            ActorInfo("running", NODE, "0", "cuda:0"),
            "classifier-0 · running · node 3f2a9c01… · GPU 0 · device cuda:0",
        ),
        (
            ActorInfo("running", NODE, "0", "cpu"),
            "classifier-0 · running · node 3f2a9c01… · GPU 0 · device cpu (no CUDA)",
        ),
        (ActorInfo("running", NODE, "", "cpu"), "classifier-0 · running · node 3f2a9c01… · device cpu"),
        (
            ActorInfo("starting", NODE, "2,3", "unknown"),
            "classifier-0 · starting · node 3f2a9c01… · GPUs 2,3 · device unknown",
        ),
        (ActorInfo("pending"), "classifier-0 · pending · device unknown"),
    ],
)
def test_an_actor_line_says_its_node_its_ray_gpus_and_whether_torch_sees_cuda(info, line):
    assert actor_line("classifier-0", info) == line


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


def _driver_on_fake_pool() -> tuple[Driver, FakeActorPool]:
    pool = FakeActorPool()
    driver = Driver(Settings.load(overrides={"metrics": {"port": 0}}), pool=pool, clock=lambda: 10.0)
    return driver, pool


def test_failure_counters_and_dead_letters_by_class_never_go_back_when_actors_are_replaced():
    driver, pool = _driver_on_fake_pool()
    first, retiring = driver._spawn(), driver._spawn()
    pool.answer(
        first.name,
        dead_lettered=6,
        delivery_failures=3,
        commit_failures=1,
        unreadable=2,
        dead_letters_by_class={"InvalidJson": 4, "Unreadable": 2},
    )
    pool.answer(retiring.name, dead_lettered=1, dead_letters_by_class={"SchemaError": 1})
    driver.tick()
    pool.drains_finish = False
    driver._retire(retiring)  # draining: its counts still count
    driver.tick()
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

    pool.die(first.name)
    driver.tick()
    assert _failure_samples(driver) == {**before, ("clstream_actor_restarts_total", (("slot", "0"),)): 1.0}

    # Its replacement counts from 0 again; the totals carry on from where they were.
    (second,) = [m for m in driver.members.values() if m.slot == 0]
    pool.answer(second.name, delivery_failures=1, dead_letters_by_class={"InvalidJson": 1})
    driver.tick()
    after = _failure_samples(driver)
    assert after[("clstream_delivery_failures_total", ())] == 4.0
    assert after[("clstream_dead_letters_total", (("error_class", "InvalidJson"),))] == 5.0
    assert after[("clstream_unreadable_records_total", ())] == 2.0


def test_actors_without_per_class_or_unreadable_counts_export_zero_and_no_classes():
    driver, pool = _driver_on_fake_pool()
    member = driver._spawn()
    pool.answer(member.name, dead_lettered=5, delivery_failures=2, commit_failures=0)
    driver.tick()
    assert _failure_samples(driver) == {
        ("clstream_delivery_failures_total", ()): 2.0,
        ("clstream_commit_failures_total", ()): 0.0,
        ("clstream_unreadable_records_total", ()): 0.0,
        ("clstream_records_dead_lettered_total", ()): 5.0,
    }


def test_an_actor_still_loading_its_model_exports_its_memory_but_no_loop_series():
    driver, pool = _driver_on_fake_pool()
    member = driver._spawn()
    driver.tick()  # it answers "starting": no loop, so no counters yet
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(driver))
    per_actor = {s.name for family in registry.collect() for s in family.samples if "actor" in s.labels}
    assert per_actor == {"clstream_actor_resident_bytes", "clstream_actor_info"}  # where it runs, too
    assert driver.last_view is not None and driver.last_view.actors[0].name == member.name
