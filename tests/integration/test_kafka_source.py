"""``KafkaSource`` against the real broker: pausing and resuming never strands a partition.

kafka-python 3.0.12 parks the records it has already parsed for a partition that is paused, and
puts them back only on a poll that has no other partition's records in hand; once any unpaused
partition has been read that never happens again, and the parked partition is never fetched
either. The loop pauses while its credit is spent, and a rebalance can assign new (unpaused)
partitions meanwhile, so without ``workers.kafka_compat.unpark_resumed`` a partition stopped for
good, silently, with its lag growing (seen in the autoscaling test after a scale-down).
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.admin import NewPartitions

from pipelines.kafka_tools.admin import ensure_topics
from tests.integration.support import pipeline_settings
from workers.kafka_io import KafkaSource

PER_PARTITION = 1_000


def test_a_partition_paused_with_records_in_hand_is_read_to_the_end_once_resumed(broker, topic_names):
    names = topic_names()
    settings = pipeline_settings(broker, names)
    topic = names["input"]
    ensure_topics(settings.kafka, {topic: 2})
    producer = KafkaProducer(**settings.kafka.client_config(), acks="all")
    for partition in (0, 1):
        for i in range(PER_PARTITION):
            producer.send(topic, value=f"{partition}-{i}".encode(), partition=partition)
    producer.flush()
    producer.close()

    source = KafkaSource(settings, client_id="park-test")
    offsets: dict[int, list[int]] = {0: [], 1: []}

    def poll() -> list:
        records = source.poll(timeout_ms=300, max_records=10)
        for r in records:
            offsets[r.partition].append(r.offset)
        return records

    try:
        # Read until one partition has records in hand (a fetch returns far more than 10).
        first = None
        for _ in range(100):
            records = poll()
            if records:
                first = records[0].partition
                break
        assert first is not None, "nothing was fetched"
        paused = TopicPartition(topic, first)
        source._consumer.pause(paused)
        for _ in range(10):  # the other partition is read meanwhile
            poll()
        assert offsets[1 - first], "the unpaused partition was read during the pause"
        source._consumer.resume(paused)
        for _ in range(2 * 2 * PER_PARTITION // 10):
            if len(offsets[0]) + len(offsets[1]) == 2 * PER_PARTITION:
                break
            poll()
    finally:
        source.close()

    # Every record of both partitions, once, in order.
    assert offsets[first] == list(range(PER_PARTITION)), f"partition {first} stopped at {len(offsets[first])}"
    assert offsets[1 - first] == list(range(PER_PARTITION))


def test_a_member_that_lost_its_partitions_claims_none_of_them_when_it_rejoins(broker, topic_names):
    """kafka-python's cooperative assignor claims its last assignment at every JoinGroup, even
    after the partitions were lost; a stale claim can leave partitions assigned to nobody (see
    ``tests/unit/workers/test_assignor.py``). Here a real eviction: the member stops polling past
    ``max_poll_interval_ms``, kafka-python leaves the group for it, and it joins again."""
    names = topic_names()
    settings = pipeline_settings(broker, names, workers={"max_poll_interval_ms": 10_000})
    topic = names["input"]
    ensure_topics(settings.kafka, {topic: 4})
    source = KafkaSource(settings, client_id="claims-test")
    assignor = next(iter(source._consumer._coordinator._assignors.values()))
    joins: list[tuple[set[int], set[int]]] = []
    advertise = assignor.metadata

    def recording(topics):
        metadata = advertise(topics)
        claimed = {p for tp in metadata.owned_partitions for p in tp.partitions}
        joins.append((claimed, {tp.partition for tp in source._consumer.assignment()}))
        return metadata

    assignor.metadata = recording
    try:
        for _ in range(100):
            source.poll(timeout_ms=200, max_records=10)
            if len(source.assigned) == 4:
                break
        assert source.assigned == (0, 1, 2, 3)
        time.sleep(13)  # no poll for longer than max_poll_interval_ms: the member is out
        for _ in range(100):
            source.poll(timeout_ms=200, max_records=10)
            if len(joins) >= 2 and len(source.assigned) == 4:
                break
    finally:
        source.close()
    assert len(joins) >= 2, "the member did not join again"
    assert all(claimed == owned for claimed, owned in joins), joins
    assert joins[-1] == (set(), set())  # it rejoined owning, and claiming, nothing
    assert source.assigned == (0, 1, 2, 3)  # and got everything back


def test_a_member_alone_in_a_new_group_joins_it_with_one_rebalance(broker, topic_names, caplog):
    """kafka-python records the subscribed topics' partitions only from a metadata update made
    after ``subscribe``; without ``KafkaSource``'s extra update, the first assignment is made
    against an empty snapshot and the member rejoins as soon as the next update arrives: a
    second rebalance at every start (in ``clstream bench`` that rejoin hung, see docs/kafka-python-notes.md).

    A join completing between ``finish_interrupted_join``'s two reads also made the leader rejoin
    (generation 2 in one CI run; now read under the coordinator's lock). On failure the message
    carries kafka-python's own reasons for each (re)join."""
    caplog.set_level(logging.DEBUG, logger="kafka.coordinator")
    names = topic_names()
    settings = pipeline_settings(broker, names)
    topic = names["input"]
    ensure_topics(settings.kafka, {topic: 4})
    producer = KafkaProducer(**settings.kafka.client_config(), acks="all")
    for i in range(400):
        producer.send(topic, value=f"{i}".encode(), partition=i % 4)
    producer.flush()
    producer.close()

    source = KafkaSource(settings, client_id="one-rebalance")
    assert source.assigned is None  # not "owns nothing": it has not joined yet
    seen = 0
    try:
        # The first poll waits long enough for the whole join. One that times out while its join
        # is still under way leaves the join to ``finish_interrupted_join``, which asks for a
        # rejoin; when that join then completes before the next poll, kafka-python 3.0.12 drops
        # its finished result and joins again (generation 2 in a CI run whose assignment took
        # 0.41 s, longer than a 300 ms poll): docs/kafka-python-notes.md.
        seen += len(source.poll(timeout_ms=10_000, max_records=50))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and seen < 400:
            seen += len(source.poll(timeout_ms=300, max_records=50))
        # Long enough for the metadata refresh that used to trigger the rejoin.
        end = time.monotonic() + 3
        while time.monotonic() < end:
            source.poll(timeout_ms=300, max_records=50)
        generation = source._consumer.group_metadata().generation_id
        assigned = source.assigned
    finally:
        source.close()
    assert seen == 400
    assert assigned == (0, 1, 2, 3)
    reasons = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("kafka.coordinator")
        and ("need_rejoin: True" in r.getMessage() or "joining group" in r.getMessage())
    ]
    assert generation == 1, f"joined with {generation} rebalances, not one: " + " | ".join(reasons)


