"""Exactly-once through a replicated cluster while its brokers crash, one at a time.

The pipeline runs on the three-node cluster (``kafka_cluster``: replication factor 3,
``min.insync.replicas`` 2, internal topics included) with ``--delivery exactly-once`` while
numbered tweets are produced. Mid-stream, four nodes are SIGKILLed in turn, each restarted
(and its replicas back in sync) before the next: (a) the leader of an input partition, (b) the
transaction coordinator of the actors' transactional ids, (c) the leader of an output partition,
(d) the consumer group's coordinator (it takes the transactions' offsets, and the driver asks it
for the group's lag). Each outage must not stop the pipeline (two replicas are still in sync),
and at the end a read_committed reader (``pipelines.kafka_tools.verify`` and, independently, kcat) sees every
id exactly once: 0 lost, 0 duplicates.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from pipelines.kafka_tools.admin import LagProbe
from pipelines.kafka_tools.broker import LocalCluster
from pipelines.kafka_tools.records_io import read_topic
from pipelines.kafka_tools.verify import verify_topics
from pipelines.streaming.driver import Driver
from schemas.errors import DeliveryError
from schemas.settings import Settings
from tests.integration.support import pipeline_settings, produce_tweets, wait_until
from tests.integration.test_faults import _wait_for_no_open_transactions
from tests.integration.test_pipeline import _drive_until_done
from tests.integration.test_transactions import _deliver_until_done, _kcat_values
from workers.actor import transactional_id
from workers.kafka_io import KafkaSource, KafkaTransactionalSink
from workers.records import OutboundRecord

PARTITIONS = 3
ACTORS = 2
BATCH = 100
#: Input keeps coming until the last fault is over (~2-3 minutes: a few thousand tweets), so every
#: node dies mid-stream however long the outages before it took.
RATE_PER_S = 25.0
#: Records committed during each outage: the pipeline goes on with a node down.
PROGRESS = 100


class _NumberedProducer:
    """Produces tweets ``n-0``, ``n-1``, ... on a thread at ``rate`` per second until ``finish``,
    idempotently (a leader that dies mid-send costs a retry, never a duplicate input record)."""

    def __init__(self, settings: Settings, rate: float) -> None:
        self.topic, self.rate = settings.topics.input, rate
        self.sent = 0
        self._stop = threading.Event()
        self._producer = KafkaProducer(**settings.kafka.client_config(), acks="all", enable_idempotence=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            i = self.sent
            value = json.dumps({"id": f"n-{i}", "text": f"tweet number {i} is {'good' if i % 2 else 'bad'}"})
            self._producer.send(self.topic, key=f"n-{i}".encode(), value=value.encode())
            self.sent = i + 1
            self._stop.wait(max(0.0, started + self.sent / self.rate - time.monotonic()))
        self._producer.flush()

    def finish(self, timeout_s: float = 120) -> int:
        """Stop producing, wait until every record is acknowledged; returns how many were sent."""
        self._stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the input producer did not finish"
        self._producer.close()
        return self.sent


def _transaction_coordinator(cluster: LocalCluster, driver: Driver) -> int:
    """The node that coordinates most of the running actors' transactional ids (one per slot)."""
    group_id = driver.settings.topics.group_id
    ids = [
        transactional_id(group_id, driver.instance_id, m.slot)
        for m in driver.members.values()
        if m.state == "running"
    ]
    return Counter(cluster.transaction_coordinator(i) for i in ids).most_common(1)[0][0]


def _replication(cluster: LocalCluster, topics: list[str]) -> dict[str, tuple[set[int], str]]:
    """topic -> (replica counts of its partitions, its effective min.insync.replicas)."""
    admin = KafkaAdminClient(**cluster.client_config())  # type: ignore[arg-type]
    try:
        described = {t["name"]: t for t in admin.describe_topics(topics)}
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, configs=["min.insync.replicas"]) for t in topics],
            config_filter="all",  # the effective value, whether the topic's own or the broker's
        )["topic"]
    finally:
        admin.close()
    return {
        t: (
            {len(p["replica_nodes"]) for p in described[t]["partitions"]},
            configs[t]["min.insync.replicas"]["value"],
        )
        for t in topics
    }


