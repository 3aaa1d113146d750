"""The driver's Prometheus endpoint: its view of the pipeline, read at scrape time.

Nothing is pushed into metric objects as the pipeline runs: ``PipelineCollector.collect`` reads
the driver's last ``DriverView`` and the actors' last stats (already fetched by the driver's
tick) when Prometheus scrapes, so a scrape never calls an actor and never blocks the driver.
Actor counters are cumulative per actor; retired actors' counts are folded into the totals so
the ``*_total`` series never go backwards while the pipeline scales.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psutil
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from workers.loop import LATENCY_BUCKETS_S

if TYPE_CHECKING:
    from pipelines.driver import Driver

_PREFIX = "clstream"


class PipelineCollector(Collector):
    """Metric families from one driver. Safe to call from the HTTP server's thread: it only reads
    immutable snapshots (the view is frozen; each actor's stats dict is replaced, never mutated)."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver

    def collect(self) -> Iterator[Any]:
        driver = self._driver
        view = driver.last_view
        actors = {name: member.last for name, member in list(driver.members.items())}

        lag = GaugeMetricFamily(f"{_PREFIX}_consumer_lag", "Records not yet committed", labels=["partition"])
        if view is not None:
            for partition, behind in sorted(view.lag.by_partition.items()):
                lag.add_metric([str(partition)], behind)
        yield lag

        states = GaugeMetricFamily(f"{_PREFIX}_actors", "Classifier actors by state", labels=["state"])
        by_state: dict[str, int] = {}
        for seen in view.actors if view is not None else ():
            by_state[seen.state] = by_state.get(seen.state, 0) + 1
        for state, count in sorted(by_state.items()):
            states.add_metric([state], count)
        yield states
        desired = driver.decisions[-1].desired if driver.decisions else len(driver.members)
        yield GaugeMetricFamily(
            f"{_PREFIX}_actors_desired", "Actor count the autoscaler wants", value=desired
        )
        decisions = CounterMetricFamily(
            f"{_PREFIX}_scaling_decisions",
            "Scaling decisions that changed the actor count",
            labels=["direction"],
        )
        for direction in ("up", "down"):
            decisions.add_metric(
                [direction],
                sum(1 for d in driver.decisions if (d.desired > d.current) == (direction == "up")),
            )
        yield decisions
        stalls = CounterMetricFamily(
            f"{_PREFIX}_stalls", "Stalled partitions found by the watchdog (their owners were replaced)"
        )
        stalls.add_metric([], len(driver.stalls))
        yield stalls

        retired = driver.retired_totals
        for key, name, doc in (
            ("consumed", "records_consumed", "Records consumed and committed"),
            ("classified", "records_produced", "Labeled records produced to the output topic"),
            ("dead_lettered", "records_dead_lettered", "Records produced to the dead-letter topic"),
        ):
            total = CounterMetricFamily(f"{_PREFIX}_{name}", doc)
            total.add_metric([], retired.get(key, 0) + sum(stats.get(key, 0) for stats in actors.values()))
            yield total

        per_actor = (
            ("inflight_tokens", "inflight_tokens", "Estimated tokens polled but not yet committed", None),
            ("inflight_batches", "inflight_batches", "Batches polled but not yet committed", None),
            (
                "paused",
                "partitions_paused",
                "1 while the actor's credit is spent and its partitions paused",
                None,
            ),
            ("pauses", "pauses", "Times the actor paused its partitions", "counter"),
            ("resumes", "resumes", "Times the actor resumed its partitions", "counter"),
            (
                "revocations",
                "partition_revocations",
                "Rebalances that took partitions from the actor",
                "counter",
            ),
            ("rss_bytes", "actor_resident_bytes", "Resident memory of the actor process", None),
            ("padding_efficiency", "padding_efficiency", "Real tokens / computed tokens", None),
        )
        for key, name, doc, kind in per_actor:
            family: Any = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                f"{_PREFIX}_{name}", doc, labels=["actor"]
            )
            for actor, stats in sorted(actors.items()):
                value = stats.get(key)
                if value is not None:
                    family.add_metric([actor], float(value))
            yield family

        batch_size = GaugeMetricFamily(
            f"{_PREFIX}_batch_records_mean", "Mean records per committed batch", labels=["actor"]
        )
        for actor, stats in sorted(actors.items()):
            if stats.get("batches"):
                batch_size.add_metric([actor], stats["consumed"] / stats["batches"])
        yield batch_size

        yield _latency_histogram([*actors.values(), *driver.retired_latency])
        yield GaugeMetricFamily(
            f"{_PREFIX}_driver_resident_bytes",
            "Resident memory of the driver process",
            value=psutil.Process().memory_info().rss,
        )


def _latency_histogram(stats: list[dict[str, Any]]) -> HistogramMetricFamily:
    counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
    total_s = 0.0
    for one in stats:
        for i, count in enumerate(one.get("latency_counts") or ()):
            counts[i] += count
        total_s += one.get("latency_sum_s", 0.0)
    cumulative, buckets = 0, []
    for bound, count in zip([*map(str, LATENCY_BUCKETS_S), "+Inf"], counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return HistogramMetricFamily(
        f"{_PREFIX}_end_to_end_latency_seconds",
        "Input record timestamp to output acknowledged",
        buckets=buckets,
        sum_value=total_s,
    )


def serve_metrics(driver: Driver, host: str, port: int) -> int:
    """Serve ``/metrics`` for ``driver`` on a daemon thread; returns the bound port (``port=0``: a free one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(driver))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
