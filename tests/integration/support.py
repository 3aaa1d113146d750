"""Helpers for tests against the real broker and real Ray (fixtures live in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from pipelines.kafka_tools.admin import ensure_topics
from pipelines.kafka_tools.records_io import produce_values, read_topic
from pipelines.streaming.driver import Driver
from schemas.settings import KafkaSettings, Settings
from workers.kafka_io import KafkaSink, KafkaSource, KafkaTransactionalSink
from workers.loop import ClassifierLoop
from workers.testing import KeywordClassifier

#: Every malformed shape the spine must dead-letter (issue 2's list plus a few close cousins).
BAD_VALUES: list[bytes | None] = [
    b'{"id": "x", "text": "truncated',
    b'{"id": "x", "text": "ok"} trailing garbage',
    b"\xff\xfe\x00 not utf-8",
    None,  # tombstone
    b"",
    b"[1, 2, 3]",
    b'{"id": "x"}',
    b'{"id": "x", "text": null}',
    b'{"id": "x", "text": 12}',
    b'{"id": "x", "text": "   "}',
]


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.25) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


@contextlib.contextmanager
def running_pipeline(settings: Settings, partitions: int) -> Iterator[Driver]:
    """A started driver (topics, actors, metrics); drained on the way out, whatever happened."""
    driver = Driver(settings)
    try:
        driver.start(input_partitions=partitions)
        yield driver
    finally:
        driver.drain()


def step_until(loop: Any, done: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Run ``loop.step()`` (one batch through to its commit) until ``done()``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        loop.step()


def topic_size(kafka: KafkaSettings, topic: str) -> int:
    consumer = KafkaConsumer(**kafka.client_config(), group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        return sum(consumer.end_offsets([TopicPartition(topic, p) for p in partitions]).values())
    finally:
        consumer.close()


def read_all(kafka: KafkaSettings, topic: str) -> list[tuple[int, int, bytes | None, bytes | None, list]]:
    """Every record of ``topic``, duplicates included, once nothing new has come for 3 s.

    No cap on the count: an at-least-once run may legitimately repeat up to the in-flight credit
    (1,024 records per crash by default), and a reader that stopped early would report as lost
    whatever it did not reach."""
    return list(read_topic(kafka, topic, idle_timeout_s=3.0))


def pipeline_settings(bootstrap: str, names: dict[str, str], **sections: dict[str, Any]) -> Settings:
    overrides: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": names,
        # 6 s is the broker's minimum: a killed member is noticed quickly.
        "workers": {"count": 2, "cpus": 1, "session_timeout_ms": 6_000},
        "driver": {"watch_interval_s": 0.5, "health_timeout_s": 60},
        # A free port per driver: tests never collide with each other or with a real driver.
        "metrics": {"port": 0},
    }
    for section, values in sections.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return Settings.load(overrides=overrides)


def produce_tweets(
    settings: Settings, tweets: list[tuple[str, str]], bad: list[bytes | None], partitions: int = 4
) -> None:
    """Create the input topic and produce ``tweets`` (id, text) with ``bad`` values interleaved."""
    ensure_topics(settings.kafka, {settings.topics.input: partitions})
    pairs: list[tuple[bytes | None, bytes | None]] = [
        (tid.encode(), json.dumps({"id": tid, "text": text}).encode()) for tid, text in tweets
    ]
    step = max(1, len(pairs) // (len(bad) + 1))
    for i, value in enumerate(bad):
        pairs.insert((i + 1) * step + i, (f"bad-{i}".encode(), value))
    produce_values(settings.kafka, settings.topics.input, iter(pairs))  # type: ignore[arg-type]


def keyword_loop(settings: Settings, client_id: str) -> ClassifierLoop:
    """A real Kafka source and sink (transactional in exactly-once mode, its id from ``client_id``)
    around the keyword classifier: the loop without a model, for tests of the Kafka path."""
    sink: KafkaSink | KafkaTransactionalSink
    if settings.workers.delivery == "exactly-once":
        sink = KafkaTransactionalSink(settings, client_id, f"{settings.topics.group_id}-{client_id}")
    else:
        sink = KafkaSink(settings, client_id=client_id)
    return ClassifierLoop(KafkaSource(settings, client_id=client_id), sink, KeywordClassifier(), settings)


def topics_and_groups(broker: str, prefix: str) -> set[str]:
    """The broker's topics and consumer groups whose names start with ``prefix``."""
    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        names = set(admin.list_topics()) | {g["group_id"] for g in admin.list_groups()}
        return {name for name in names if name.startswith(prefix)}
    finally:
        admin.close()
