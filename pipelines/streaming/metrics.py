"""The driver's Prometheus endpoint: its view of the pipeline, read at scrape time.

Nothing is pushed into metric objects as the pipeline runs: ``PipelineCollector.collect`` reads
what the driver publishes (``pipelines/streaming/view.py``) when Prometheus scrapes: its last
``DriverView``, whose actors carry their last ``ActorReport`` (already fetched by the driver's
tick), and its ``CountedStats``. A scrape never calls an actor and never blocks the driver.
Actor counters are cumulative per actor; the counts of actors that retired or died are folded
into the driver's retired totals, and a scrape reads the live and the folded counts at one instant
(``Driver.counted_stats``), so the ``*_total`` series never go backwards while actors come and go.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import psutil
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from workers.loop import LATENCY_BUCKETS_S

if TYPE_CHECKING:
    from pipelines.streaming.view import CountedStats, DriverView, Totals
    from workers.report import ActorReport


class Observed(Protocol):
    """What the collector reads from a driver (``pipelines.streaming.driver.Driver``): only what it
    publishes."""

    @property
    def last_view(self) -> DriverView | None: ...

    def counted_stats(self) -> CountedStats: ...


_PREFIX = "clstream"


class PipelineCollector(Collector):
    """Metric families from one driver. Safe to call from the HTTP server's thread: it only reads
    immutable snapshots (the view is frozen; each actor's stats dict is replaced, never mutated)."""

    def __init__(self, driver: Observed) -> None:
        self._driver = driver

    def collect(self) -> Iterator[Any]:
        view = self._driver.last_view
        # The actors that have answered, as of the driver's last tick.
        actors = {a.name: a.report for a in view.actors if a.report is not None} if view is not None else {}

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
        yield _actor_info(view)
        yield GaugeMetricFamily(
            f"{_PREFIX}_actors_desired",
            "Actor count the autoscaler wants",
            value=view.desired if view is not None else 0,
        )
        decisions = CounterMetricFamily(
            f"{_PREFIX}_scaling_decisions",
            "Scaling decisions that changed the actor count",
            labels=["direction"],
        )
        decisions.add_metric(["up"], view.scaled_up if view is not None else 0)
        decisions.add_metric(["down"], view.scaled_down if view is not None else 0)
        yield decisions
        stalls = CounterMetricFamily(
            f"{_PREFIX}_stalls", "Stalled partitions found by the watchdog (their owners were replaced)"
        )
        stalls.add_metric([], view.stalls_total if view is not None else 0)
        yield stalls

        counted = self._driver.counted_stats()
        totals = counted.totals
        for read_total, name, doc in _TOTALS:
            total = CounterMetricFamily(f"{_PREFIX}_{name}", doc)
            total.add_metric([], read_total(totals))
            yield total
        yield _dead_letters_by_class(totals)
        restarts = CounterMetricFamily(
            f"{_PREFIX}_actor_restarts",
            "Actors replaced after they failed, died or stopped answering, by slot",
            labels=["slot"],
        )
        for slot, count in sorted(counted.restarts_by_slot.items()):
            restarts.add_metric([str(slot)], count)
        yield restarts

        for read, name, doc, kind in _PER_ACTOR:
            family: Any = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                f"{_PREFIX}_{name}", doc, labels=["actor"]
            )
            for actor, report in sorted(actors.items()):
                value = read(report)
                if value is not None:
                    family.add_metric([actor], float(value))
            yield family

        batch_size = GaugeMetricFamily(
            f"{_PREFIX}_batch_records_mean", "Mean records per committed batch", labels=["actor"]
        )
        for actor, report in sorted(actors.items()):
            if report.counters is not None and report.counters.batches:
                batch_size.add_metric([actor], report.counters.consumed / report.counters.batches)
        yield batch_size

        yield _latency_histogram(totals)
        yield GaugeMetricFamily(
            f"{_PREFIX}_driver_resident_bytes",
            "Resident memory of the driver process",
            value=psutil.Process().memory_info().rss,
        )


