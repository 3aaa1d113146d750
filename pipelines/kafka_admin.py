"""Broker-side views the driver needs: topic creation and the consumer group's lag."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.errors import BrokerError
from schemas.settings import KafkaSettings


def admin_client(kafka: KafkaSettings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(**kafka.client_config())
    except KafkaError as exc:
        servers = ",".join(kafka.bootstrap_servers)
        raise BrokerError(f"cannot reach Kafka at {servers}: {type(exc).__name__}: {exc}") from exc


def ensure_topics(kafka: KafkaSettings, topics: dict[str, int], timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet (name -> partitions). Returns the ones created."""
    admin = admin_client(kafka)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, partitions, 1) for name, partitions in topics.items() if name not in existing
        ]
        if missing:
            # Created concurrently by another driver is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing, timeout_ms=int(timeout_s * 1000), wait_for_metadata=True)
        return [t.name for t in missing]
    finally:
        admin.close()


@dataclass(frozen=True)
class GroupLag:
    """Committed position of the group against the log end, per partition of the input topic."""

    end: dict[int, int] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)

    @property
    def by_partition(self) -> dict[int, int]:
        return {p: max(0, end - self.committed.get(p, 0)) for p, end in self.end.items()}

    @property
    def total(self) -> int:
        return sum(self.by_partition.values())

    @property
    def total_end(self) -> int:
        return sum(self.end.values())

    @property
    def total_committed(self) -> int:
        return sum(self.committed.values())


class LagProbe:
    """Reads log-end offsets and the group's committed offsets. Owns two clients; ``close`` them."""

    def __init__(self, kafka: KafkaSettings, topic: str, group_id: str) -> None:
        self.topic = topic
        self.group_id = group_id
        self._admin = admin_client(kafka)
        self._offsets = KafkaConsumer(**kafka.client_config(), group_id=None, enable_auto_commit=False)

    def measure(self) -> GroupLag:
        partitions = self._offsets.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        if not tps:
            return GroupLag()
        end = self._offsets.end_offsets(tps)
        begin = self._offsets.beginning_offsets(tps)
        committed = self._admin.list_group_offsets({self.group_id: tps}).get(self.group_id, {})
        return GroupLag(
            end={tp.partition: off for tp, off in end.items()},
            # No commit yet means the group starts at the log start (auto_offset_reset=earliest).
            committed={
                tp.partition: (
                    committed[tp].offset if tp in committed and committed[tp].offset >= 0 else begin[tp]
                )
                for tp in tps
            },
        )

    def close(self) -> None:
        self._admin.close()
        self._offsets.close()
