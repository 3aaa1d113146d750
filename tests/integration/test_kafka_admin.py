"""The driver's broker-side views against the real three-node cluster: the topics it creates are
replicated as the cluster's operator configured them, and the group's lag is measured through
the death of any one broker."""

from __future__ import annotations

import contextlib
import uuid

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from pipelines.kafka_tools.admin import LagProbe, ensure_topics, remove_run
from pipelines.kafka_tools.broker import LocalCluster
from schemas.settings import KafkaSettings
from tests.integration.support import wait_until


def _settings(cluster: LocalCluster) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=tuple(cluster.bootstrap.split(",")))


def _replicas(cluster: LocalCluster, topic: str) -> list[int]:
    admin = KafkaAdminClient(**cluster.client_config())  # type: ignore[arg-type]
    try:
        (described,) = admin.describe_topics([topic])
        return [len(p["replica_nodes"]) for p in described["partitions"]]
    finally:
        admin.close()


def test_created_topics_get_the_clusters_default_replication_factor(kafka_cluster: LocalCluster) -> None:
    kafka = _settings(kafka_cluster)
    topic = f"test-rf-{uuid.uuid4().hex[:10]}"

    assert ensure_topics(kafka, {topic: 2}) == [topic]

    # default.replication.factor=3 on every node of the test cluster. The node that answers may
    # not know the new topic's partitions yet (metadata reaches the nodes one by one).
    replicas = wait_until(lambda: _replicas(kafka_cluster, topic), 30, "the new topic's partitions")
    assert replicas == [3, 3]


def _committed_total(probe: LagProbe) -> int | None:
    try:
        return probe.measure().total_committed
    except KafkaError:
        return None


def _committed_total_of_a_live_group(probe: LagProbe, member: KafkaConsumer, offsets: dict) -> int | None:
    """The probe's measure of a group that keeps committing, as a running pipeline does every batch.
    A coordinator newly elected for an idle group was seen to answer "nothing committed" for over a
    minute (twice in about fifty coordinator kills here, never on demand), which a pipeline's next
    commit would have replaced; what is tested is the probe finding the new coordinator."""
    with contextlib.suppress(KafkaError):  # no coordinator yet
        member.commit(offsets, timeout_ms=2000)
    return _committed_total(probe)


def test_lag_is_measured_again_after_the_group_coordinator_dies(kafka_cluster: LocalCluster) -> None:
    kafka = _settings(kafka_cluster)
    suffix = uuid.uuid4().hex[:10]
    topic, group = f"test-lag-{suffix}", f"test-lag-group-{suffix}"
    ensure_topics(kafka, {topic: 2})
    producer = KafkaProducer(**kafka.client_config())
    for i in range(10):
        producer.send(topic, value=b"x", partition=i % 2)
    producer.close()
    member = KafkaConsumer(**kafka.client_config(), group_id=group, enable_auto_commit=False)
    offsets = {TopicPartition(topic, 0): OffsetAndMetadata(3, "", -1)}
    member.commit(offsets)
    probe = LagProbe(kafka, topic, group)
    coordinator = kafka_cluster.group_coordinator(group)
    try:
        assert probe.measure().by_partition == {0: 2, 1: 5}
        kafka_cluster.kill(coordinator)
        # The group moves once the controller fences the dead node (broker.session.timeout.ms, 9 s).
        wait_until(
            lambda: _committed_total_of_a_live_group(probe, member, offsets) == 3,
            60,
            f"a measure with node {coordinator} dead",
        )
    finally:
        member.close()
        probe.close()
        kafka_cluster.restart(coordinator)


def test_a_runs_topics_and_groups_are_removed_and_nothing_else(broker: str) -> None:
    """``remove_run`` deletes ``name``'s topics and groups (``name.*``, ``name-*``), leaves a
    topic that only starts with the same letters, and reports a group with a member rather than
    raising."""
    kafka = KafkaSettings(bootstrap_servers=(broker,))
    name = f"test-run-{uuid.uuid4().hex[:8]}"
    ours, other = [f"{name}.tweets", f"{name}-eo.labeled"], f"{name}x.tweets"
    ensure_topics(kafka, {topic: 1 for topic in [*ours, other]})
    admin = KafkaAdminClient(bootstrap_servers=broker)
    live = KafkaConsumer(
        f"{name}.tweets", bootstrap_servers=broker, group_id=f"{name}-live", enable_auto_commit=False
    )
    try:
        admin.alter_group_offsets(name, {TopicPartition(f"{name}.tweets", 0): OffsetAndMetadata(0, "", -1)})
        wait_until(lambda: (live.poll(timeout_ms=200), live.assignment())[1], 30, "the live member's join")

        removed = remove_run(kafka, name)

        assert (removed.topics, removed.groups) == (2, 1)
        assert len(removed.problems) == 1 and removed.problems[0].startswith(f"group {name}-live:")
        wait_until(lambda: not set(ours) & set(admin.list_topics()), 30, "the topics' deletion")
        assert other in admin.list_topics()
        groups = {g["group_id"] for g in admin.list_groups()}
        assert name not in groups and f"{name}-live" in groups
    finally:
        live.close()
        with contextlib.suppress(KafkaError):
            admin.delete_topics([other])
        admin.close()
        remove_run(kafka, name)