#: Pipeline totals: how to read each from the summed counters, its name and its help.
_TOTALS: tuple[tuple[Callable[[Totals], int], str, str], ...] = (
    (lambda t: t.consumed, "records_consumed", "Records consumed and committed"),
    (lambda t: t.classified, "records_produced", "Labeled records produced to the output topic"),
    (lambda t: t.dead_lettered, "records_dead_lettered", "Records produced to the dead-letter topic"),
    (
        lambda t: t.delivery_failures,
        "delivery_failures",
        "Batch delivery attempts that failed (retried, or the batch is read again)",
    ),
    (
        lambda t: t.commit_failures,
        "commit_failures",
        "Offset commits that failed (the batches are committed later or read again)",
    ),
    (
        lambda t: t.unreadable,
        "unreadable_records",
        "Records the consumer could not read (codec, checksum, header or size), moved past",
    ),
)


def _loop(read: Callable[[Any], float | int | bool]) -> Callable[[ActorReport], float | None]:
    """A per-actor reading of the loop's counters: none until the actor's loop exists."""
    return lambda report: None if report.counters is None else float(read(report.counters))


#: Per-actor series: how to read each from an actor's report (None: no sample), name, help, type.
_PER_ACTOR: tuple[tuple[Callable[[ActorReport], float | None], str, str, str | None], ...] = (
    (
        _loop(lambda c: c.inflight_tokens),
        "inflight_tokens",
        "Estimated tokens polled but not yet committed",
        None,
    ),
    (_loop(lambda c: c.inflight_batches), "inflight_batches", "Batches polled but not yet committed", None),
    (
        _loop(lambda c: c.paused),
        "partitions_paused",
        "1 while the actor's credit is spent and its partitions paused",
        None,
    ),
    (_loop(lambda c: c.pauses), "pauses", "Times the actor paused its partitions", "counter"),
    (_loop(lambda c: c.resumes), "resumes", "Times the actor resumed its partitions", "counter"),
    (
        _loop(lambda c: c.revocations),
        "partition_revocations",
        "Rebalances that took partitions from the actor",
        "counter",
    ),
    (lambda r: r.rss_bytes, "actor_resident_bytes", "Resident memory of the actor process", None),
    (lambda r: r.padding_efficiency, "padding_efficiency", "Real tokens / computed tokens", None),
)


def _actor_info(view: DriverView | None) -> GaugeMetricFamily:
    """Prometheus "info" style: 1 per actor, what is known about it in the labels. ``node`` and
    ``gpu_ids`` (Ray's, comma-separated) are empty and ``device`` is ``unknown`` until the actor
    answers; ``device`` is torch's (``cpu``, ``cuda:0``) once its model is loaded."""
    info = GaugeMetricFamily(
        f"{_PREFIX}_actor_info",
        "1 per actor; labels: its state, Ray node id, Ray GPU ids and torch device",
        labels=["actor", "slot", "state", "node", "gpu_ids", "device"],
    )
    for seen in view.actors if view is not None else ():
        placement = seen.placement
        labels = [seen.name, str(seen.slot), seen.state, placement.node_id or "", ",".join(placement.gpu_ids)]
        info.add_metric([*labels, seen.device], 1)
    return info


def _dead_letters_by_class(totals: Totals) -> CounterMetricFamily:
    family = CounterMetricFamily(
        f"{_PREFIX}_dead_letters",
        "Records produced to the dead-letter topic, by error class",
        labels=["error_class"],
    )
    for error_class, count in sorted(totals.dead_letters_by_class.items()):
        family.add_metric([error_class], count)
    return family


def _latency_histogram(totals: Totals) -> HistogramMetricFamily:
    counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
    for i, count in enumerate(totals.latency_counts):
        counts[i] += count
    cumulative, buckets = 0, []
    for bound, count in zip([*map(str, LATENCY_BUCKETS_S), "+Inf"], counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return HistogramMetricFamily(
        f"{_PREFIX}_end_to_end_latency_seconds",
        "Input record timestamp to output acknowledged",
        buckets=buckets,
        sum_value=totals.latency_sum_s,
    )


class MetricsServer:
    """``/metrics`` for one driver, served on a daemon thread until ``close()``."""

    def __init__(self, driver: Observed, host: str, port: int) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(PipelineCollector(driver))
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        #: The bound port (``port=0`` asks for a free one).
        self.port = int(self._server.server_port)

    def close(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(driver: Observed, host: str, port: int) -> MetricsServer:
    """Serve ``/metrics`` for ``driver`` on a daemon thread; ``.port`` is the bound port."""
    return MetricsServer(driver, host, port)
