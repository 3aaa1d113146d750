"""Topic creation against the real three-node cluster: what the driver creates is replicated as
the cluster's operator configured it."""

from __future__ import annotations

import uuid

from kafka import KafkaAdminClient

from pipelines.broker import LocalCluster
from pipelines.kafka_admin import ensure_topics
from schemas.settings import KafkaSettings


def _replicas(cluster: LocalCluster, topic: str) -> list[int]:
    admin = KafkaAdminClient(**cluster.client_config())  # type: ignore[arg-type]
    try:
        (described,) = admin.describe_topics([topic])
        return [len(p["replica_nodes"]) for p in described["partitions"]]
    finally:
        admin.close()


def test_created_topics_get_the_clusters_default_replication_factor(kafka_cluster: LocalCluster) -> None:
    kafka = KafkaSettings(bootstrap_servers=tuple(kafka_cluster.bootstrap.split(",")))
    topic = f"test-rf-{uuid.uuid4().hex[:10]}"

    assert ensure_topics(kafka, {topic: 2}) == [topic]

    # default.replication.factor=3 on every node of the test cluster.
    assert _replicas(kafka_cluster, topic) == [3, 3]
