"""Exactly-once delivery against the real broker: every third transaction is deliberately aborted
after its records are in the log. Aborted output must never be visible to a read_committed reader
(checked with kafka-python and, independently, with kcat/librdkafka), and every id appears once."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from kafka.errors import KafkaTimeoutError
from kafka.future import Future
from kafka.net.compat import KafkaNetClient
from kafka.protocol.producer import ProduceRequest

from pipelines.kafka_tools.admin import LagProbe, ensure_topics
from pipelines.kafka_tools.records_io import read_topic
from schemas.errors import DeliveryError, FencedError, ProducerFencedError
from tests.integration.support import pipeline_settings, produce_tweets, wait_until
from workers.checkpoints import load_classifier
from workers.kafka_io import KafkaSource, KafkaTransactionalSink
from workers.loop import ClassifierLoop
from workers.records import OutboundRecord


class _AbortEveryThird(KafkaTransactionalSink):
    """The real transactional sink, except that every third transaction writes its records to the
    log and is then aborted (as a broker error or a crash before commit would leave it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.aborted = 0

    def deliver_atomically(self, records, next_offsets, group_metadata, timeout_s):
        self.calls += 1
        if self.calls % 3 == 0:
            producer = self._producer
            producer.begin_transaction()
            for r in records:
                producer.send(r.topic, key=r.key, value=r.value, headers=list(r.headers) or None)
            producer.flush(timeout=timeout_s)  # the records are in the log now
            producer.abort_transaction()
            self.aborted += 1
            raise DeliveryError("injected: transaction aborted after its records were written")
        super().deliver_atomically(records, next_offsets, group_metadata, timeout_s)


def _kcat_values(bootstrap: str, topic: str, isolation: str) -> list[bytes]:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat is not installed (Debian package kcat); `make test` installs it")
    result = subprocess.run(
        [
            kcat,
            "-C",
            "-b",
            bootstrap,
            "-t",
            topic,
            "-e",
            "-q",
            "-f",
            "%s\\n",
            "-X",
            f"isolation.level={isolation}",
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return [line for line in result.stdout.split(b"\n") if line]


def test_aborted_transactions_are_never_visible_and_every_id_is_committed_once(
    broker, topic_names, tiny_model
):
    encoder, head = tiny_model
    names = topic_names()
    settings = pipeline_settings(
        broker,
        names,
        model={"encoder": encoder, "head": head},
        workers={"delivery": "exactly-once", "max_batch_records": 100},
    )
    n = 3_000
    tweets = [(f"id-{i}", f"tweet {i}") for i in range(n)]
    produce_tweets(settings, tweets, [b"not json"], partitions=3)
    ensure_topics(settings.kafka, {names["output"]: 3, names["dlq"]: 1})
    model = settings.model
    classifier = load_classifier(
        encoder_dir=model.encoder, head_dir=model.head, pooling=model.pooling, device="cpu"
    )
    source = KafkaSource(settings, "abort-test")
    sink = _AbortEveryThird(settings, "abort-test", transactional_id=f"{names['group_id']}-abort-test")
    loop = ClassifierLoop(source, sink, classifier, settings)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: loop.stats.consumed == n + 1, 180, "every record to be committed")
    finally:
        stop.set()
        thread.join(30)
        source.close()
        sink.close()

    expected = {tid for tid, _ in tweets}
    committed = [v for _, _, _, v, _ in read_topic(settings.kafka, names["output"], read_committed=True)]
    ids = Counter(orjson.loads(v)["id"] for v in committed)
    assert set(ids) == expected and max(ids.values()) == 1, "kafka-python read_committed"
    kcat_ids = Counter(orjson.loads(v)["id"] for v in _kcat_values(broker, names["output"], "read_committed"))
    assert set(kcat_ids) == expected and max(kcat_ids.values()) == 1, "kcat read_committed"
    everything = _kcat_values(broker, names["output"], "read_uncommitted")
    assert len(everything) > n, "the aborted transactions' records are in the log"
    dlq = _kcat_values(broker, names["dlq"], "read_committed")
    assert dlq == [b"not json"]
    print(
        f"\naborted every third transaction: {sink.aborted} aborted of {sink.calls}; "
        f"read_committed sees {len(committed)} (kcat {sum(kcat_ids.values())}), "
        f"read_uncommitted sees {len(everything)}"
    )


@pytest.mark.parametrize("fenced_records", [1, 20_000])
def test_a_fenced_transaction_commits_none_of_its_offsets_with_the_next_one(
    broker, topic_names, fenced_records
):
    """A transaction refused for a stale group generation must leave its offsets uncommitted.

    kafka-python 3.0.12 keeps the refused offsets pending and sends them with the next
    transaction, so the fenced batch's offsets were committed without its output (6,000 tweets,
    an actor SIGKILLed: 256 ids lost). ``KafkaTransactionalSink`` starts each transaction clean.

    The offsets go out before the records. With 20,000 records the refusal arrives while they are
    still being sent, and kafka-python fails the next send with a generic error: the sink must
    still report a fenced batch (read it again), not a delivery failure (retry the stale batch).
    """
    names = topic_names()
    settings = pipeline_settings(broker, names, workers={"delivery": "exactly-once"})
    produce_tweets(settings, [(f"id-{i}", f"tweet {i}") for i in range(20)], [], partitions=2)
    ensure_topics(settings.kafka, {names["output"]: 2, names["dlq"]: 1})
    source = KafkaSource(settings, "fence-test")
    sink = KafkaTransactionalSink(settings, "fence-test", transactional_id=f"{names['group_id']}-fence")
    topic = names["input"]
    probe = LagProbe(settings.kafka, topic, names["group_id"])
    try:
        wait_until(lambda: source.poll(timeout_ms=200, max_records=1) or source.assignment(), 60, "a join")
        current = source.group_metadata()
        stale = current._replace(generation_id=current.generation_id + 7)
        fenced = [OutboundRecord(names["output"], b"k", b"fenced %d" % i) for i in range(fenced_records)]
        with pytest.raises(FencedError):
            sink.deliver_atomically(fenced, {(topic, 0): 10}, stale, timeout_s=30)
        sink.deliver_atomically(
            [OutboundRecord(names["output"], b"k", b"committed output")], {(topic, 1): 3}, current, 30
        )
        committed = probe.measure().committed
    finally:
        probe.close()
        source.close()
        sink.close()
    assert committed[1] == 3
    assert committed[0] == 0, "the fenced transaction's offset was committed by the next one"
    values = [v for _, _, _, v, _ in read_topic(settings.kafka, names["output"], read_committed=True)]
    assert values == [b"committed output"]


class _CommitAcknowledgedLate(KafkaTransactionalSink):
    """The real sink, except that the first commit lands but is acknowledged after the deadline
    (a slow broker, a network blip): the caller sees a timeout for a commit that succeeded."""

    late = 1

    def _await(self, result, deadline, what):
        if what == "commit" and self.late:
            self.late -= 1
            super()._await(result, time.monotonic() + 30, what)  # the commit lands...
            raise KafkaTimeoutError("injected: commit acknowledged after the deadline")  # ...too late
        super()._await(result, deadline, what)


@dataclass
class _OneBatch:
    """A joined member of a fresh group on a one-partition input, a sink, a lag probe and a
    one-record batch whose consumed offset is 5."""

    settings: Any
    sink: Any
    probe: LagProbe
    metadata: Any
    offsets: dict[tuple[str, int], int]
    batch: list[OutboundRecord]

    def committed(self) -> int:
        return self.probe.measure().committed[0]

    def output(self, read_committed: bool = True) -> list[bytes]:
        topic = self.batch[0].topic
        return [v for _, _, _, v, _ in read_topic(self.settings.kafka, topic, read_committed=read_committed)]


@contextlib.contextmanager
def _one_batch(broker, topic_names, name: str, sink_class, kafka=None, **workers) -> Iterator[_OneBatch]:
    names = topic_names()
    settings = pipeline_settings(
        broker, names, kafka=kafka or {}, workers={"delivery": "exactly-once", **workers}
    )
    produce_tweets(settings, [(f"id-{i}", f"tweet {i}") for i in range(5)], [], partitions=1)
    ensure_topics(settings.kafka, {names["output"]: 1, names["dlq"]: 1})
    source = KafkaSource(settings, f"{name}-test")
    sink = sink_class(settings, f"{name}-test", f"{names['group_id']}-{name}")
    probe = LagProbe(settings.kafka, names["input"], names["group_id"])
    try:
        wait_until(lambda: source.poll(timeout_ms=200, max_records=1) or source.assignment(), 60, "a join")
        yield _OneBatch(
            settings,
            sink,
            probe,
            source.group_metadata(),
            {(names["input"], 0): 5},
            [OutboundRecord(names["output"], b"k", b"the batch's output")],
        )
    finally:
        probe.close()
        source.close()
        sink.close()


def test_a_commit_that_timed_out_is_awaited_again_not_redone(broker, topic_names):
    with _one_batch(broker, topic_names, "late-commit", _CommitAcknowledgedLate) as one:
        with pytest.raises(DeliveryError):
            one.sink.deliver_atomically(one.batch, one.offsets, one.metadata, timeout_s=30)
        one.sink.deliver_atomically(one.batch, one.offsets, one.metadata, timeout_s=30)  # the loop's retry
        assert one.committed() == 5
        assert one.output() == [b"the batch's output"], "the batch was committed twice"


class _CommitNeverAcknowledged(KafkaTransactionalSink):
    """The real sink, except that its first commit lands but is never acknowledged (kafka-python
    3.0.12 lost track of a commit whose transaction coordinator was SIGKILLed mid-commit, and the
    actor awaited it for minutes: tests/integration/test_replicated_cluster.py)."""

    def _await(self, result, deadline, what):
        if what == "commit":
            super()._await(result, time.monotonic() + 30, what)  # the commit lands...
            raise KafkaTimeoutError("injected: commit not acknowledged")  # ...the client never hears
        if what == "pending commit":
            time.sleep(max(0.0, min(0.2, deadline - time.monotonic())))
            raise KafkaTimeoutError("injected: commit still not acknowledged")
        super()._await(result, deadline, what)


class _LostResult:
    """The result of a commit request that never reaches the coordinator."""

    def wait(self, timeout_ms=None):
        time.sleep(min(timeout_ms or 0, 200) / 1000)
        return False


class _CommitNeverSent(KafkaTransactionalSink):
    """The real sink, except that its first commit never reaches the coordinator: the transaction
    stays open with its records in the log until the producer is replaced."""

    lost = 1

    def _begin_commit(self, producer):
        if self.lost:
            self.lost -= 1
            return _LostResult()
        return super()._begin_commit(producer)


def _deliver_until_done(sink, batch, offsets, metadata, timeout_s: float = 90) -> int:
    """Retry ``deliver_atomically`` as the loop does until it returns; how many attempts failed."""
    failed, deadline = 0, time.monotonic() + timeout_s
    while True:
        try:
            sink.deliver_atomically(batch, offsets, metadata, timeout_s=3)
            return failed
        except DeliveryError:
            failed += 1
            assert time.monotonic() < deadline, f"still not delivered after {failed} attempts"
            time.sleep(0.2)


@pytest.mark.parametrize(
    ("sink_class", "copies_written"),
    [(_CommitNeverAcknowledged, 1), (_CommitNeverSent, 2)],
    ids=["landed", "never-sent"],
)
def test_a_commit_never_acknowledged_is_settled_after_the_transaction_timeout(
    broker, topic_names, sink_class, copies_written
):
    """A commit whose result never comes is awaited only until the transaction is past its
    timeout; then the producer is replaced (the coordinator has committed or aborted it) and the
    group's committed offsets say which: a commit that landed is done, one that did not is
    produced afresh. Either way a read_committed reader sees the batch's output exactly once."""
    workers = {"transaction_timeout_ms": 5_000, "produce_timeout_s": 3}
    with _one_batch(broker, topic_names, "lost-commit", sink_class, **workers) as one:
        first_producer = one.sink._producer
        started = time.monotonic()
        failed = _deliver_until_done(one.sink, one.batch, one.offsets, one.metadata)
        took = time.monotonic() - started
        assert failed >= 1 and one.sink._producer is not first_producer, "the producer was not replaced"
        assert took < 60, f"settled after {took:.0f}s, well past the 5 s transaction timeout"
        assert one.committed() == 5
        assert one.output() == [b"the batch's output"], "the batch was lost or committed twice"
        assert one.output(read_committed=False) == [b"the batch's output"] * copies_written


class _ProduceRequestArrivesLate(KafkaTransactionalSink):
    """The real sink, except that the first produce request of its first transaction is held on
    its way to the broker (a slow link; a partition leader still verifying the transaction with a
    dead coordinator) until the batch has expired and the transaction was given up. It reaches the
    broker during the retry's transaction, after that one added the same output partition and just
    before its own records: what a request late on the wire does. The broker decides what to do
    with it; its answer is kept in ``late_error``."""

    def __init__(self, settings, *args, **kwargs) -> None:
        self.held: tuple[int, ProduceRequest] | None = None
        self.late_error: str | None = None
        self._bootstrap = settings.kafka.bootstrap_servers
        super().__init__(settings, *args, **kwargs)

    def _new_producer(self):
        producer = super()._new_producer()
        client = producer._sender._client
        send = client.send

        def deliver_or_hold(node_id, request, **kwargs):
            if isinstance(request, ProduceRequest):
                if self.held is None and self.late_error is None:
                    self.held = (node_id, request)
                    return Future()  # never answered: the batch expires in flight
                if self.held is not None:
                    self._send_late()
            return send(node_id, request, **kwargs)

        client.send = deliver_or_hold
        return producer

    def _send_late(self) -> None:
        node_id, request = self.held
        self.held = None
        side = KafkaNetClient(bootstrap_servers=self._bootstrap, client_id="late-request")
        try:
            side.check_version()
            response = side.send_and_receive(node_id, request, timeout_ms=15_000)
        finally:
            side.close()
        codes = [p.error_code for t in response.responses for p in t.partition_responses]
        self.late_error = ",".join(map(str, codes))


def test_a_late_produce_request_of_an_aborted_transaction_never_joins_the_next_one(broker, topic_names):
    """kafka-python 3.0.12 runs transactions at version 1: the producer's epoch stays the same
    from one transaction to the next (KIP-890's per-transaction bump is version 2). A batch that
    expired in flight has an unknown fate: its request may still reach the broker. If it does
    after the retry's transaction has added the same partition, the broker takes it into that
    transaction, and the batch's output commits twice. (A CI run of test_replicated_cluster.py
    had one duplicate after an expired batch and an abort while coordinators were SIGKILLed; this
    is the mechanism that fits its log, reproduced here on purpose.)
    A transaction whose records' fate is unknown ends with the producer's epoch bumped, and the
    broker refuses the late request (INVALID_PRODUCER_EPOCH, error 47, when this was written)."""
    kafka, workers = {"request_timeout_ms": 2_000}, {"produce_timeout_s": 2}
    with _one_batch(broker, topic_names, "late-produce", _ProduceRequestArrivesLate, kafka, **workers) as one:
        sink = one.sink
        with pytest.raises(DeliveryError, match="Expiring"):
            sink.deliver_atomically(one.batch, one.offsets, one.metadata, timeout_s=30)
        assert sink.held is not None, "the first transaction's request was not held"
        sink.deliver_atomically(one.batch, one.offsets, one.metadata, timeout_s=30)  # the loop's retry
        assert sink.late_error is not None, "the late request never reached the broker"
        assert sink.late_error != "0", "the broker took the late request into a transaction"
        assert one.committed() == 5
        copies = one.output()
        assert copies == [b"the batch's output"], (
            f"{len(copies)} committed copies; the late request was answered with error code(s) {sink.late_error}"
        )


def test_a_producer_fenced_by_its_replacement_stops_and_never_fences_it_back(broker, topic_names):
    """Two producers with one transactional id: the older (a zombie: an actor the driver already
    replaced, or another driver's) must stop with ``ProducerFencedError`` and never re-initialize,
    which would fence the live one in turn; nothing the zombie sends is ever committed."""
    names = topic_names()
    settings = pipeline_settings(broker, names, workers={"delivery": "exactly-once"})
    produce_tweets(settings, [(f"id-{i}", f"tweet {i}") for i in range(10)], [], partitions=1)
    ensure_topics(settings.kafka, {names["output"]: 1, names["dlq"]: 1})
    source = KafkaSource(settings, "zombie-test")
    transactional_id = f"{names['group_id']}-zombie"
    zombie = KafkaTransactionalSink(settings, "zombie-old", transactional_id)
    live: KafkaTransactionalSink | None = None
    topic = names["input"]
    probe = LagProbe(settings.kafka, topic, names["group_id"])

    def out(text: str) -> list[OutboundRecord]:
        return [OutboundRecord(names["output"], b"k", text.encode())]

    try:
        wait_until(lambda: source.poll(timeout_ms=200, max_records=1) or source.assignment(), 60, "a join")
        metadata = source.group_metadata()
        zombie.deliver_atomically(out("zombie before"), {(topic, 0): 2}, metadata, 30)
        live = KafkaTransactionalSink(settings, "zombie-new", transactional_id)  # fences the zombie
        with pytest.raises(ProducerFencedError):
            zombie.deliver_atomically(out("zombie after"), {(topic, 0): 9}, metadata, 30)
        with pytest.raises(ProducerFencedError):  # and it stays a zombie: no re-initialization
            zombie.deliver_atomically(out("zombie again"), {(topic, 0): 9}, metadata, 30)
        live.deliver_atomically(out("live"), {(topic, 0): 4}, metadata, 30)
        committed = probe.measure().committed
    finally:
        probe.close()
        source.close()
        zombie.close()
        if live is not None:
            live.close()
    values = [v for _, _, _, v, _ in read_topic(settings.kafka, names["output"], read_committed=True)]
    assert values == [b"zombie before", b"live"], "the zombie fenced the live producer, or committed"
    assert committed == {0: 4}


class _StallsBeforeItsFirstCommit(KafkaTransactionalSink):
    """The real transactional sink, except that its first transaction stalls before its commit
    until the coordinator has aborted it for running past ``transaction_timeout_ms``, as a
    transaction does while the broker is unreachable longer than that."""

    def __init__(self, *args, describe, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.describe = describe
        self.stalled = False

    def _begin_commit(self, producer):
        if not self.stalled:
            self.stalled = True
            wait_until(lambda: "COMPLETE_ABORT" in self.describe(), 60, "the coordinator's timeout abort")
        return super()._begin_commit(producer)


def test_a_transaction_the_coordinator_timed_out_is_sent_again_and_the_producer_is_not_a_zombie(
    broker, topic_names
):
    """A coordinator aborts a transaction open past ``transaction_timeout_ms`` and bumps the
    producer's epoch, so the old producer's next request is refused as fenced, as it would be by a
    newer producer. It is not a zombie: the sink replaces its own producer, the batch's delivery
    fails as fenced (the loop reads it again) and the next transaction commits. CI saw an actor
    stop on this after a broker restart (kafka-python's sender waited 30 s for the coordinator)."""
    from kafka.admin import KafkaAdminClient

    names = topic_names()
    settings = pipeline_settings(
        broker,
        names,
        workers={"delivery": "exactly-once", "transaction_timeout_ms": 2_000, "produce_timeout_s": 1.5},
    )
    produce_tweets(settings, [(f"id-{i}", f"tweet {i}") for i in range(10)], [], partitions=1)
    ensure_topics(settings.kafka, {names["output"]: 1, names["dlq"]: 1})
    source = KafkaSource(settings, "coordinator-timeout-test")
    transactional_id = f"{names['group_id']}-timeout"
    admin = KafkaAdminClient(**settings.kafka.client_config())

    def state() -> str:
        return str(admin.describe_transactions([transactional_id])[transactional_id].state)

    sink = _StallsBeforeItsFirstCommit(settings, "timeout-test", transactional_id, describe=state)
    topic = names["input"]
    probe = LagProbe(settings.kafka, topic, names["group_id"])

    def out(text: str) -> list[OutboundRecord]:
        return [OutboundRecord(names["output"], b"k", text.encode())]

    try:
        wait_until(lambda: source.poll(timeout_ms=200, max_records=1) or source.assignment(), 60, "a join")
        metadata = source.group_metadata()
        with pytest.raises(FencedError):
            sink.deliver_atomically(out("timed out"), {(topic, 0): 3}, metadata, 30)
        sink.deliver_atomically(out("sent again"), {(topic, 0): 3}, metadata, 30)
        committed = probe.measure().committed
    finally:
        probe.close()
        source.close()
        sink.close()
        admin.close()
    values = [v for _, _, _, v, _ in read_topic(settings.kafka, names["output"], read_committed=True)]
    assert values == [b"sent again"]
    assert committed == {0: 3}


class _SenderClock:
    """``time`` for kafka-python's sender module, recording every sleep (the sender sleeps only
    before retrying a refused transactional request)."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        time.sleep(seconds)


def test_a_transaction_refused_while_the_last_one_completes_is_retried_within_20_ms(
    broker, topic_names, monkeypatch
):
    """A transaction begun right after a commit often has its first request refused with
    CONCURRENT_TRANSACTIONS: the coordinator is still writing the last one's markers. kafka-python
    3.0.12's sender then slept 100 ms before the retry (its own ``retry_backoff_ms``, not the 20 ms
    the transaction manager asks for); small back-to-back transactions took twice as long on
    average. ``kafka_compat.shorten_transactional_retry_backoff`` makes every such wait 20 ms."""
    import kafka.producer.sender

    clock = _SenderClock()
    monkeypatch.setattr(kafka.producer.sender, "time", clock)
    names = topic_names()
    settings = pipeline_settings(broker, names, workers={"delivery": "exactly-once"})
    produce_tweets(settings, [("id-0", "tweet")], [], partitions=1)
    ensure_topics(settings.kafka, {names["output"]: 1, names["dlq"]: 1})
    source = KafkaSource(settings, "retry-test")
    sink = KafkaTransactionalSink(settings, "retry-test", transactional_id=f"{names['group_id']}-retry")
    transactions = 0
    try:
        wait_until(lambda: source.poll(timeout_ms=200, max_records=1) or source.assignment(), 60, "a join")
        metadata = source.group_metadata()
        # Back to back until three retries were seen (the refusal is routine, not certain).
        while len(clock.sleeps) < 3 and transactions < 400:
            transactions += 1
            record = OutboundRecord(names["output"], b"k", b"v%d" % transactions)
            sink.deliver_atomically([record], {(names["input"], 0): 1}, metadata, timeout_s=30)
    finally:
        source.close()
        sink.close()
    assert clock.sleeps, f"no transactional request was retried in {transactions} transactions"
    assert max(clock.sleeps) <= 0.02, f"retry waits (s): {sorted(set(clock.sleeps))}"


def test_a_producer_replaced_with_records_in_flight_stops_sending(broker, topic_names):
    """A transaction given up with a record still in flight ends by replacing the producer. The
    old one must stop for good before its replacement starts: kafka-python's ``close(timeout=0)``
    flushes first, raises while a batch is pending and leaves the producer running, and a
    running old producer went on retrying under the old epoch and bumped it, fencing its own
    replacement (the broker SIGKILL test in exactly-once mode: the actor stopped as "fenced by a
    newer producer" and was replaced)."""
    kafka, workers = {"request_timeout_ms": 2_000}, {"produce_timeout_s": 2}
    with _one_batch(broker, topic_names, "in-flight", _ProduceRequestArrivesLate, kafka, **workers) as one:
        first = one.sink._producer
        with pytest.raises(DeliveryError, match="replaced"):
            one.sink.deliver_atomically(one.batch, one.offsets, one.metadata, timeout_s=1)
        assert one.sink._producer is not first
        assert not first._sender.is_alive(), "the replaced producer still runs beside its replacement"