def _committed(driver: Driver) -> int:
    return driver.tick().lag.total_committed


def _outage(cluster: LocalCluster, driver: Driver, node: int, fault: str) -> float:
    """SIGKILL ``node``, wait until the pipeline has committed PROGRESS more records without it,
    restart it; returns the seconds the pipeline took to go on."""
    before = _committed(driver)
    cluster.kill(node)
    killed = time.monotonic()
    wait_until(
        # A coordinator's or leader's death costs up to a request timeout plus a transactional
        # producer's re-initialization (60-72 s here alone, more under a loaded make test).
        lambda: _committed(driver) >= before + PROGRESS,
        240,
        f"progress with the {fault} (node {node}) down",
    )
    took = time.monotonic() - killed
    cluster.restart(node)
    return round(took, 1)


def test_exactly_once_survives_sigkilled_partition_leaders_and_coordinators(
    kafka_cluster, ray_cluster, topic_names, tiny_model, report
):
    encoder, head = tiny_model
    names = topic_names()
    settings = pipeline_settings(
        kafka_cluster.bootstrap,
        names,
        # kafka-python 3.0.12 waits this long for a dead transaction coordinator to answer before
        # it looks up the new one (30 s by default): each coordinator death stalls the actors
        # using it that long, and their transactions time out. 10 s keeps the test short.
        kafka={"request_timeout_ms": 10_000},
        model={"encoder": encoder, "head": head},
        # The killed coordinator's open transactions are fenced by the actors' next ones or
        # aborted at this timeout, which bounds how long read_committed readers may wait.
        workers={
            "delivery": "exactly-once",
            "count": ACTORS,
            "max_batch_records": BATCH,
            "transaction_timeout_ms": 20_000,
            # Below it: a transaction still awaited when the broker aborts it for its timeout
            # fences the producer, which stops the actor.
            "produce_timeout_s": 15,
        },
    )
    started = time.monotonic()
    driver = Driver(settings)
    driver.start(input_partitions=PARTITIONS)  # creates the three topics
    topics = [names["input"], names["output"], names["dlq"]]
    assert _replication(kafka_cluster, topics) == {t: ({3}, "2") for t in topics}

    faults = {
        "input partition leader": lambda: kafka_cluster.leader(names["input"], 0),
        "transaction coordinator": lambda: _transaction_coordinator(kafka_cluster, driver),
        "output partition leader": lambda: kafka_cluster.leader(names["output"], 0),
        "group coordinator": lambda: kafka_cluster.group_coordinator(names["group_id"]),
    }
    #: (fault, node killed, seconds until PROGRESS more records were committed with it down)
    victims: list[tuple[str, int, float]] = []
    producer = _NumberedProducer(settings, RATE_PER_S)
    try:
        try:
            wait_until(lambda: _committed(driver) >= PROGRESS, 180, "the pipeline to commit records")
            for fault, find_victim in faults.items():
                node = find_victim()
                victims.append((fault, node, _outage(kafka_cluster, driver, node, fault)))
        finally:
            records = producer.finish()
        _drive_until_done(driver, records, timeout_s=300)
    finally:
        driver.drain()
        kafka_cluster.start()  # a failed test leaves the session's cluster whole

    _wait_for_no_open_transactions(settings)
    verdict = verify_topics(settings.kafka, names["input"], names["output"], names["dlq"], "exactly-once")
    kcat_ids = Counter(
        orjson.loads(v)["id"]
        for v in _kcat_values(kafka_cluster.bootstrap, names["output"], "read_committed")
    )
    report(
        "3-node cluster, leaders and coordinators SIGKILLed",
        delivery="exactly-once",
        records=verdict.input_records,
        faults=len(victims),
        # first word of the fault @ node killed : seconds until the pipeline went on without it
        progress_s=",".join(f"{fault.split()[0]}@{node}:{took}" for fault, node, took in victims),
        lost=verdict.lost,
        duplicates=verdict.duplicates,
        kcat_ids=len(kcat_ids),
        kcat_duplicates=sum(kcat_ids.values()) - len(kcat_ids),
        stalls=len(driver.stalls),
        took_s=round(time.monotonic() - started, 1),
    )
    assert verdict.input_records == records
    assert verdict.lost == 0, verdict.table()
    assert verdict.duplicates == 0, verdict.table()
    assert verdict.unexpected == verdict.mismatched == verdict.unreadable == 0, verdict.table()
    assert set(kcat_ids) == {f"n-{i}" for i in range(records)}, "kcat read_committed: ids lost"
    assert max(kcat_ids.values()) == 1, "kcat read_committed: duplicates"
    assert _kcat_values(kafka_cluster.bootstrap, names["dlq"], "read_committed") == []
    internal = ["__consumer_offsets", "__transaction_state"]
    assert _replication(kafka_cluster, internal) == {t: ({3}, "2") for t in internal}


