"""Lag-aware autoscaling against the real broker and real Ray: a backlog scales the actors up to
the maximum, an idle input scales them back to the minimum, and the drains lose or repeat nothing."""

from __future__ import annotations

import threading
from collections import Counter

import orjson

from pipelines.streaming.driver import Driver
from tests.integration.support import pipeline_settings, produce_tweets, read_all


def test_backlog_scales_up_to_max_then_idle_scales_down_to_min_exactly_once(
    broker, ray_cluster, topic_names, tiny_model
):
    encoder, head = tiny_model
    names = topic_names()
    settings = pipeline_settings(
        broker,
        names,
        model={"encoder": encoder, "head": head},
        # Half a CPU per actor: 2 CPUs host 4 actors, so max_actors=3 is reachable here.
        workers={"cpus": 0.5},
        autoscale={
            "enabled": True,
            "min_actors": 1,
            "max_actors": 3,
            "catch_up_s": 10,
            "upscale_delay_s": 2,
            "downscale_delay_s": 5,
            "smoothing": 1.0,
        },
    )
    n = 40_000
    tweets = [(f"id-{i}", f"tweet number {i}") for i in range(n)]
    produce_tweets(settings, tweets, [], partitions=4)

    driver = Driver(settings)
    driver.start(input_partitions=4)
    seen_counts: list[int] = []

    def scaled_up_and_back(view) -> bool:
        seen_counts.append(len(view.actors))
        desired = [d.desired for d in driver.decisions]
        return 3 in desired and desired[-1] == 1 and view.lag.total == 0 and view.retiring == 0

    stop = threading.Event()
    timer = threading.Timer(420, stop.set)
    timer.start()
    try:
        final = driver.run(stop, until=scaled_up_and_back)
    finally:
        timer.cancel()
        driver.drain()
    assert not stop.is_set(), (
        f"did not scale up and back down in time: {[d.to_log_fields() for d in driver.decisions]}"
    )

    desired = [d.desired for d in driver.decisions]
    assert desired[0] == 3, "the backlog asks for the maximum at once"
    assert desired[-1] == 1
    assert max(seen_counts) == 3 and len(final.actors) == 1
    first_up = driver.decisions[0]
    assert first_up.inputs["lag"] > 0 and first_up.reason.startswith("scale up")
    assert final.lag.total == 0 and final.lag.total_committed == n
    assert final.replaced_total == 0

    out = read_all(settings.kafka, names["output"])
    ids = Counter(orjson.loads(value)["id"] for _, _, _, value, _ in out)
    assert set(ids) == {tid for tid, _ in tweets}
    duplicated = {i: c for i, c in ids.items() if c > 1}
    assert not duplicated, f"{len(duplicated)} ids were produced more than once across the scale events"
    print(f"decisions: {[(d.current, d.desired, d.reason) for d in driver.decisions]}")
