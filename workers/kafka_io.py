"""The Kafka adapters of the loop's ports (``workers.ports``): ``KafkaSource`` (a ``Source`` of
raw records), ``KafkaSink`` (a ``Sink`` that delivers) and ``KafkaTransactionalSink`` (a
``TransactionalSink``: exactly-once delivery, the consumed offsets committed inside the same
Kafka transaction as the batch's output and dead-letter records).

Only kafka-python's public API is used here; every access to its internals, and every
workaround of its bugs, is a named function of ``workers.kafka_compat``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import structlog
from kafka import (
    AsyncConsumerRebalanceListener,
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
    TopicPartition,
)
from kafka import errors as kafka_errors
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError

from schemas.dlq import DlqHeader
from schemas.errors import CommitError, DeliveryError, FencedError, ProducerFencedError
from schemas.settings import Settings
from workers import kafka_compat
from workers.kafka_compat import OwnedPartitionsCooperativeStickyAssignor
from workers.ports import GroupMetadata, OutboundRecord, Partition, RawRecord

log = structlog.get_logger("clstream.kafka")

#: kafka-python's default request limit, kept unless the DLQ's record limit needs more.
_MAX_REQUEST_BYTES = 1_048_576


#: How long a poll that found no broker waits before returning nothing (kafka-python's
#: ``retry_backoff_ms`` default): the loop does not spin while the broker is away.
_NO_BROKER_WAIT_MS = 100


class KafkaSource:
    """``Source`` over one ``KafkaConsumer`` in the input topic's group (cooperative-sticky
    assignment, manual commits, bounded decompression)."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self._topic = settings.topics.input
        self._request_timeout_ms = settings.kafka.request_timeout_ms
        self._revocation: tuple[Callable[[list[Partition], bool], None], Callable[[], bool], float] | None = (
            None
        )
        self._in_revocation = False
        self._revocation_commits: dict[Partition, int] = {}
        self._subscribed = False
        self._paused = False
        #: Input partitions owned after the last poll (read by other threads for health reports);
        #: None until the member has first joined the group, so "still joining" never reads as
        #: "owns nothing" (the stall watchdog gives no verdict on a group with a member joining).
        self.assigned: tuple[int, ...] | None = None
        self._consumer = KafkaConsumer(
            **{**settings.kafka.client_config(), "client_id": client_id},
            group_id=settings.topics.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level=settings.workers.isolation_level,
            fetch_max_wait_ms=settings.workers.fetch_max_wait_ms,
            max_poll_records=settings.workers.max_batch_records,
            session_timeout_ms=settings.workers.session_timeout_ms,
            # Kafka's advice: heartbeat at most a third of the session timeout.
            heartbeat_interval_ms=min(3_000, settings.workers.session_timeout_ms // 3),
            max_poll_interval_ms=settings.workers.max_poll_interval_ms,
            # KIP-429: a member joining or leaving moves only the partitions that change owner;
            # the others keep consuming instead of stopping for a stop-the-world rebalance.
            partition_assignment_strategy=(OwnedPartitionsCooperativeStickyAssignor,),
            # The consumer owns no deserializer: the loop needs the exact bytes for the DLQ.
            key_deserializer=None,
            value_deserializer=None,
        )
        OwnedPartitionsCooperativeStickyAssignor.attach(self._consumer)
        # A batch is decompressed whole before its first record is read: bound it, or one small
        # batch of zeros takes the actor's memory (a decompression bomb: skipped as unreadable).
        kafka_compat.bound_decompression(self._consumer, settings.workers.max_decompressed_batch_bytes)

    def poll(self, timeout_ms: int, max_records: int) -> list[RawRecord]:
        if not self._subscribed:
            try:
                self._subscribe()
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                # The broker went away before the first poll: no records, and the next poll
                # subscribes again, as a later poll rides an outage out.
                log.debug("no broker to join the group with yet", error=f"{type(exc).__name__}: {exc}")
                time.sleep(min(timeout_ms, _NO_BROKER_WAIT_MS) / 1000)
                return []
        kafka_compat.unpark_resumed(self._consumer)
        kafka_compat.finish_interrupted_join(self._consumer)
        before = kafka_compat.positions(self._consumer)
        try:
            fetched = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            if not exc.retriable:
                return self._unreadable(exc, max_records)
            # kafka-python 3.0.12 raises a refused connection to the group coordinator (a broker
            # down or restarting) out of ``poll``; the Java client keeps looking for it. No
            # records this time (any it had drained are read again): the next poll looks again,
            # and the loop rides the outage out.
            kafka_compat.rewind(self._consumer, before)
            log.debug("poll found no broker", error=f"{type(exc).__name__}: {exc}")
            time.sleep(min(timeout_ms, _NO_BROKER_WAIT_MS) / 1000)
            return []
        except Exception as exc:
            return self._unreadable(exc, max_records)
        if self.assigned is not None or self._consumer.group_metadata().generation_id > 0:
            self.assigned = tuple(sorted(tp.partition for tp in self._consumer.assignment()))
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

    def _subscribe(self) -> None:
        # Fetch the topic's partitions before joining: a group leader that assigns without them
        # ("No partition metadata for topic") hands out nothing, and kafka-python notices the
        # partitions only at its next metadata refresh, up to metadata_max_age_ms (5 min) later.
        self._consumer.partitions_for_topic(self._topic)
        # Joined on the first poll, so a revocation callback set before it is always in place.
        self._consumer.subscribe([self._topic], listener=_RevokeListener(self))
        # One more metadata update, now that the subscription is in place: kafka-python records
        # the subscribed topics' partitions (its "metadata snapshot") only from an update made
        # after subscribe. Without it the first assignment is made against an empty snapshot
        # and the next update makes the leader rejoin at once: a second rebalance at every
        # start, and the one that was seen to hang (see ``diagnostics``).
        self._consumer.topics()
        self._subscribed = True

    def _unreadable(self, exc: Exception, max_records: int) -> list[RawRecord]:
        """``poll`` raised ``exc``: stand-ins for the records it could not read (the partition
        moves past them), or ``exc`` again when it was not about a record."""
        skipped = kafka_compat.skip_unreadable(self._consumer, exc, max_records)
        unreadable = _stand_ins(*skipped, exc) if skipped is not None else []
        if not unreadable:
            raise exc
        log.warning(
            "skipped records the consumer cannot read",
            partition=unreadable[0].partition,
            offset=unreadable[0].offset,
            records=len(unreadable),
            error=unreadable[0].unreadable,
        )
        return unreadable

    def commit(self, next_offsets: Mapping[Partition, int]) -> None:
        if self._in_revocation:
            # Inside the revocation callback, on kafka-python's IO thread, where the blocking
            # ``KafkaConsumer.commit`` cannot run: ``_revoked`` makes it, awaited, once the
            # callback returns and before the partitions move.
            self._revocation_commits.update(next_offsets)
            return
        try:
            self._consumer.commit(_kafka_offsets(next_offsets))
        except RebalanceInProgressError as exc:
            raise CommitError(
                "the group is rebalancing; commit again after the next poll", retriable=True
            ) from exc
        except CommitFailedError as exc:
            raise CommitError(
                f"this member lost its partitions before committing: {exc}", retriable=False
            ) from exc
        except KafkaError as exc:
            if not exc.retriable:  # e.g. not authorized: the actor stops and says why
                raise
            # The coordinator cannot be reached or is not ready (a broker down or restarting, its
            # group state loading): the member may still own the partitions, so the same offsets
            # are committed again after the next poll. Failing here would stop the actor and its
            # replacement would repeat every batch delivered since the last commit.
            raise CommitError(
                f"the group coordinator did not take the commit: {type(exc).__name__}: {exc}",
                retriable=True,
            ) from exc

    def seek(self, offsets: Mapping[Partition, int]) -> None:
        assigned = self._consumer.assignment()
        for (topic, partition), offset in offsets.items():
            tp = TopicPartition(topic, partition)
            if tp in assigned:
                self._consumer.seek(tp, offset)

    def group_metadata(self) -> GroupMetadata:
        return self._consumer.group_metadata()

    def pause_all(self) -> None:
        # Kept until resume_all: partitions a rebalance assigns meanwhile join the pause.
        self._paused = True
        self._consumer.pause(*self._consumer.assignment())

    def resume_all(self) -> None:
        self._paused = False
        self._consumer.resume(*self._consumer.paused())

    def _assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Inside ``poll``, when a rebalance hands this member partitions, before any is fetched:
        kafka-python starts them unpaused, which would let a paused member read past its credit."""
        if self._paused:
            self._consumer.pause(*partitions)

    def on_revoke(
        self, callback: Callable[[list[Partition], bool], None], settled: Callable[[], bool], timeout_s: float
    ) -> None:
        self._revocation = (callback, settled, timeout_s)

    async def _revoked(self, partitions: Iterable[TopicPartition], lost: bool) -> None:
        """Runs on kafka-python's IO loop as an async rebalance listener: its sleeps let heartbeats
        go on while the batches in flight finish, so waiting does not get the member evicted.

        Then it calls the loop's callback, whose ``commit`` is only recorded (the blocking
        ``KafkaConsumer.commit`` cannot run on this thread), and commits those offsets here,
        awaited, before the partitions move: the one commit the source makes itself, on behalf
        of the loop's ``AtLeastOnceCommits`` (see ``workers.commits``)."""
        if self._revocation is None:
            return
        callback, settled, timeout_s = self._revocation
        deadline = time.monotonic() + timeout_s
        while not lost and not settled() and time.monotonic() < deadline:
            await kafka_compat.io_sleep(self._consumer, 0.05)
        self._in_revocation, self._revocation_commits = True, {}
        try:
            callback(sorted((tp.topic, tp.partition) for tp in partitions), lost)
        finally:
            self._in_revocation = False
        if lost or not self._revocation_commits:
            return
        offsets = _kafka_offsets(self._revocation_commits)
        try:
            await kafka_compat.commit_during_rebalance(self._consumer, offsets, self._request_timeout_ms)
        except KafkaError as exc:
            # The new owner re-reads from the last commit: duplicates, never loss.
            log.warning("commit before handing partitions over failed", error=f"{type(exc).__name__}: {exc}")

    def diagnostics(self) -> dict[str, Any]:
        """The consumer's view of its partitions, for a stall report: what it owns, what is paused,
        positions, and what the fetcher holds back. Best effort from another thread; read-only."""
        return kafka_compat.consumer_diagnostics(self._consumer)

    def assignment(self) -> list[Partition]:
        return sorted((tp.topic, tp.partition) for tp in self._consumer.assignment())

    def close(self) -> None:
        # Leaving the group revokes everything; the loop has stopped and committed what it could,
        # so there is nothing left to wait for (a batch given up at a deadline never settles).
        self._revocation = None
        # autocommit=False: every commit is explicit, made only after delivery.
        self._consumer.close(autocommit=False)


