"""The pipeline column of ``clstream bench``: Driver + Ray actors, Kafka topic to Kafka topic, over
the pre-loaded tweets, then the same running pipeline at a steady load of half its measured rate."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
from rich.progress import Progress

from pipelines.bench.phases import (
    BenchError,
    CpuMeter,
    ModelWork,
    latencies_ms,
    percentile_ms,
    produce_at_rate,
    read_outputs,
    read_records,
    throughput_from_outputs,
)
from pipelines.bench.plan import BenchPlan
from pipelines.bench.result import Column, Latency, PipelineColumn
from schemas.settings import Settings


def pipeline_column(
    progress: Progress,
    settings: Settings,
    texts: list[str],
    plan: BenchPlan,
    offered_rate: float,
    label: str = "clstream pipeline",
) -> PipelineColumn:
    """The pipeline over the pre-loaded ``texts``, then its latency at ``offered_rate`` tweets/s
    (half the bare loop's rate in this run)."""
    from pipelines.streaming.driver import Driver

    total = len(texts)
    task = progress.add_task(f"{label} ({settings.workers.delivery})", total=total)
    driver = Driver(settings)
    meter = CpuMeter()
    started = {"consuming": False}

    def until(view: Any) -> bool:
        if not started["consuming"] and (view.running > 0 or view.lag.total_committed > 0):
            started["consuming"] = True
            meter.start()
        progress.update(task, completed=min(total, view.lag.total_committed))
        return view.lag.total_end >= total and view.lag.total == 0

    try:
        driver.start(input_partitions=plan.partitions)
        _run_until(driver, until, timeout_s=600, what="the pipeline to classify the pre-loaded tweets")
        meter.stop()
        efficiency = _pipeline_padding(driver)
        work = _model_work(driver, total)
        outputs = read_outputs(settings.kafka, settings.topics.output, total)
        rate = throughput_from_outputs(outputs)
        stalls = len(driver.stalls)  # a replaced actor's wait is inside the measured time
        latency = _latency(progress, driver, settings, texts, offered_rate, plan.latency_s)
    finally:
        driver.drain()
    # The actors' model work over all tweets, against the time all of them take at the measured rate.
    tokens_per_s, busy = work.per_second(total / rate.tweets_per_s)
    column = Column(rate.tweets_per_s, meter.cpu_percent, meter.gpu_percent, efficiency, tokens_per_s, busy)
    return PipelineColumn(column, stalls, latency, settings.workers.delivery)


def _model_work(driver: Any, total: int, timeout_s: float = 10.0) -> ModelWork:
    """Real tokens and model seconds summed over the actors' reports, once they account for
    ``total`` records (reports arrive a tick after they are asked for), or at ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        reports = [m.report for m in driver.members.values() if m.report is not None]
        consumed = sum(r.counters.consumed for r in reports if r.counters is not None)
        if consumed >= total or time.monotonic() > deadline:
            return ModelWork(sum(r.real_tokens for r in reports), sum(r.forward_s for r in reports))
        time.sleep(0.25)
        driver.tick()


def _pipeline_padding(driver: Any, timeout_s: float = 10.0) -> float | None:
    """Real ÷ computed tokens over all actors, from their latest reports. A report is collected on
    a later tick than the one it was asked on, so a short run can end before the first report
    with a batch in it arrives: tick until one does (or ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        values = [m.report.padding_efficiency for m in driver.members.values() if m.report is not None]
        values = [v for v in values if v is not None]
        if values or time.monotonic() > deadline:
            return float(np.mean(values)) if values else None
        time.sleep(0.25)
        driver.tick()


def _latency(
    progress: Progress, driver: Any, settings: Settings, texts: list[str], rate: float, seconds: float
) -> Latency:
    kafka, topics = settings.kafka, settings.topics
    before = driver.tick().lag.total_end
    values = [
        (f"lat-{i}".encode(), json.dumps({"id": f"lat-{i}", "text": text}).encode())
        for i, text in enumerate(texts)
    ]
    task = progress.add_task(f"latency at {rate:.0f} tweets/s", total=int(rate * seconds))
    sent = produce_at_rate(
        kafka, topics.input, values, rate, seconds, lambda n: progress.update(task, completed=n)
    )
    _run_until(
        driver,
        lambda view: view.lag.total_end >= before + sent and view.lag.total == 0,
        timeout_s=300,
        what="the pipeline to catch up with the steady load",
    )
    inputs = read_records(kafka, topics.input, before + sent)
    outputs = read_outputs(kafka, topics.output, before + sent)
    # The first second is the producer's ramp-up, not the steady state.
    samples = latencies_ms(inputs, outputs, "lat-", skip_ms=1000)
    return Latency(rate, samples, percentile_ms(samples, 50), percentile_ms(samples, 99))


def _run_until(driver: Any, until: Any, timeout_s: float, what: str) -> None:
    stop = threading.Event()
    timer = threading.Timer(timeout_s, stop.set)
    timer.start()
    try:
        driver.run(stop, until=until)
    finally:
        timer.cancel()
    if stop.is_set():
        raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}; {_stuck_report(driver)}")


def _stuck_report(driver: Any) -> str:
    """What the group looked like when a phase timed out: each actor's last stats and its
    consumer's own view, and the lag per partition, so a stuck run explains itself."""
    view = driver.last_view
    lag = dict(view.lag.by_partition) if view is not None else {}
    actors = []
    for member in driver.members.values():
        last = member.flat_report()
        actors.append(
            {
                "name": member.name,
                "state": member.state,
                **{
                    key: last.get(key)
                    for key in (
                        "assignment",
                        "consumed",
                        "inflight_batches",
                        "unfinished_batches",
                        "paused",
                        "revocations",
                        "losses",
                        "commit_failures",
                        "last_error",
                    )
                },
            }
        )
    kafka = driver.kafka_state(tuple(driver.members))
    return f"lag by partition {lag}, stalls {len(driver.stalls)}, actors {actors}, consumers {kafka}"