def test_a_transaction_whose_output_expired_commits_none_of_its_offsets(kafka_cluster, topic_names):
    """kafka-python 3.0.12 treats a record batch that expired (its delivery timeout passed) as a
    retriable failure and leaves the transaction committable; its commit then committed the
    batch's offsets without that output (100 ids lost in the three-node test above). The output
    partition here lives on one node only, which is SIGKILLed while the transaction coordinator
    and the group coordinator (other nodes) go on answering: the batch's records expire, and the
    transaction must abort, not commit. Its retry, once the node is back, delivers it once."""
    names = topic_names()
    settings = pipeline_settings(
        kafka_cluster.bootstrap,
        names,
        # Longer than the controller takes to drop the dead node from the internal topics' ISRs
        # (their writes wait for it until then); the producer's delivery timeout is 16 s.
        kafka={"request_timeout_ms": 15_000},
        workers={"delivery": "exactly-once", "produce_timeout_s": 16},
    )
    produce_tweets(settings, [(f"id-{i}", f"tweet {i}") for i in range(5)], [], partitions=1)
    topic, group_id = names["input"], names["group_id"]
    transactional = f"{group_id}-expiry"
    source = KafkaSource(settings, "expiry-test")
    sink = KafkaTransactionalSink(settings, "expiry-test", transactional)
    probe = LagProbe(settings.kafka, topic, group_id)
    batch = [OutboundRecord(names["output"], b"k", b"the batch's output")]
    killed: int | None = None
    try:
        wait_until(lambda: source.poll(timeout_ms=200, max_records=1) or source.assignment(), 60, "a join")
        metadata = source.group_metadata()
        busy = {
            kafka_cluster.transaction_coordinator(transactional),
            kafka_cluster.group_coordinator(group_id),
        }
        victim = min(set(kafka_cluster.nodes) - busy)
        admin = KafkaAdminClient(**kafka_cluster.client_config())  # type: ignore[arg-type]
        try:
            admin.create_topics(
                [
                    NewTopic(
                        names["output"],
                        replica_assignments={0: [victim]},
                        topic_configs={"min.insync.replicas": "1"},
                    )
                ],
                wait_for_metadata=True,
            )
        finally:
            admin.close()
        killed = victim
        kafka_cluster.kill(victim)
        with pytest.raises(DeliveryError, match="Expiring"):
            sink.deliver_atomically(batch, {(topic, 0): 5}, metadata, timeout_s=40)
        kafka_cluster.restart(victim)
        killed = None
        _deliver_until_done(sink, batch, {(topic, 0): 5}, metadata, timeout_s=120)
        # The coordinator applies a transaction's offsets once its markers are written, a moment
        # after EndTxn returns: a read at once may still see none (a fresh-clone CI read 0 once).
        committed = wait_until(
            lambda: (c := probe.measure().committed).get(0) == 5 and c,
            30,
            "the batch's offset to be committed",
        )
    finally:
        if killed is not None:
            kafka_cluster.restart(killed)
        probe.close()
        source.close()
        sink.close()
    assert committed[0] == 5
    values = [v for _, _, _, v, _ in read_topic(settings.kafka, names["output"], read_committed=True)]
    assert values == [b"the batch's output"], "the batch was lost or committed twice"