def _kafka_offsets(next_offsets: Mapping[Partition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(t, p): OffsetAndMetadata(off, "", -1) for (t, p), off in next_offsets.items()}


def _stand_ins(tp: TopicPartition, offsets: range, exc: Exception) -> list[RawRecord]:
    """A stand-in per offset the consumer could not read, naming the error, dead-lettered by its
    coordinates (see ``kafka_compat.skip_unreadable``)."""
    error = f"{type(exc).__name__}: {str(exc)[:300]}"
    return [
        RawRecord(
            topic=tp.topic, partition=tp.partition, offset=offset, key=None, value=None, unreadable=error
        )
        for offset in offsets
    ]


class _RevokeListener(AsyncConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._source._revoked(revoked, lost=False)

    async def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        await self._source._revoked(lost, lost=True)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._source._assigned(assigned)


def _producer(settings: Settings, client_id: str, **extra: Any) -> KafkaProducer:
    return KafkaProducer(
        **{**settings.kafka.client_config(), "client_id": client_id},
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.workers.producer_linger_ms,
        # A record batch fits the dead-letter topic (``dlq_max_record_bytes`` is what the operator
        # says it takes); one that a topic refuses as too large is split and retried by kafka-python.
        batch_size=min(settings.workers.producer_batch_bytes, settings.topics.dlq_max_record_bytes),
        retries=2**31 - 1,
        # Room for the largest dead-letter copy (the loop cuts bigger ones to fit) and its batch.
        max_request_size=max(_MAX_REQUEST_BYTES, settings.topics.dlq_max_record_bytes + 16_384),
        # kafka-python insists on delivery_timeout > linger + request_timeout.
        delivery_timeout_ms=max(
            int(settings.workers.produce_timeout_s * 1000),
            settings.kafka.request_timeout_ms + settings.workers.producer_linger_ms + 1_000,
        ),
        **extra,
    )


class KafkaSink:
    """``Sink`` over one idempotent producer (``acks=all``)."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self._producer = _producer(settings, client_id)

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


def _refusal(exc: Exception) -> Exception:
    """What a transaction failed for. Once a transactional request was refused (the offsets of a
    stale group generation, say: they go out before the records), kafka-python fails every later
    ``send`` with a plain ``KafkaError`` whose second argument is the refusal; the refusal is what
    tells a fenced batch (read it again) from a broker problem (retry it)."""
    if type(exc) is kafka_errors.KafkaError and len(exc.args) > 1 and isinstance(exc.args[1], Exception):
        return exc.args[1]
    return exc


def _failures(futures: Iterable[Any]) -> list[BaseException]:
    failures: list[BaseException] = []
    for future in futures:
        if not future.is_done:
            failures.append(TimeoutError("no acknowledgement from the broker"))
        elif future.failed():
            failures.append(future.exception)
    return failures


#: Errors that mean this member's view of the group is stale: its transaction may not commit
#: offsets for partitions that could now belong to someone else (KIP-447).
_FENCING_ERRORS: tuple[type[Exception], ...] = (
    kafka_errors.ProducerFencedError,
    kafka_errors.InvalidProducerEpochError,
    kafka_errors.CommitFailedError,
    kafka_errors.IllegalGenerationError,
    kafka_errors.UnknownMemberIdError,
    kafka_errors.FencedInstanceIdError,
    kafka_errors.RebalanceInProgressError,
)


class KafkaTransactionalSink:
    """``TransactionalSink`` for exactly-once delivery: one transactional producer per actor slot.

    ``transactional_id`` is stable per actor slot, so the replacement of a killed actor fences the
    dead one and aborts its open transaction at once (``init_transactions``) instead of leaving
    ``read_committed`` readers stuck behind it until the transaction timeout. kafka-python's
    ``commit_transaction``, ``abort_transaction`` and ``send_offsets_to_transaction`` wait without
    a deadline; here every wait has one, and a producer that misses it is closed and replaced.

    A commit whose acknowledgement misses the deadline is not aborted (it may have landed): as
    with the Java client's ``commitTransaction``, the caller's retry of the same batch awaits that
    commit's outcome instead of producing the batch again. kafka-python 3.0.12 can lose track of
    a commit whose coordinator died (its result never completes), so the wait ends once the
    transaction is past ``workers.transaction_timeout_ms``: by then the coordinator has committed
    or aborted it whether or not this client hears back. A new producer's ``init_transactions``
    waits for that outcome, and the group's committed offsets say which it was (they commit in
    the same transaction as the output): the batch is then done, or produced afresh.
    """

    def __init__(self, settings: Settings, client_id: str, transactional_id: str) -> None:
        self._settings, self._client_id, self._transactional_id = settings, client_id, transactional_id
        self._producer = self._new_producer()
        #: The commit request of a batch whose acknowledgement missed its deadline, and the
        #: batch's offsets (a retry of the same batch awaits it).
        self._pending_commit: _PendingCommit | None = None
        #: A newer producer fenced this one (``ProducerFencedError``): it sends nothing more.
        self._superseded = False
        #: The producer was closed and its replacement could not be initialized yet.
        self._closed = False
        #: ``time.monotonic()`` when the open transaction began; None when none is open.
        self._began: float | None = None

    def _new_producer(self) -> KafkaProducer:
        producer = _producer(
            self._settings,
            self._client_id,
            transactional_id=self._transactional_id,
            transaction_timeout_ms=self._settings.workers.transaction_timeout_ms,
        )
        kafka_compat.shorten_transactional_retry_backoff(producer)
        producer.init_transactions()
        return producer

    def deliver_atomically(
        self,
        records: Sequence[OutboundRecord],
        next_offsets: Mapping[Partition, int],
        group_metadata: GroupMetadata,
        timeout_s: float,
    ) -> None:
        if self._superseded:
            raise ProducerFencedError(
                f"transactional id {self._transactional_id!r} belongs to a newer producer: this one stopped"
            )
        began = time.monotonic()
        deadline = began + timeout_s
        if self._closed:
            self._replace_producer()
        if self._pending_commit is not None and self._settle_pending_commit(dict(next_offsets), deadline):
            return
        producer = self._producer
        # A transaction starts with no offsets but its own (a refused commit's would ride along).
        kafka_compat.forget_refused_txn_offsets(producer)
        sent: list[Any] = []
        try:
            producer.begin_transaction()
            self._began = time.monotonic()
            # The offsets go first: their two round trips (AddOffsetsToTxn to the transaction
            # coordinator, then TxnOffsetCommit to the group's) run while this thread is still
            # building and sending the records, instead of after them.
            offsets = kafka_compat.send_offsets_to_transaction(
                producer, _kafka_offsets(next_offsets), group_metadata
            )
            for r in map(producible, records):
                sent.append(producer.send(r.topic, key=r.key, value=r.value, headers=list(r.headers) or None))
            # kafka-python 3.0.12 commits a transaction whose record batch expired (to it a
            # delivery timeout is retriable, so the transaction stays committable): the offsets
            # would commit without that output. Every record is acknowledged before the commit.
            producer.flush(timeout=max(0.0, deadline - time.monotonic()))
            failures = _failures(sent)
            if failures:
                raise failures[0]
            self._await(offsets, deadline, "offsets")
            commit = self._begin_commit(producer)
        except Exception as exc:  # noqa: BLE001 - whatever failed, nothing of it may ever commit
            self._fail(_refusal(exc), len(records), deadline + timeout_s, unresolved=bool(_failures(sent)))
        try:
            self._await(commit, deadline, "commit")
            self._began = None
        except kafka_errors.KafkaTimeoutError as exc:
            self._pending_commit = _PendingCommit(
                commit,
                dict(next_offsets),
                group_metadata.group_id,
                settled_by=began + self._settings.workers.transaction_timeout_ms / 1000,
            )
            raise DeliveryError(
                f"commit of {len(records)} records not acknowledged within {timeout_s:.0f}s; "
                "the retry awaits it (it may have landed)"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - the commit failed: the transaction did not land
            self._fail(exc, len(records), deadline + timeout_s)

    def _begin_commit(self, producer: KafkaProducer) -> Any:
        """Send the open transaction's commit; its result, to await."""
        return kafka_compat.begin_commit(producer)

    def _settle_pending_commit(self, next_offsets: dict[Partition, int], deadline: float) -> bool:
        """Settle the commit left pending by a timeout. True: it was this batch's and it landed.

        Its result is awaited until the transaction is past its timeout; after that the producer
        is replaced (the coordinator has settled the transaction, and ``init_transactions`` waits
        for it) and the group's committed offsets say whether it landed. A different batch (the
        loop rewound) only proceeds once the old commit is settled either way."""
        pending = self._pending_commit
        assert pending is not None
        if pending.result is not None:
            try:
                self._await(pending.result, min(deadline, pending.settled_by), "pending commit")
            except kafka_errors.KafkaTimeoutError as exc:
                if pending.offsets == next_offsets and time.monotonic() < pending.settled_by:
                    raise DeliveryError("an earlier commit of this batch is still not acknowledged") from exc
                log.warning(
                    "a commit still not acknowledged past the transaction timeout: replacing the "
                    "producer and reading the group's offsets to learn whether it landed",
                    transactional_id=self._transactional_id,
                )
                pending.result = None
                self._replace_producer()
            except Exception:  # noqa: BLE001 - it failed: the batch did not land; send it afresh
                self._pending_commit = None
                self._replace_producer()
                return False
            else:
                self._pending_commit = None
                return pending.offsets == next_offsets
        landed = self._landed(pending)
        self._pending_commit = None
        log.info("an unacknowledged commit settled", landed=landed, partitions=len(pending.offsets))
        return landed and pending.offsets == next_offsets

    def _landed(self, pending: _PendingCommit) -> bool:
        """Whether ``pending`` committed: its offsets are the group's committed offsets (or later
        ones: a new owner went on from them). Raises ``DeliveryError`` if they cannot be read."""
        partitions = [TopicPartition(t, p) for t, p in pending.offsets]
        try:
            admin = KafkaAdminClient(**self._settings.kafka.client_config())
            try:
                committed = admin.list_group_offsets({pending.group_id: partitions}).get(pending.group_id, {})
            finally:
                admin.close()
        except Exception as exc:  # noqa: BLE001 - no answer yet: the retry asks again
            raise DeliveryError(
                "whether an unacknowledged commit landed is not known yet: the group's committed "
                f"offsets could not be read ({type(exc).__name__}: {exc})"
            ) from exc
        return all(
            tp in committed and committed[tp].offset >= pending.offsets[(tp.topic, tp.partition)]
            for tp in partitions
        )

    def _fail(self, exc: Exception, count: int, deadline: float, unresolved: bool = False) -> NoReturn:
        """Abort the open transaction and raise ``FencedError`` or ``DeliveryError`` for ``exc``,
        or ``ProducerFencedError`` if a newer producer has taken the transactional id.

        ``unresolved``: a record was sent and not acknowledged (its batch expired in flight, or
        is still in flight), so its produce request may yet reach the broker. kafka-python 3.0.12
        runs transactions at version 1, where the producer keeps its epoch from one transaction
        to the next (KIP-890's per-transaction bump is version 2): such a late request, arriving
        once the next transaction has added its partition, is taken into that transaction, and
        its records commit with it (a batch retried after the abort then commits twice). So the
        transaction is not aborted with this producer but ended by its replacement, whose
        ``init_transactions`` aborts it under a bumped epoch: the broker refuses the old one's
        requests from then on, late or not."""
        message = f"transaction of {count} records not committed: {type(exc).__name__}: {exc}"
        self._stop_if_superseded(message, exc)
        try:
            if unresolved:
                self._replace_producer()
                message += "; records not acknowledged: the producer was replaced, so none can join a later transaction"
            else:
                self._abort(deadline)
        except DeliveryError as abort_failed:
            message += f"; {abort_failed}"
        self._began = None  # aborted, or settled by the producer's replacement
        if isinstance(exc, _FENCING_ERRORS):
            raise FencedError(message) from exc
        raise DeliveryError(message) from exc

    def _await(self, result: Any, deadline: float, what: str) -> None:
        """Wait for a transactional request with a deadline (kafka-python's own calls have none);
        raises the request's error if it failed."""
        remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
        if not kafka_compat.wait_for_transaction(self._producer, result, remaining_ms):
            raise kafka_errors.KafkaTimeoutError(f"transaction {what} not acknowledged in time")

    def _abort(self, deadline: float) -> None:
        try:
            self._await(kafka_compat.begin_abort(self._producer), deadline, "abort")
            return
        except Exception as exc:  # noqa: BLE001 - any failure to abort: start over with a new producer
            error = f"{type(exc).__name__}: {exc}"
        self._replace_producer()
        raise DeliveryError(f"could not abort a transaction ({error}); the producer was replaced")

    def _stop_if_superseded(self, message: str, exc: BaseException | None = None) -> None:
        """Raise ``ProducerFencedError`` if a newer producer with this transactional id fenced
        this one (kafka-python then holds ``ProducerFencedError`` as its fatal error, whatever
        the call that ran into it raised). Such a producer is never re-initialized: that would
        fence the live one in turn; the actor stops instead.

        A coordinator that aborts a transaction open past ``workers.transaction_timeout_ms`` (the
        broker was unreachable meanwhile, or a request waited that long) also bumps the
        producer's epoch, and kafka-python reports that the same way. When the open transaction
        is that old, the refusal is taken for the timeout: the producer is replaced like any
        other, and the batch is read again. Should it really have been a newer producer, the two
        fence each other at most once more (the newer one's transaction is young, so it stops),
        and neither can commit offsets for a group generation it is not in."""
        if kafka_compat.fenced_by_newer_producer(self._producer, exc) and not self._timed_out():
            self._superseded = True
            # Its unsent records can never be sent: stop it without flushing.
            kafka_compat.close_now(self._producer)
            raise ProducerFencedError(
                f"{message}; a newer producer took transactional id {self._transactional_id!r} "
                "(this actor was replaced, or another driver uses the id): this actor stops"
            ) from exc

    def _timed_out(self) -> bool:
        """The open transaction is past its timeout: its coordinator has aborted it (or will)."""
        timeout_s = self._settings.workers.transaction_timeout_ms / 1000
        return self._began is not None and time.monotonic() - self._began >= timeout_s

    def _replace_producer(self) -> None:
        """init_transactions on the same transactional id fences the old producer and aborts
        (or completes) whatever it left open. Never for a producer a newer one has fenced."""
        self._stop_if_superseded("the producer was not replaced")
        if not self._closed:
            # Stopped for good before the replacement starts: a producer still retrying under
            # the old epoch would bump it and fence its replacement.
            kafka_compat.close_now(self._producer)
            self._closed = True
        if self._timed_out():
            log.warning(
                "the coordinator aborted a transaction open past its timeout: replacing the producer",
                transactional_id=self._transactional_id,
            )
        self._began = None
        try:
            self._producer = self._new_producer()
        except Exception as exc:  # noqa: BLE001 - a coordinator that cannot be reached yet: retry
            raise DeliveryError(
                f"the transactional producer could not be initialized ({type(exc).__name__}: {exc})"
            ) from exc
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._producer.close(timeout=5)


@dataclass
class _PendingCommit:
    """A transaction whose commit was sent but not acknowledged in time."""

    #: kafka-python's result of the commit; None once its producer was replaced.
    result: Any | None
    #: The consumed offsets the transaction commits (the batch's next offsets).
    offsets: dict[Partition, int]
    group_id: str
    #: ``time.monotonic()`` past the transaction's timeout: the coordinator has settled it by then.
    settled_by: float
