"""The loop's ports: what ``ClassifierLoop`` needs from Kafka and from the model, nothing heavy.

``Source`` (records in, offsets committed), ``Sink`` (records out, acknowledged),
``TransactionalSink`` (records out and offsets committed in one transaction) and ``Classifier``
(texts to label probabilities). Records cross them as the envelopes of ``workers.records``
(``RawRecord`` in, ``OutboundRecord`` out), importable from here too.

Adapters sit beside the ports, never in them: ``workers.kafka_io`` (``KafkaSource``,
``KafkaSink``, ``KafkaTransactionalSink``), ``workers.model`` and ``workers.checkpoints``
(``BertClassifier``, ``SequenceClassifierModel``), and the in-memory doubles of
``workers.testing``. This module imports no torch, kafka-python, Ray or transformers (a unit
test asserts it), so the loop and its unit tests load without them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from workers.records import Headers, OutboundRecord, RawRecord

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Classifier",
    "GroupMetadata",
    "Headers",
    "OutboundRecord",
    "Partition",
    "RawRecord",
    "Sink",
    "Source",
    "TransactionalSink",
]

#: (topic, partition).
Partition = tuple[str, int]
#: A group member's generation as its source reports it, opaque to the loop: handed from
#: ``Source.group_metadata`` to ``TransactionalSink.deliver_atomically`` (kafka-python's
#: ``ConsumerGroupMetadata`` for Kafka, a string for the in-memory doubles).
GroupMetadata = Any


class Source(Protocol):
    """Records from the input topic, as a member of the consumer group. Not thread-safe."""

    def poll(self, timeout_ms: int, max_records: int) -> list[RawRecord]:
        """Up to ``max_records`` records in offset order per partition; blocks at most ``timeout_ms``."""
        ...

    def commit(self, next_offsets: Mapping[Partition, int]) -> None:
        """Commit, per partition, the offset of the next record to read; returns once committed.

        Inside the revocation callback (see ``on_revoke``) the source may make the commit itself,
        awaited, after the callback returns and before the partitions move.

        Raises ``CommitError``: ``retriable`` while the group rebalances or its coordinator cannot
        be reached (commit again after the next poll), not retriable once the partitions belong to
        another member."""
        ...

    def seek(self, offsets: Mapping[Partition, int]) -> None:
        """Read again from these offsets (partitions no longer assigned are left to their owner)."""
        ...

    def group_metadata(self) -> GroupMetadata:
        """This member's group generation, for fencing a transaction's offset commit (KIP-447)."""
        ...

    def pause_all(self) -> None:
        """Stop fetching from every assigned partition; ``poll`` still keeps the member in the group."""
        ...

    def resume_all(self) -> None: ...

    def on_revoke(
        self, callback: Callable[[list[Partition], bool], None], settled: Callable[[], bool], timeout_s: float
    ) -> None:
        """Inside ``poll``, before partitions are taken away: wait (keeping the member alive) until
        ``settled()`` or ``timeout_s``, then call ``callback(partitions, lost)``, where ``commit``
        may be called; the source makes that commit before the partitions move. ``lost``: evicted
        from the group, nothing can be committed and nothing is waited for."""
        ...

    def close(self) -> None:
        """Leave the group. Called at most once."""
        ...


@runtime_checkable
class Sink(Protocol):
    """Writes to the output and dead-letter topics (at-least-once delivery). Not thread-safe."""

    def deliver(self, records: Sequence[OutboundRecord], timeout_s: float) -> None:
        """Send every record and block until all are acknowledged; raise ``DeliveryError`` otherwise."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class TransactionalSink(Protocol):
    """Writes to the output and dead-letter topics and commits the consumed offsets, in one Kafka
    transaction per batch (exactly-once delivery). Not thread-safe."""

    def deliver_atomically(
        self,
        records: Sequence[OutboundRecord],
        next_offsets: Mapping[Partition, int],
        group_metadata: GroupMetadata,
        timeout_s: float,
    ) -> None:
        """Produce ``records`` and commit ``next_offsets`` for the group in one transaction.

        Returns once it is committed. On failure the transaction is aborted (none of it is ever
        visible to ``read_committed`` readers) and ``DeliveryError`` is raised: try the same batch
        again. ``FencedError`` means the group generation moved on (the partitions may belong to
        another member now): do not retry; read the batch again from the last committed offsets.
        ``ProducerFencedError`` (a ``FatalWorkerError``): a newer producer owns the transactional
        id; this sink sends nothing more."""
        ...

    def close(self) -> None: ...


class Classifier(Protocol):
    """Maps texts to label probabilities. Not thread-safe; one instance per actor.

    ``classify`` may raise anything: the loop splits the batch until the failing record is
    alone and dead-letters only that one. A failure of the device rather than of the records
    (out of device memory, an accelerator error) is raised as the framework's own error, which
    ``workers.devices.is_device_failure`` recognises: those batches are split and retried, never
    dead-lettered."""

    model_id: str
    pooling: str
    labels: tuple[str, ...]

    def classify(self, texts: Sequence[str]) -> np.ndarray:
        """Return ``[len(texts), len(labels)]`` float32 probabilities, rows summing to 1."""
        ...


@runtime_checkable
class PreparingClassifier(Classifier, Protocol):
    """A ``Classifier`` whose CPU-side preparation (tokenization) can run apart from the model:
    the loop prepares each poll on its consumer thread, so the model thread only runs the model.
    ``classify_prepared(prepare(texts))`` must equal ``classify(texts)``."""

    def prepare(self, texts: list[str]) -> list[Any]:
        """One model input per text, in order (for a BERT classifier: its token ids)."""
        ...

    def classify_prepared(self, inputs: list[Any]) -> np.ndarray:
        """``classify`` from ``prepare``'s inputs, or any sublist of them."""
        ...
