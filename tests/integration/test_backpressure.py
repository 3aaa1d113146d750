"""Backpressure against the real broker: a sink the broker itself throttles, and a batch that
stalls in the model for longer than ``max_poll_interval_ms``. Consumption pauses and resumes,
memory stays bounded, nothing is lost or repeated, and the member is never rebalanced out."""

from __future__ import annotations

import threading
import time
from collections import Counter

import orjson
import psutil
import pytest

from pipelines.commands.status import parse_metrics, scrape
from pipelines.kafka_tools.admin import ensure_topics
from pipelines.kafka_tools.broker import LocalBroker
from pipelines.streaming.driver import Driver
from tests.conftest import TEST_BROKER_PORT
from tests.integration.support import pipeline_settings, produce_tweets, read_all, wait_until
from workers.checkpoints import load_classifier
from workers.kafka_io import KafkaSink, KafkaSource
from workers.loop import ClassifierLoop

#: The stated memory caps: while 20,000 records wait, an actor's resident memory grows by less
#: than this over its size when it first reported, and so does the driver's.
ACTOR_GROWTH_CAP = 150 * 2**20
DRIVER_GROWTH_CAP = 100 * 2**20


def test_a_throttled_sink_pauses_consumption_with_bounded_memory_and_loses_nothing(
    broker, ray_cluster, topic_names, tiny_model
):
    encoder, head = tiny_model
    names = topic_names()
    settings = pipeline_settings(
        broker,
        names,
        model={"encoder": encoder, "head": head},
        workers={
            "count": 1,
            "max_batch_records": 200,
            "max_inflight_tokens": 4_096,
            "max_inflight_batches": 4,
        },
    )
    n = 20_000
    tweets = [(f"id-{i}", f"tweet number {i} about nothing in particular") for i in range(n)]
    produce_tweets(settings, tweets, [], partitions=4)
    local = LocalBroker(TEST_BROKER_PORT)
    producer_client = f"{settings.kafka.client_id}-classifier-0"
    # ~300 bytes per labeled record: 20,000 of them take ~30 s at this rate, while the tiny model
    # could classify them in a few seconds, so the sink is the bottleneck the whole time.
    local.set_client_quota(producer_client, 200_000)

    driver = Driver(settings)
    samples: list[dict] = []
    try:
        driver.start(input_partitions=4)
        assert driver.metrics_port is not None
        url = f"http://127.0.0.1:{driver.metrics_port}/metrics"
        driver_rss_start = psutil.Process().memory_info().rss
        stop = threading.Event()

        def sample(view) -> bool:
            status = parse_metrics(scrape(url))
            actor = status.per_actor.get("classifier-0", {})
            if "inflight_tokens" in actor:  # the actor's loop is running (its model is loaded)
                samples.append(
                    actor | {"driver_rss": psutil.Process().memory_info().rss, "lag": view.lag.total}
                )
            return view.lag.end and view.lag.total == 0 and view.consumed_total >= n

        timer = threading.Timer(300, stop.set)
        timer.start()
        try:
            final = driver.run(stop, until=sample)
        finally:
            timer.cancel()
        assert not stop.is_set(), "the backlog was not worked off within 300 s"
    finally:
        local.set_client_quota(producer_client, None)
        driver.drain()

    waiting = [s for s in samples if s["lag"] > 0]
    assert waiting, "no sample was taken while records waited"
    assert any(s.get("partitions_paused") == 1.0 for s in waiting), "consumption never paused"
    last = samples[-1]
    assert last["pauses"] >= 1 and last["resumes"] >= 1
    # Credit is counted before a batch is polled, so in flight never exceeds it by more than one batch.
    peak_tokens = max(s["inflight_tokens"] for s in samples)
    assert peak_tokens <= 4_096 + 200 * settings.model.max_length
    actor_start = samples[0]["actor_resident_bytes"]
    actor_peak = max(s["actor_resident_bytes"] for s in samples)
    driver_peak = max(s["driver_rss"] for s in samples)
    assert actor_peak - actor_start < ACTOR_GROWTH_CAP
    assert driver_peak - driver_rss_start < DRIVER_GROWTH_CAP
    assert last["partition_revocations"] == 0 and final.replaced_total == 0, "a rebalance happened"

    out = read_all(settings.kafka, names["output"])
    ids = Counter(orjson.loads(value)["id"] for _, _, _, value, _ in out)
    assert set(ids) == {tid for tid, _ in tweets}
    assert max(ids.values()) == 1
    print(
        f"\nthrottled sink: {n} records, {len(samples)} samples, pauses={last['pauses']:.0f} "
        f"resumes={last['resumes']:.0f}, peak in-flight tokens={peak_tokens:.0f}, "
        f"actor RSS {actor_start / 2**20:.0f}->{actor_peak / 2**20:.0f} MiB, "
        f"driver RSS growth {(driver_peak - driver_rss_start) / 2**20:.0f} MiB"
    )


class _StallOnce:
    """The real classifier, except that its first batch blocks for ``stall_s``."""

    def __init__(self, inner, stall_s: float) -> None:
        self._inner, self._stall_s = inner, stall_s
        self.stalled = threading.Event()
        self.labels, self.model_id, self.pooling = inner.labels, inner.model_id, inner.pooling

    def classify(self, texts):
        if not self.stalled.is_set():
            self.stalled.set()
            time.sleep(self._stall_s)
        return self._inner.classify(texts)


@pytest.mark.timeout(180)
def test_a_batch_stalled_past_max_poll_interval_causes_no_rebalance(broker, topic_names, tiny_model):
    encoder, head = tiny_model
    names = topic_names()
    settings = pipeline_settings(
        broker,
        names,
        model={"encoder": encoder, "head": head},
        workers={"max_poll_interval_ms": 10_000, "max_batch_records": 100, "max_inflight_batches": 2},
    )
    n = 2_000
    tweets = [(f"id-{i}", f"tweet {i}") for i in range(n)]
    produce_tweets(settings, tweets, [], partitions=2)
    ensure_topics(settings.kafka, {names["output"]: 2, names["dlq"]: 1})  # the driver's job, done here
    stall_s = settings.workers.max_poll_interval_ms / 1000 + 5
    model = settings.model
    classifier = _StallOnce(
        load_classifier(encoder_dir=model.encoder, head_dir=model.head, pooling=model.pooling, device="cpu"),
        stall_s,
    )
    source, sink = KafkaSource(settings, "stall-test"), KafkaSink(settings, "stall-test")
    loop = ClassifierLoop(source, sink, classifier, settings)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(classifier.stalled.is_set, 60, "the first batch to reach the model")
        wait_until(lambda: loop.stats.consumed == n, stall_s + 60, "every record to be committed")
    finally:
        stop.set()
        thread.join(30)
        # Leaving the group on close revokes everything: count only what happened while running.
        revocations, losses = loop.stats.revocations, loop.stats.losses
        source.close()
        sink.close()

    stats = loop.stats
    assert stats.pauses >= 1, "the stalled batch did not spend the credit"
    assert revocations == 0 and losses == 0, "the member was rebalanced during the stall"
    assert stats.commit_failures == 0
    out = read_all(settings.kafka, names["output"])
    ids = Counter(orjson.loads(value)["id"] for _, _, _, value, _ in out)
    assert set(ids) == {tid for tid, _ in tweets} and max(ids.values()) == 1
    print(
        f"\nstalled batch: {stall_s:.0f}s stall > max_poll_interval {settings.workers.max_poll_interval_ms} ms; "
        f"pauses={stats.pauses}, revocations={revocations}, lost={losses}"
    )