def test_a_rejoin_for_new_partitions_finishes_even_when_every_poll_times_out_mid_join(broker, topic_names):
    """kafka-python 3.0.12 does not record a rejoin asked for by a metadata change in
    ``rejoin_needed``, and the join task, as leader, clears the other sign of it; a poll that
    times out mid-join (1 ms here; a busy CPU in ``clstream bench``) then never finishes the
    join: the member stays REBALANCING with heartbeats off and every commit is refused. Without
    ``workers.kafka_compat.finish_interrupted_join`` this hangs and fails."""
    names = topic_names()
    settings = pipeline_settings(broker, names, workers={"session_timeout_ms": 6_000})
    topic = names["input"]
    ensure_topics(settings.kafka, {topic: 2})
    source = KafkaSource(settings, client_id="interrupted-join")
    admin = KafkaAdminClient(**settings.kafka.client_config())
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and source.assigned != (0, 1):
            source.poll(timeout_ms=200, max_records=10)
        assert source.assigned == (0, 1)
        admin.create_partitions({topic: NewPartitions(total_count=4)})
        source._consumer.topics()  # a metadata update now: the leader sees two new partitions
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and source.assigned != (0, 1, 2, 3):
            source.poll(timeout_ms=1, max_records=10)
        state = source.diagnostics()["member_state"]
        assigned = source.assigned
    finally:
        admin.close()
        source.close()
    assert assigned == (0, 1, 2, 3), f"stuck with {assigned}, member state {state}"
    assert state == "<stable>"


