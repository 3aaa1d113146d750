"""The driver's Prometheus endpoint: its view of the pipeline, read at scrape time.

Nothing is pushed into metric objects as the pipeline runs: ``PipelineCollector.collect`` reads
the driver's last ``DriverView`` and the actors' last stats (already fetched by the driver's
tick) when Prometheus scrapes, so a scrape never calls an actor and never blocks the driver.
Actor counters are cumulative per actor; the counts of actors that retired or died are folded
into the driver's retired totals, and a scrape reads the live and the folded counts at one instant
(``Driver.counted_stats``), so the ``*_total`` series never go backwards while actors come and go.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import psutil
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from workers.loop import LATENCY_BUCKETS_S

if TYPE_CHECKING:
    from pipelines.streaming.autoscaling import ScalingDecision
    from pipelines.streaming.view import CountedStats, DriverView


class Observed(Protocol):
    """What the collector reads from a driver (``pipelines.streaming.driver.Driver``)."""

    last_view: DriverView | None
    decisions: list[ScalingDecision]
    stalls: list[Any]
    members: dict[str, Any]

    def counted_stats(self) -> CountedStats: ...


_PREFIX = "clstream"


class PipelineCollector(Collector):
    """Metric families from one driver. Safe to call from the HTTP server's thread: it only reads
    immutable snapshots (the view is frozen; each actor's stats dict is replaced, never mutated)."""

    def __init__(self, driver: Observed) -> None:
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

        counted = driver.counted_stats()
        for key, name, doc in (
            ("consumed", "records_consumed", "Records consumed and committed"),
            ("classified", "records_produced", "Labeled records produced to the output topic"),
            ("dead_lettered", "records_dead_lettered", "Records produced to the dead-letter topic"),
            (
                "delivery_failures",
                "delivery_failures",
                "Batch delivery attempts that failed (retried, or the batch is read again)",
            ),
            (
                "commit_failures",
                "commit_failures",
                "Offset commits that failed (the batches are committed later or read again)",
            ),
            (
                "unreadable",
                "unreadable_records",
                "Records the consumer could not read (codec, checksum, header or size), moved past",
            ),
        ):
            total = CounterMetricFamily(f"{_PREFIX}_{name}", doc)
            total.add_metric([], counted.retired.get(key, 0) + sum(s.get(key, 0) for s in counted.live))
            yield total
        yield _dead_letters_by_class(counted)
        restarts = CounterMetricFamily(
            f"{_PREFIX}_actor_restarts",
            "Actors replaced after they failed, died or stopped answering, by slot",
            labels=["slot"],
        )
        for slot, count in sorted(counted.restarts_by_slot.items()):
            restarts.add_metric([str(slot)], count)
        yield restarts

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

        yield _latency_histogram([*counted.live, *counted.retired_latency])
        yield GaugeMetricFamily(
            f"{_PREFIX}_driver_resident_bytes",
            "Resident memory of the driver process",
            value=psutil.Process().memory_info().rss,
        )


def _dead_letters_by_class(counted: CountedStats) -> CounterMetricFamily:
    by_class = dict(counted.retired_dead_letters_by_class)
    for stats in counted.live:
        for error_class, count in (stats.get("dead_letters_by_class") or {}).items():
            by_class[error_class] = by_class.get(error_class, 0) + count
    family = CounterMetricFamily(
        f"{_PREFIX}_dead_letters",
        "Records produced to the dead-letter topic, by error class",
        labels=["error_class"],
    )
    for error_class, count in sorted(by_class.items()):
        family.add_metric([error_class], count)
    return family


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


def serve_metrics(driver: Observed, host: str, port: int) -> int:
    """Serve ``/metrics`` for ``driver`` on a daemon thread; returns the bound port (``port=0``: a free one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(driver))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
