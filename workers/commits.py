"""Where a batch's offsets are committed: one strategy per delivery mode, chosen once.

``ClassifierLoop`` holds one ``Commits``, picked by ``commits_for`` from
``workers.delivery`` when the loop is built, and calls nothing else to deliver or commit:

- the model thread hands each classified batch to ``deliver``, with the offsets after it and
  the group membership captured when it was polled (``group_metadata``);
- the consumer thread hands ``commit`` the offsets of the leading batches that were all
  delivered, in poll order, after every ``poll`` and from inside the source's revocation
  callback (``ClassifierLoop._commit_finished``, its only caller).

``AtLeastOnceCommits``: deliver (every output and dead-letter record acknowledged), then commit
the offsets on the source. A crash in between repeats the batch; nothing is lost.

``ExactlyOnceCommits``: deliver writes the records and commits the offsets in one Kafka
transaction (``TransactionalSink.deliver_atomically``), fenced by the group generation of the
poll (KIP-447); ``commit`` has nothing left to do.

The revocation-time commit. When a rebalance takes partitions away, the loop commits its
finished batches from inside the revocation callback, through the same ``commit``. In
at-least-once mode ``KafkaSource.commit`` does not send that commit at once: kafka-python calls
its rebalance listener on its own IO thread, where the blocking ``KafkaConsumer.commit`` cannot
run (it would wait on that same thread), so the source keeps the offsets and, once the callback
returns, commits them on the IO loop, awaited, before the partitions move
(``KafkaSource._revoked``). The offsets are still the ones this strategy asked for; only the
moment they are sent differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from workers.ports import GroupMetadata, OutboundRecord, Partition, Sink, Source, TransactionalSink


class Commits(Protocol):
    """How one delivery mode delivers a batch and commits its offsets. Thread-safety: ``deliver``
    on the model thread, ``commit`` and ``group_metadata`` on the consumer thread."""

    def group_metadata(self) -> GroupMetadata | None:
        """At poll: what fences the batch's commit later (None when nothing does)."""
        ...

    def deliver(
        self,
        records: Sequence[OutboundRecord],
        next_offsets: Mapping[Partition, int],
        group_metadata: GroupMetadata | None,
        timeout_s: float,
    ) -> None:
        """Deliver one batch's output and dead-letter records; raise ``DeliveryError`` (retry the
        batch), ``FencedError`` (read it again) or a ``FatalWorkerError`` (stop)."""
        ...

    def commit(self, next_offsets: Mapping[Partition, int]) -> None:
        """Commit the offsets of delivered batches; raise ``CommitError`` if that failed."""
        ...


class AtLeastOnceCommits:
    """Deliver, then commit: offsets go to the source once the sink has acknowledged every record."""

    def __init__(self, source: Source, sink: Sink) -> None:
        self._source, self._sink = source, sink

    def group_metadata(self) -> None:
        return None  # nothing to fence: the commit is the source's own, checked by the group

    def deliver(
        self,
        records: Sequence[OutboundRecord],
        next_offsets: Mapping[Partition, int],
        group_metadata: GroupMetadata | None,
        timeout_s: float,
    ) -> None:
        self._sink.deliver(records, timeout_s=timeout_s)

    def commit(self, next_offsets: Mapping[Partition, int]) -> None:
        self._source.commit(next_offsets)


class ExactlyOnceCommits:
    """Records and offsets in one transaction per batch; nothing is committed afterwards."""

    def __init__(self, source: Source, sink: TransactionalSink) -> None:
        self._source, self._sink = source, sink

    def group_metadata(self) -> GroupMetadata:
        return self._source.group_metadata()

    def deliver(
        self,
        records: Sequence[OutboundRecord],
        next_offsets: Mapping[Partition, int],
        group_metadata: GroupMetadata | None,
        timeout_s: float,
    ) -> None:
        self._sink.deliver_atomically(records, next_offsets, group_metadata, timeout_s)

    def commit(self, next_offsets: Mapping[Partition, int]) -> None:
        pass  # committed inside each batch's transaction, by ``deliver``


def commits_for(delivery: str, source: Source, sink: Sink | TransactionalSink) -> Commits:
    """The strategy of ``delivery`` (``workers.delivery``); ``TypeError`` if ``sink`` cannot serve it."""
    if delivery == "exactly-once":
        if not isinstance(sink, TransactionalSink):
            raise TypeError("exactly-once delivery needs a transactional sink (deliver_atomically)")
        return ExactlyOnceCommits(source, sink)
    if not isinstance(sink, Sink):
        raise TypeError(f"{delivery} delivery needs a sink that delivers (deliver)")
    return AtLeastOnceCommits(source, sink)