def test_records_of_aborted_upstream_transactions_are_never_read(broker, topic_names):
    """An upstream transactional producer's aborted records must not be classified, and only
    ``read_committed`` makes a new owner's offset fetch wait for pending transactional offsets."""
    names = topic_names()
    settings = pipeline_settings(broker, names)
    topic = names["input"]
    ensure_topics(settings.kafka, {topic: 1})
    producer = KafkaProducer(
        **settings.kafka.client_config(), transactional_id=f"upstream-{names['group_id']}"
    )
    producer.init_transactions()
    for outcome in ("aborted", "committed"):
        producer.begin_transaction()
        for i in range(5):
            producer.send(topic, value=f"{outcome}-{i}".encode())
        producer.flush()
        producer.abort_transaction() if outcome == "aborted" else producer.commit_transaction()
    producer.close()

    source = KafkaSource(settings, client_id="isolation-test")
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(values) < 5 and time.monotonic() < deadline:
            values += [r.value for r in source.poll(timeout_ms=300, max_records=100)]
        values += [r.value for r in source.poll(timeout_ms=1_000, max_records=100)]
    finally:
        source.close()
    assert values == [f"committed-{i}".encode() for i in range(5)]


def test_partitions_assigned_while_paused_stay_paused_until_resumed(broker, topic_names):
    """The loop pauses every partition while its in-flight credit is spent; a partition that a
    rebalance hands over meanwhile must join the pause, or the credit is bypassed."""
    names = topic_names()
    settings = pipeline_settings(broker, names, workers={"session_timeout_ms": 6_000})
    topic = names["input"]
    ensure_topics(settings.kafka, {topic: 2})
    producer = KafkaProducer(**settings.kafka.client_config(), acks="all")
    for partition in (0, 1):
        for i in range(50):
            producer.send(topic, value=f"{partition}-{i}".encode(), partition=partition)
    producer.flush()
    producer.close()

    first, second = KafkaSource(settings, client_id="pause-a"), KafkaSource(settings, client_id="pause-b")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (first.assigned and second.assigned):
            first.poll(timeout_ms=100, max_records=1)
            second.poll(timeout_ms=100, max_records=1)
        assert first.assigned and second.assigned, "the two members did not share the partitions"
        first.pause_all()
        second.close()  # leaving hands its partition to the paused member
        read_while_paused = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            read_while_paused += first.poll(timeout_ms=200, max_records=100)
        assert first.assigned == (0, 1), "the paused member took over the partition that left"
        assert read_while_paused == []
        first.resume_all()
        deadline = time.monotonic() + 30
        resumed = []
        while time.monotonic() < deadline and not resumed:
            resumed = first.poll(timeout_ms=200, max_records=100)
        assert resumed, "records flow again once resumed"
    finally:
        first.close()


def test_a_poll_that_fails_after_draining_records_returns_none_and_they_are_read_again(
    broker, topic_names, monkeypatch
):
    """A poll drains the records in hand (advancing positions) before it sends the next fetches;
    a broker error raised there returns no records, so the drained ones must be read again, not
    skipped (the source rewinds the positions the failed poll moved)."""
    from kafka.errors import KafkaConnectionError

    names = topic_names()
    settings = pipeline_settings(broker, names)
    topic = names["input"]
    ensure_topics(settings.kafka, {topic: 1})
    producer = KafkaProducer(**settings.kafka.client_config(), acks="all")
    for i in range(10):
        producer.send(topic, value=str(i).encode(), partition=0)
    producer.flush()
    producer.close()

    source = KafkaSource(settings, client_id="rewind-test")
    seen: list[int] = []
    failures: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not seen:  # the first 5 of the 10 records fetched in one response
            assert time.monotonic() < deadline, "nothing was fetched in 60 s"
            seen += [r.offset for r in source.poll(timeout_ms=500, max_records=5)]
        fetcher = source._consumer._fetcher
        send_fetches = fetcher.send_fetches

        def broken_once() -> object:
            if not failures:
                failures.append("raised")
                raise KafkaConnectionError("injected: the broker went away")
            return send_fetches()

        monkeypatch.setattr(fetcher, "send_fetches", broken_once)
        for _ in range(40):
            if len(seen) >= 10:
                break
            seen += [r.offset for r in source.poll(timeout_ms=200, max_records=5)]
    finally:
        source.close()
    assert failures == ["raised"], "the injected error was never met"
    assert seen == list(range(10))
