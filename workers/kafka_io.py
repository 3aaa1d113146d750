"""Kafka behind two narrow interfaces: a ``Source`` of raw records and a ``Sink`` that delivers.

The loop only sees these protocols; ``workers.testing`` has in-memory versions for unit tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError

from schemas.dlq import DlqHeader
from schemas.errors import CommitError, DeliveryError
from schemas.settings import Settings
from workers.records import OutboundRecord, RawRecord

Partition = tuple[str, int]

#: A little lingering lets one poll's worth of results share a few produce requests.
_LINGER_MS = 5


class Source(Protocol):
    """Records from the input topic, as a member of the consumer group. Not thread-safe."""

    def poll(self, timeout_ms: int, max_records: int) -> list[RawRecord]:
        """Up to ``max_records`` records in offset order per partition; blocks at most ``timeout_ms``."""
        ...

    def commit(self, next_offsets: Mapping[Partition, int]) -> None:
        """Synchronously commit, per partition, the offset of the next record to read.

        Raises ``CommitError``: ``retriable`` while the group rebalances (commit again after the
        next poll), not retriable once the partitions belong to another member."""
        ...

    def seek(self, offsets: Mapping[Partition, int]) -> None:
        """Re-read from these offsets on the next poll (used to retry an undelivered batch)."""
        ...

    def close(self) -> None:
        """Leave the group. Called at most once."""
        ...


class Sink(Protocol):
    """Writes to the output and dead-letter topics. Not thread-safe."""

    def deliver(self, records: Sequence[OutboundRecord], timeout_s: float) -> None:
        """Send every record and block until all are acknowledged; raise ``DeliveryError`` otherwise."""
        ...

    def close(self) -> None: ...


class KafkaSource:
    def __init__(self, settings: Settings, client_id: str) -> None:
        self._consumer = KafkaConsumer(
            settings.topics.input,
            **{**settings.kafka.client_config(), "client_id": client_id},
            group_id=settings.topics.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.workers.max_batch_records,
            session_timeout_ms=settings.workers.session_timeout_ms,
            # Kafka's advice: heartbeat at most a third of the session timeout.
            heartbeat_interval_ms=min(3_000, settings.workers.session_timeout_ms // 3),
            max_poll_interval_ms=settings.workers.max_poll_interval_ms,
            # KIP-429: a member joining or leaving moves only the partitions that change owner;
            # the others keep consuming instead of stopping for a stop-the-world rebalance.
            partition_assignment_strategy=(CooperativeStickyAssignor,),
            # The consumer owns no deserializer: the loop needs the exact bytes for the DLQ.
            key_deserializer=None,
            value_deserializer=None,
        )

    def poll(self, timeout_ms: int, max_records: int) -> list[RawRecord]:
        fetched = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        return [
            RawRecord(
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                key=r.key,
                value=r.value,
                headers=list(r.headers or []),
                timestamp_ms=r.timestamp,
            )
            for records in fetched.values()
            for r in records
        ]

    def commit(self, next_offsets: Mapping[Partition, int]) -> None:
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(off, "", -1) for (t, p), off in next_offsets.items()
        }
        try:
            self._consumer.commit(offsets)
        except RebalanceInProgressError as exc:
            raise CommitError(
                "the group is rebalancing; commit again after the next poll", retriable=True
            ) from exc
        except CommitFailedError as exc:
            raise CommitError(
                f"this member lost its partitions before committing: {exc}", retriable=False
            ) from exc

    def seek(self, offsets: Mapping[Partition, int]) -> None:
        assigned = self._consumer.assignment()
        for (topic, partition), offset in offsets.items():
            tp = TopicPartition(topic, partition)
            if tp in assigned:  # a partition revoked meanwhile is re-read by its new owner from the commit
                self._consumer.seek(tp, offset)

    def assignment(self) -> list[Partition]:
        return sorted((tp.topic, tp.partition) for tp in self._consumer.assignment())

    def close(self) -> None:
        # autocommit=False: every commit is explicit, made only after delivery.
        self._consumer.close(autocommit=False)


class KafkaSink:
    def __init__(self, settings: Settings, client_id: str) -> None:
        self._producer = KafkaProducer(
            **{**settings.kafka.client_config(), "client_id": client_id},
            acks="all",
            enable_idempotence=True,
            linger_ms=_LINGER_MS,
            retries=2**31 - 1,
            # kafka-python insists on delivery_timeout > linger + request_timeout.
            delivery_timeout_ms=max(
                int(settings.workers.produce_timeout_s * 1000),
                settings.kafka.request_timeout_ms + _LINGER_MS + 1_000,
            ),
        )

    def deliver(self, records: Sequence[OutboundRecord], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            futures = [
                self._producer.send(r.topic, key=r.key, value=r.value, headers=list(r.headers) or None)
                for r in map(producible, records)
            ]
            self._producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaError as exc:
            raise DeliveryError(
                f"could not send {len(records)} records: {type(exc).__name__}: {exc}"
            ) from exc
        failures = _failures(futures)
        if failures:
            first = failures[0]
            raise DeliveryError(
                f"{len(failures)} of {len(records)} records were not acknowledged within {timeout_s:.0f}s "
                f"(first: {type(first).__name__}: {first})"
            )

    def close(self) -> None:
        self._producer.close(timeout=5)


def producible(record: OutboundRecord) -> OutboundRecord:
    """``record`` in a form kafka-python's producer accepts, with what it had to change recorded.

    Kafka allows a record whose key and value are both null, and null header values, and a
    consumer hands them over as such; kafka-python's ``send`` refuses both (``ValueError``,
    ``TypeError``), so copying such a record to the DLQ would crash the actor on every retry.
    The copy carries ``b""`` in their place and a ``clstream.source.nulls`` header naming them
    (``key``, ``header:<index>``), so the original is still exactly recoverable.
    """
    nulls = [f"header:{i}" for i, (_, value) in enumerate(record.headers) if value is None]
    if record.key is None and record.value is None:
        nulls.insert(0, "key")
    if not nulls:
        return record
    headers = [(name, b"" if value is None else value) for name, value in record.headers]
    return OutboundRecord(
        record.topic,
        b"" if "key" in nulls else record.key,
        record.value,
        [*headers, (DlqHeader.SOURCE_NULLS.value, ",".join(nulls).encode())],
    )


def _failures(futures: Iterable[Any]) -> list[BaseException]:
    failures: list[BaseException] = []
    for future in futures:
        if not future.is_done:
            failures.append(TimeoutError("no acknowledgement from the broker"))
        elif future.failed():
            failures.append(future.exception)
    return failures
