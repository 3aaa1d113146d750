"""Moving records between files, topics and the terminal: ``clstream produce`` and ``clstream tail``."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from schemas.settings import KafkaSettings


def values_from_file(
    path: Path, text_column: str = "text", id_column: str | None = "id", encoding: str = "utf-8"
) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) pairs. JSONL lines are sent byte for byte (malformed ones too, on purpose);
    CSV rows become JSON objects with ``id`` (the id column, or the row number) and ``text``."""
    if path.suffix in {".jsonl", ".ndjson", ".json"}:
        with open(path, "rb") as handle:
            for line in handle:
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                try:
                    key = str(json.loads(line)["id"]).encode()
                except (ValueError, KeyError, TypeError):
                    key = None
                yield key, line
        return
    if path.suffix == ".csv":
        with open(path, encoding=encoding, newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or text_column not in reader.fieldnames:
                raise ValueError(f"{path} has no {text_column!r} column (columns: {reader.fieldnames})")
            for row_number, row in enumerate(reader, start=1):
                tweet_id = row.get(id_column) if id_column else None
                tweet_id = tweet_id or str(row_number)
                record = {**{k: v for k, v in row.items() if k not in (text_column, id_column)}}
                record.update(id=tweet_id, text=row[text_column])
                yield tweet_id.encode(), json.dumps(record, ensure_ascii=False).encode()
        return
    raise ValueError(f"{path}: expected a .jsonl or .csv file")


def produce_values(
    kafka: KafkaSettings, topic: str, pairs: Iterator[tuple[bytes | None, bytes]], limit: int | None = None
) -> int:
    """Send the pairs to ``topic`` and wait until all are acknowledged. Returns the count."""
    producer = KafkaProducer(**kafka.client_config(), acks="all", linger_ms=10)
    sent = 0
    try:
        futures = []
        for key, value in pairs:
            if limit is not None and sent >= limit:
                break
            futures.append(producer.send(topic, key=key, value=value))
            sent += 1
        producer.flush()
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close()
    return sent


def read_topic(
    kafka: KafkaSettings,
    topic: str,
    idle_timeout_s: float = 5.0,
    max_records: int | None = None,
    from_end: bool = False,
    read_committed: bool = False,
) -> Iterator[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """(partition, offset, key, value, headers) from every partition of ``topic``, without a group.

    From the beginning (or the end) until ``max_records`` or ``idle_timeout_s`` with nothing new.
    ``read_committed``: skip records of aborted (and not yet committed) transactions.
    """
    consumer = KafkaConsumer(
        **kafka.client_config(),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise ValueError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        (consumer.seek_to_end if from_end else consumer.seek_to_beginning)(*tps)
        seen = 0
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_timeout_s:
            batch = consumer.poll(timeout_ms=200)
            if batch:
                idle_since = time.monotonic()
            for records in batch.values():
                for r in records:
                    yield r.partition, r.offset, r.key, r.value, list(r.headers or [])
                    seen += 1
                    if max_records is not None and seen >= max_records:
                        return
    finally:
        consumer.close()
