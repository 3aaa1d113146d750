"""clstream's private access to kafka-python internals, in one place.

Everything here touches what kafka-python does not publish (``consumer._fetcher``,
``producer._transaction_manager``, a coordinator's join task ...) to work around one of its bugs
or to get something its public API lacks; ``workers/kafka_io.py`` calls these named functions and
otherwise only kafka-python's public API. Written for kafka-python 3.0.12
(``KNOWN_GOOD_VERSIONS``; ``pyproject.toml`` pins ``>=3.0.12,<3.1``). At import ``self_check``
verifies that the installed kafka-python still has every internal this module touches and
raises ``ImportError`` naming the installed version and what is gone: an upgrade breaks loudly
here, never silently in an actor. The bugs are described, with their evidence, in
docs/kafka-python-notes.md.

Consumer group
  ``io_sleep``, ``commit_during_rebalance``: the revocation listener waits for the batches in
  flight and commits on kafka-python's IO loop (the public ``commit`` cannot run there).
  ``finish_interrupted_join``: a join left half done is never finished (coordinator bug).
  ``OwnedPartitionsCooperativeStickyAssignor``: claim only the partitions owned now (assignor bug).
Fetcher
  ``unpark_resumed``: a resumed partition's parked records stop it for good (fetcher bug).
  ``skip_unreadable``: a record ``poll`` cannot read is raised again on every poll (fetcher bug).
  ``positions``, ``rewind``: a poll that raises mid-way may already have advanced positions.
  ``bound_decompression``: a batch is decompressed whole, however large (no limit upstream).
Transactions
  ``forget_refused_txn_offsets``: refused offsets are sent again with the next transaction (bug).
  ``send_offsets_to_transaction``, ``begin_commit``, ``begin_abort``, ``wait_for_transaction``:
  the transactional calls without kafka-python's unbounded waits, so every wait has a deadline.
  ``fenced_by_newer_producer``: whether a newer producer took the transactional id.
Diagnostics
  ``consumer_diagnostics``: the consumer's own view of its partitions, for a stall report.

Bounded decompression (issue 13 item 5). kafka-python decompresses a whole record batch into
memory before reading its first record (``DefaultRecordBatch._maybe_uncompress`` for message
format v2, ``LegacyRecordBatch._decompress`` for v0 and v1, each calling ``kafka.codec``), then
copies it into a ``bytearray``: a 260 KB gzip batch of zeros, far under the broker's message
size limit, puts 256 MiB in the actor twice over. ``bound_decompression(consumer, max_bytes)``
makes one consumer decompress each batch a chunk at a time and raise ``DecompressionBombError``
as soon as the output would pass ``max_bytes``. It never holds more than ``max_bytes`` of output
plus one chunk, whatever sizes the batch claims for itself. kafka-python has no such limit.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import struct
import threading
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import kafka
import lz4.frame
import snappy
import zstandard
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.errors import CorruptRecordError, ProducerFencedError, UnsupportedCodecError

try:  # internal modules: if one moved, say so the way ``self_check`` does
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    from kafka.record.default_records import DefaultRecordBatch
    from kafka.record.legacy_records import LegacyRecordBatch
    from kafka.record.memory_records import MemoryRecords
    from kafka.structs import MemberState
except ImportError as exc:
    raise ImportError(
        "clstream's kafka-python workarounds (workers/kafka_compat.py) were written for kafka-python "
        f"3.0.12, and the installed kafka-python {kafka.__version__} no longer has: {exc}. "
        "Install kafka-python>=3.0.12,<3.1 (pyproject.toml) or port them."
    ) from exc

from schemas.errors import DecompressionBombError

#: kafka-python releases whose internals this module was written against and tested with.
KNOWN_GOOD_VERSIONS: tuple[str, ...] = ("3.0.12",)

#: Codec ids in a batch's attributes; the same in message formats v0, v1 and v2.
GZIP, SNAPPY, LZ4, ZSTD = 1, 2, 3, 4
#: Output is taken from a codec at most this much at a time: the batch so far and one chunk are
#: all that is ever held, never the batch twice over.
_CHUNK_BYTES = 1024**2
#: A xerial-framed snappy stream (Kafka's Java producer) starts with these 8 bytes, then two int32.
_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER_BYTES = 16


# -- consumer group --------------------------------------------------------------------------------


async def io_sleep(consumer: KafkaConsumer, seconds: float) -> None:
    """Sleep inside an async rebalance listener, on kafka-python's IO loop, so that heartbeats go
    on meanwhile (``time.sleep`` there would stop them and get the member evicted)."""
    await consumer._coordinator._net.sleep(seconds)


async def commit_during_rebalance(
    consumer: KafkaConsumer, offsets: Mapping[TopicPartition, OffsetAndMetadata], timeout_ms: int
) -> None:
    """Commit ``offsets`` from inside an async rebalance listener and await it, before the
    partitions move. kafka-python runs the listener on its IO thread, where ``KafkaConsumer.commit``
    raises ("Cannot block on net.run() from the IO thread itself"); this awaits the coroutine that
    ``commit`` would run there. Raises ``KafkaError`` as ``commit`` does."""
    await consumer._coordinator._commit_offsets_sync_async(dict(offsets), timeout_ms)


def finish_interrupted_join(consumer: KafkaConsumer) -> None:
    """Work around a kafka-python 3.0.12 coordinator bug that leaves a member half joined for good.

    Call before every ``poll``. A rejoin asked for by a metadata change (new partitions; the
    first assignment made against an empty snapshot) is not recorded in ``rejoin_needed``:
    ``need_rejoin()`` sees it only as "the assignment's snapshot differs from the metadata". The
    join task itself, as leader, makes the two equal. If the poll that started the join times
    out before the join finishes (a busy CPU, a short poll), no later poll ever awaits it again:
    ``need_rejoin()`` is False, the member stays ``REBALANCING`` with heartbeats off, the broker
    expires it, and every commit is refused as "rebalancing" from then on. Marking the rejoin as
    needed while a join is under way lets the next poll finish it (or start one afresh if it has
    already ended).

    The two reads are made under the coordinator's lock, which the IO thread holds while it
    marks a join complete (``rejoin_needed`` False, then ``state`` STABLE): a join finishing
    between them would otherwise read as half done, and the leader's needless rejoin makes the
    broker rebalance the group again.
    """
    coordinator = consumer._coordinator
    with coordinator._lock:
        if coordinator.state == MemberState.REBALANCING and not coordinator.rejoin_needed:
            coordinator.request_rejoin()


class OwnedPartitionsCooperativeStickyAssignor(CooperativeStickyAssignor):
    """kafka-python 3.0.12's cooperative-sticky assignor, claiming only partitions it still owns.

    At each JoinGroup a cooperative member tells the leader which partitions it owns, and the
    leader withholds a partition that changes owner until its owner has revoked it. Upstream
    claims the partitions of the member's last assignment, even after they were lost (evicted
    from the group: its session expired while the broker was paused, say), whereas Kafka's
    Java client claims what the consumer owns now, nothing after a loss. A stale claim makes
    the leader withhold partitions from their new owner for an "owner" that owns nothing and so
    never revokes them and never asks for the follow-up rebalance: those partitions are
    assigned to nobody until something else rebalances the group (after a broker pause, lag
    stood on two of four partitions with both members idle). This claims, as Java does, the
    consumer's current assignment. Same protocol name: members with the upstream assignor
    interoperate. Pass it as ``partition_assignment_strategy`` and ``attach`` it to the consumer
    right after building it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.subscription: Any = None

    @classmethod
    def attach(cls, consumer: KafkaConsumer) -> None:
        for assignor in consumer._coordinator._assignors.values():
            if isinstance(assignor, cls):
                assignor.subscription = consumer._subscription

    def metadata(self, topics: Any) -> Any:
        if self.subscription is not None:
            self.member_assignment = sorted(self.subscription.assigned_partitions())
        return super().metadata(topics)


# -- fetcher ---------------------------------------------------------------------------------------


def unpark_resumed(consumer: KafkaConsumer) -> None:
    """Work around a kafka-python 3.0.12 fetcher bug that stops a partition for good.

    Call before every ``poll``. Records already parsed for a partition that gets paused are
    parked, and put back only on a poll that finds no other partition's records in hand, which
    after the first records of any unpaused partition (one assigned during the pause, say) never
    happens again; meanwhile the parked partition is never fetched. So a resumed partition's
    parked records are dropped here: its position is still the first record not returned, and
    the fetcher reads them again from there. Nothing is skipped and nothing is returned twice.
    """
    parked = consumer._fetcher._paused_partition_records
    if not parked:
        return
    subscription = consumer._subscription
    resumed = [tp for tp in list(parked) if not subscription.is_paused(tp)]
    for tp in resumed:
        parked.pop(tp).drain()


def positions(consumer: KafkaConsumer) -> dict[TopicPartition, int]:
    """Every assigned partition's position (the next offset ``poll`` returns) that is known."""
    return {
        tp: state.position.offset
        for tp, state in list(consumer._subscription.assignment.items())
        if state.has_valid_position
    }


def rewind(consumer: KafkaConsumer, before: Mapping[TopicPartition, int]) -> None:
    """After a ``poll`` that raised: put every partition still assigned back at its position from
    ``before``, where it has moved. ``poll`` drains the fetcher's records (advancing positions)
    before it sends the next fetches, so an error raised after the drain would otherwise skip the
    records it drained without returning them."""
    now = positions(consumer)
    for tp, offset in before.items():
        if tp in now and now[tp] != offset:
            consumer.seek(tp, offset)


def skip_unreadable(
    consumer: KafkaConsumer, exc: Exception, max_records: int
) -> tuple[TopicPartition, range] | None:
    """After ``poll`` raised ``exc``: if it was raised reading a partition's records (a corrupt
    batch, a codec kafka-python lacks, a header key that is not UTF-8, a decompression bomb),
    move that partition past the offsets it could not read and return the partition and those
    offsets. None when the error was not about a record (the caller re-raises it).

    kafka-python 3.0.12 raises such errors from ``poll`` and leaves the partition's position on
    the record, so every later poll raises again: the member spins and the partition stalls.
    The records being read when it raised are the fetcher's in-line partition records; every
    record before the bad one was returned, so the partition's position is the bad record's
    offset. A corrupt batch is skipped one offset at a time (its offsets cannot be trusted). A
    decompression bomb is skipped batch by batch: ``DecompressionBombError`` carries the batch's
    offsets, read from its header (never decompressed), and up to ``max_records`` of them are
    skipped at once (the next poll meets the rest of the batch, and stops decompressing it at
    the same limit again).
    """
    fetcher = consumer._fetcher
    in_line = fetcher._next_partition_records
    if in_line is None:
        return None
    tp = in_line.topic_partition
    subscription = consumer._subscription
    if not subscription.is_assigned(tp):
        return None
    position = subscription.position(tp)
    if position is None:
        return None
    first = last = position.offset
    if isinstance(exc, DecompressionBombError) and exc.last_offset is not None and exc.last_offset >= first:
        # Offsets before the batch's first (control records, compacted gaps) hold no record.
        first = max(first, exc.first_offset if exc.first_offset is not None else first)
        last = min(exc.last_offset, first + max_records - 1)
    in_line.drain()
    fetcher._next_partition_records = None
    fetcher._next_in_line_exception_metadata = None
    consumer.seek(tp, last + 1)
    return tp, range(first, last + 1)


# -- transactions ----------------------------------------------------------------------------------
#
# ``KafkaProducer.commit_transaction``, ``abort_transaction`` and ``send_offsets_to_transaction``
# wait without a deadline. The transaction manager's own calls return a result to wait on instead,
# so every wait can have one (``wait_for_transaction``).


#: How long the sender waits before retrying a refused transactional request: the Java client's
#: wait after a CONCURRENT_TRANSACTIONS refusal (``ADD_PARTITIONS_RETRY_BACKOFF_MS``).
TRANSACTIONAL_RETRY_BACKOFF_MS = 20


def shorten_transactional_retry_backoff(
    producer: KafkaProducer, backoff_ms: int = TRANSACTIONAL_RETRY_BACKOFF_MS
) -> None:
    """Work around kafka-python 3.0.12 pausing 100 ms in a transaction begun right after a commit.

    The first transactional request of a transaction (AddOffsetsToTxn or AddPartitionsToTxn) is
    often refused with CONCURRENT_TRANSACTIONS: the coordinator is still writing the previous
    transaction's markers, a few milliseconds' work. The sender then sleeps its
    ``retry_backoff_ms`` (100 ms by default) on its own thread before the retry, ignoring the 20 ms
    the transaction manager asks for after that refusal (the Java client honours it), and sends
    nothing else meanwhile. Only the sender's copy of the setting is lowered: the record
    accumulator's produce retries keep the producer's ``retry_backoff_ms``. The sender's other
    uses of it are poll timeouts that end early when a response arrives.
    """
    producer._sender.config["retry_backoff_ms"] = backoff_ms


def forget_refused_txn_offsets(producer: KafkaProducer) -> None:
    """Work around a kafka-python 3.0.12 transaction bug that commits a fenced batch's offsets.

    Call before ``begin_transaction``. kafka-python keeps the offsets of a TxnOffsetCommit the
    broker refused (a stale generation: IllegalGeneration, say) and sends them again with the
    *next* transaction's offsets, which commits a fenced batch's offsets without its output: a
    silent loss. A transaction must start with no offsets but its own.
    """
    manager = producer._transaction_manager
    with manager._lock:
        manager._pending_txn_offset_commits.clear()


def send_offsets_to_transaction(
    producer: KafkaProducer, offsets: Mapping[TopicPartition, OffsetAndMetadata], group_metadata: Any
) -> Any:
    """Add ``offsets`` to the open transaction, fenced by ``group_metadata`` (KIP-447), without
    waiting: the result to hand to ``wait_for_transaction``."""
    return producer._transaction_manager.send_offsets_to_transaction(dict(offsets), group_metadata)


def begin_commit(producer: KafkaProducer) -> Any:
    """Start committing the open transaction, without waiting (see ``wait_for_transaction``)."""
    return producer._transaction_manager.begin_commit()


def begin_abort(producer: KafkaProducer) -> Any:
    """Start aborting the open transaction, without waiting (see ``wait_for_transaction``)."""
    return producer._transaction_manager.begin_abort()


def wait_for_transaction(producer: KafkaProducer, result: Any, timeout_ms: int) -> bool:
    """Wait up to ``timeout_ms`` for a result of ``send_offsets_to_transaction``, ``begin_commit``
    or ``begin_abort``: True once it succeeded, False at the deadline; raises its error if it
    failed. The sender is woken first, so the request goes out now rather than at its next poll."""
    producer._sender.wakeup()
    return bool(result.wait(timeout_ms=timeout_ms))


def close_now(producer: KafkaProducer, timeout_s: float = 5.0) -> None:
    """Stop ``producer`` for good without sending what it still holds, waiting up to ``timeout_s``
    for its sender thread to end.

    kafka-python 3.0.12's ``close(timeout=0)`` flushes first and, with a batch still pending,
    raises before it stops anything: the producer goes on retrying. A transactional producer
    left running beside its replacement (same transactional id) retried under the old epoch,
    bumped it, and fenced the replacement. Here the sender is force-closed first (pending and
    in-flight batches fail, no request is sent any more), then awaited, then the producer is
    closed.
    """
    sender = producer._sender
    if sender is not None:
        sender.force_close()
        if sender is not threading.current_thread():
            sender.join(timeout_s)
    with contextlib.suppress(Exception):
        producer.close(timeout=0)


def fenced_by_newer_producer(producer: KafkaProducer, exc: BaseException | None = None) -> bool:
    """True if a newer producer with this transactional id fenced this one: ``exc`` is
    ``ProducerFencedError``, or kafka-python holds one as the producer's fatal error (it does,
    whatever the call that ran into it raised)."""
    manager = producer._transaction_manager
    return isinstance(exc, ProducerFencedError) or (
        manager.has_fatal_error() and isinstance(manager.last_error, ProducerFencedError)
    )


# -- diagnostics -----------------------------------------------------------------------------------


def consumer_diagnostics(consumer: KafkaConsumer) -> dict[str, Any]:
    """The consumer's view of its partitions, for a stall report: what it owns, what is paused,
    positions, what the fetcher holds back, and the state of its group membership. Best effort
    from another thread; read-only. If the internals move under it, says so instead of failing."""
    fetcher = consumer._fetcher
    coordinator = consumer._coordinator
    subscription = consumer._subscription
    try:
        states = {
            tp.partition: {
                "paused": state.paused,
                "position": getattr(state.position, "offset", None),
                "has_valid_position": state.has_valid_position,
                "awaiting_reset": getattr(state, "awaiting_reset", None),
            }
            for tp, state in list(subscription.assignment.items())
        }
        return {
            "partitions": states,
            "fetchable": sorted(tp.partition for tp in subscription.fetchable_partitions()),
            "fetch_pending_to_nodes": sorted(str(n) for n in fetcher._nodes_with_pending_fetch_requests),
            "fetches_in_flight": sum(1 for f in list(fetcher._fetch_futures) if not f.is_done),
            "parked_records": sorted(tp.partition for tp in fetcher._paused_partition_records),
            "parked_fetches": sorted(tp.partition for tp in fetcher._paused_completed_fetches),
            "generation": str(getattr(coordinator, "_generation", None)),
            # A member stuck half way through a rejoin says so here (MemberState.REBALANCING,
            # a join task that never finishes): its commits are refused as "rebalancing".
            "member_state": str(getattr(coordinator, "state", None)),
            "rejoin_needed": getattr(coordinator, "rejoin_needed", None),
            "join_task": _task_state(getattr(coordinator, "_join_task", None)),
            "coordinator_id": getattr(coordinator, "coordinator_id", None),
        }
    except Exception as exc:  # noqa: BLE001 - the internals moved under us: say so, don't fail
        return {"error": f"{type(exc).__name__}: {exc}"}


def _task_state(task: Any) -> str | None:
    """A kafka-python IO-loop task, in words: None, pending, or how it ended."""
    if task is None:
        return None
    if not getattr(task, "is_done", False):
        return f"pending ({getattr(task, 'state', '?')})"
    exception = getattr(task, "exception", None)
    return f"failed: {type(exception).__name__}" if exception is not None else "succeeded"


# -- bounded decompression -------------------------------------------------------------------------


def bound_decompression(consumer: KafkaConsumer, max_bytes: int) -> None:
    """Make ``consumer`` decompress every record batch it reads within ``max_bytes``.

    A batch that would decompress to more makes ``poll`` raise ``DecompressionBombError`` with
    the batch's offsets, its partition's position still on the batch (as for any record
    kafka-python cannot read). Only this consumer changes: other consumers in the process keep
    kafka-python's own parsing. Call it once, right after building the consumer.
    """
    fetcher = consumer._fetcher
    upstream = type(fetcher).PartitionRecords

    def partition_records(
        fetch_offset: int, tp: Any, records: MemoryRecords, *args: Any, **kwargs: Any
    ) -> Any:
        return upstream(fetch_offset, tp, _BoundedRecords(records, max_bytes), *args, **kwargs)

    # Fetcher._parse_fetched_data builds each fetch's records with self.PartitionRecords: an
    # attribute of this fetcher shadows the class's, for this consumer alone.
    fetcher.PartitionRecords = partition_records


def decompress(codec: int, data: bytes | memoryview, max_bytes: int) -> bytes | bytearray:
    """``data`` decompressed as kafka-python's ``kafka.codec`` would, or ``DecompressionBombError``
    (without offsets: a codec knows none) as soon as the output would pass ``max_bytes``."""
    if codec == GZIP:
        return gzip_decode(data, max_bytes)
    if codec == SNAPPY:
        return snappy_decode(data, max_bytes)
    if codec == LZ4:
        return lz4_decode(data, max_bytes)
    if codec == ZSTD:
        return zstd_decode(data, max_bytes)
    raise UnsupportedCodecError(f"Unrecognized compression type: {codec}")


def gzip_decode(data: bytes | memoryview, max_bytes: int) -> bytearray:
    """gzip members one after another, zero padding after them ignored (as ``gzip.GzipFile``)."""
    out = bytearray()
    pending: bytes | memoryview = data
    while pending:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while not inflater.eof:
            chunk = inflater.decompress(pending, _room(out, max_bytes))
            pending = inflater.unconsumed_tail
            if not chunk and not pending:  # input spent, no output: the stream is cut short
                raise CorruptRecordError("gzip data ends before its end-of-stream marker")
            _append(out, chunk, max_bytes)
        pending = inflater.unused_data.lstrip(b"\0")
    return out


def snappy_decode(data: bytes | memoryview, max_bytes: int) -> bytes | bytearray:
    """Raw snappy, or xerial-framed blocks of it. Each block starts with its uncompressed length
    and the decoder refuses a block that does not match it, so the lengths are summed first and
    nothing is decompressed when they pass ``max_bytes``."""
    data = bytes(data)
    if len(data) > _XERIAL_HEADER_BYTES and data.startswith(_XERIAL_MAGIC):
        blocks = _xerial_blocks(data)
        if sum(map(_snappy_length, blocks)) > max_bytes:
            raise DecompressionBombError(max_bytes)
        out = bytearray()
        for block in blocks:
            out += snappy.decompress(block)
        return out
    if _snappy_length(data) > max_bytes:
        raise DecompressionBombError(max_bytes)
    return snappy.decompress(data)


def lz4_decode(data: bytes | memoryview, max_bytes: int) -> bytearray:
    """The first LZ4 frame; bytes after it are ignored, as ``lz4.frame.decompress`` does."""
    out = bytearray()
    frame = lz4.frame.LZ4FrameDecompressor()
    pending: bytes | memoryview = data
    while not frame.eof:
        chunk = frame.decompress(pending, max_length=_room(out, max_bytes))
        pending = b""  # the decompressor keeps what it has not used yet
        if not chunk and not frame.eof:
            raise CorruptRecordError("lz4 frame ends before its end mark")
        _append(out, chunk, max_bytes)
    return out


def zstd_decode(data: bytes | memoryview, max_bytes: int) -> bytearray:
    """Every zstd frame in ``data``, read a chunk at a time (never sized by a frame's claimed
    content size, which ``ZstdDecompressor.decompress`` would allocate up front). The decoder's
    window (zstd caps it at 128 MiB) is touched only as output is written, so no further than
    ``max_bytes`` either."""
    out = bytearray()
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
        while chunk := reader.read(_room(out, max_bytes)):
            _append(out, chunk, max_bytes)
    return out


def _room(out: bytearray, max_bytes: int) -> int:
    """How much to ask a codec for next: one byte past the limit tells a bomb from a fit."""
    return min(_CHUNK_BYTES, max_bytes + 1 - len(out))


def _append(out: bytearray, chunk: bytes, max_bytes: int) -> None:
    out += chunk
    if len(out) > max_bytes:
        # Freed here, not when ``out`` goes: the exception's traceback keeps the decoder's frame
        # (and so ``out``) alive, and kafka-python may hold the exception until the next poll
        # (``PartitionRecords._next_inline_exception``), in a reference cycle only the garbage
        # collector breaks: the next bomb would be decompressed while this one is still held.
        out.clear()
        raise DecompressionBombError(max_bytes)


def _xerial_blocks(data: bytes) -> list[bytes]:
    """The raw snappy blocks of a xerial stream: after its header, int32 length and block, repeated."""
    blocks, pos = [], _XERIAL_HEADER_BYTES
    while pos < len(data):
        if pos + 4 > len(data):
            raise CorruptRecordError("xerial snappy stream ends inside a block length")
        (size,) = struct.unpack_from(">i", data, pos)
        pos += 4
        if size < 0 or pos + size > len(data):
            raise CorruptRecordError(f"xerial snappy block of {size} bytes does not fit the stream")
        blocks.append(data[pos : pos + size])
        pos += size
    return blocks


def _snappy_length(block: bytes) -> int:
    """The uncompressed length a raw snappy block starts with (a little-endian base-128 varint)."""
    length = 0
    for i, byte in enumerate(block[:5]):
        length |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return length
    raise CorruptRecordError("snappy block does not start with its uncompressed length")


class _BoundedRecords:
    """The batches of one fetch response (a ``MemoryRecords``), compressed ones bounded.

    ``PartitionRecords._unpack_records`` only calls ``next_batch``; the fetcher still asks the
    ``MemoryRecords`` itself about what is left, which stays in step: this moves it on."""

    def __init__(self, records: MemoryRecords, max_bytes: int) -> None:
        self._records, self._max_bytes = records, max_bytes

    def next_batch(self) -> Any:
        buffer = self._records._next_slice  # taken before upstream checks the batch and moves on
        batch = self._records.next_batch()
        if batch is None or not batch.compression_type:
            return batch
        # Built again from the same bytes: for v2, one more copy of the compressed batch.
        if batch.magic >= 2:
            return _BoundedDefaultRecordBatch(buffer, self._max_bytes)
        return _BoundedLegacyRecordBatch(buffer, batch.magic, self._max_bytes)


class _BoundedDefaultRecordBatch(DefaultRecordBatch):
    """A message format v2 batch whose decompression stops at ``max_bytes``."""

    # Upstream's slots, as this class uses them (kafka-python has no type hints).
    _buffer: bytes | bytearray
    _pos: int
    _decompressed: bool

    def __init__(self, buffer: memoryview, max_bytes: int) -> None:
        super().__init__(buffer)
        self._max_bytes = max_bytes

    def _maybe_uncompress(self) -> None:
        if not self._decompressed and self.compression_type != self.CODEC_NONE:
            self._assert_has_codec(self.compression_type)
            compressed = memoryview(self._buffer)[self._pos :]
            try:
                # bytes or bytearray: the record reader only slices and indexes it.
                self._buffer = decompress(self.compression_type, compressed, self._max_bytes)
            except DecompressionBombError:
                raise DecompressionBombError(self._max_bytes, self.base_offset, self.last_offset) from None
            self._pos = 0
        self._decompressed = True


class _BoundedLegacyRecordBatch(LegacyRecordBatch):
    """A message format v0 or v1 wrapper message whose decompression stops at ``max_bytes``."""

    def __init__(self, buffer: memoryview, magic: int, max_bytes: int) -> None:
        super().__init__(buffer, magic)
        self._max_bytes = max_bytes

    def _decompress(self, key_offset: int) -> bytes | bytearray:
        _, compressed = self._read_key_value(key_offset)
        if compressed is None:
            raise CorruptRecordError("Value of compressed message is None")
        codec = self.compression_type
        self._assert_has_codec(codec)
        if codec == LZ4 and self._magic == 0:
            # kafka-python fixes these frames' header checksum with xxhash, not among its extras.
            raise UnsupportedCodecError(
                "LZ4 batches in message format v0 (Kafka 0.8/0.9 producers) are not read: "
                "their frame header checksum is wrong by design"
            )
        try:
            return decompress(codec, compressed, self._max_bytes)
        except DecompressionBombError:
            # v0 and v1 wrappers carry the offset of their last inner record only.
            raise DecompressionBombError(self._max_bytes, last_offset=self.base_offset) from None


# -- the self-check -------------------------------------------------------------------------------


def _internal(path: str) -> Any:
    """A kafka-python internal by its dotted path (``module:Class.attribute``)."""
    module, _, name = path.partition(":")
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


def _calls(path: str, name: str) -> bool:
    """The function at ``path`` names ``name`` in its code: for ``__init__``, an attribute it
    sets (a ``self.name = ...`` is stored by name); elsewhere, one it reads or calls."""
    return name in _internal(path).__code__.co_names


def _slots(path: str, *names: str) -> bool:
    return set(names) <= set(_internal(path).__slots__)


def _has(path: str, *names: str) -> bool:
    found = _internal(path)
    return all(hasattr(found, name) for name in names)


#: What this module touches, in words, and how to tell it is still there. Private attributes set
#: in ``__init__`` are looked for among the names its code stores (they exist only on instances).
_EXPECTATIONS: dict[str, Callable[[], bool]] = {
    # consumer group
    "KafkaConsumer keeps _fetcher, _subscription and _coordinator": lambda: all(
        _calls("kafka:KafkaConsumer.__init__", name) for name in ("_fetcher", "_subscription", "_coordinator")
    ),
    "BaseCoordinator keeps _net, _generation, _join_task, state, rejoin_needed, coordinator_id, _lock": lambda: (
        all(
            _calls("kafka.coordinator.base:BaseCoordinator.__init__", name)
            for name in (
                "_net",
                "_generation",
                "_join_task",
                "state",
                "rejoin_needed",
                "coordinator_id",
                "_lock",
            )
        )
    ),
    "BaseCoordinator has request_rejoin": lambda: _has(
        "kafka.coordinator.base:BaseCoordinator", "request_rejoin"
    ),
    "MemberState.REBALANCING": lambda: _has("kafka.structs:MemberState", "REBALANCING"),
    "NetworkSelector.sleep (awaited on the IO loop)": lambda: _has(
        "kafka.net.selector:NetworkSelector", "sleep"
    ),
    "ConsumerCoordinator keeps its assignors as _assignors": lambda: _calls(
        "kafka.coordinator.consumer:ConsumerCoordinator.__init__", "_assignors"
    ),
    "ConsumerCoordinator._commit_offsets_sync_async(offsets, timeout_ms), a coroutine": lambda: (
        inspect.iscoroutinefunction(
            _internal("kafka.coordinator.consumer:ConsumerCoordinator._commit_offsets_sync_async")
        )
        and list(
            inspect.signature(
                _internal("kafka.coordinator.consumer:ConsumerCoordinator._commit_offsets_sync_async")
            ).parameters
        )[:3]
        == ["self", "offsets", "timeout_ms"]
    ),
    "StickyPartitionAssignor keeps member_assignment, read by CooperativeStickyAssignor.metadata": lambda: (
        _calls(
            "kafka.coordinator.assignors.sticky.sticky_assignor:StickyPartitionAssignor.__init__",
            "member_assignment",
        )
        and _calls(
            "kafka.coordinator.assignors.cooperative_sticky:CooperativeStickyAssignor.metadata",
            "member_assignment",
        )
    ),
    "SubscriptionState keeps assignment and has assigned_partitions, fetchable_partitions, "
    "is_assigned, is_paused, position": lambda: (
        _calls("kafka.consumer.subscription_state:SubscriptionState.__init__", "assignment")
        and _has(
            "kafka.consumer.subscription_state:SubscriptionState",
            "assigned_partitions",
            "fetchable_partitions",
            "is_assigned",
            "is_paused",
            "position",
        )
    ),
    "TopicPartitionState keeps paused and has position and has_valid_position": lambda: (
        _calls("kafka.consumer.subscription_state:TopicPartitionState.__init__", "paused")
        and _has("kafka.consumer.subscription_state:TopicPartitionState", "position", "has_valid_position")
    ),
    # fetcher
    "Fetcher keeps _next_partition_records, _next_in_line_exception_metadata, "
    "_paused_partition_records, _paused_completed_fetches, _fetch_futures, "
    "_nodes_with_pending_fetch_requests": lambda: all(
        _calls("kafka.consumer.fetcher:Fetcher.__init__", name)
        for name in (
            "_next_partition_records",
            "_next_in_line_exception_metadata",
            "_paused_partition_records",
            "_paused_completed_fetches",
            "_fetch_futures",
            "_nodes_with_pending_fetch_requests",
        )
    ),
    "Fetcher.PartitionRecords keeps topic_partition and has drain": lambda: (
        _calls("kafka.consumer.fetcher:Fetcher.PartitionRecords.__init__", "topic_partition")
        and _has("kafka.consumer.fetcher:Fetcher.PartitionRecords", "drain")
    ),
    "Fetcher._parse_fetched_data builds records with self.PartitionRecords": lambda: _calls(
        "kafka.consumer.fetcher:Fetcher._parse_fetched_data", "PartitionRecords"
    ),
    "PartitionRecords._unpack_records reads batches with next_batch": lambda: _calls(
        "kafka.consumer.fetcher:Fetcher.PartitionRecords._unpack_records", "next_batch"
    ),
    "MemoryRecords keeps the next batch's bytes as _next_slice": lambda: _slots(
        "kafka.record.memory_records:MemoryRecords", "_next_slice"
    ),
    "DefaultRecordBatch.__iter__ decompresses with _maybe_uncompress": lambda: _calls(
        "kafka.record.default_records:DefaultRecordBatch.__iter__", "_maybe_uncompress"
    ),
    "DefaultRecordBatch has _buffer, _pos and _decompressed": lambda: _slots(
        "kafka.record.default_records:DefaultRecordBatch", "_buffer", "_pos", "_decompressed"
    ),
    "LegacyRecordBatch.__iter__ decompresses with _decompress": lambda: _calls(
        "kafka.record.legacy_records:LegacyRecordBatch.__iter__", "_decompress"
    ),
    "LegacyRecordBatch has _read_key_value and _magic": lambda: (
        _has("kafka.record.legacy_records:LegacyRecordBatch", "_read_key_value")
        and _slots("kafka.record.legacy_records:LegacyRecordBatch", "_magic")
    ),
    # transactions
    "KafkaProducer keeps _sender and _transaction_manager": lambda: all(
        _calls("kafka:KafkaProducer.__init__", name) for name in ("_sender", "_transaction_manager")
    ),
    "Sender.wakeup": lambda: _has("kafka.producer.sender:Sender", "wakeup"),
    "Sender.force_close": lambda: _has("kafka.producer.sender:Sender", "force_close"),
    "Sender keeps config; its transactional retry sleeps config['retry_backoff_ms']": lambda: (
        _calls("kafka.producer.sender:Sender.__init__", "config")
        and _calls("kafka.producer.sender:Sender._maybe_send_pending_request", "sleep")
    ),
    "TransactionManager keeps _lock and _pending_txn_offset_commits": lambda: all(
        _calls("kafka.producer.transaction_manager:TransactionManager.__init__", name)
        for name in ("_lock", "_pending_txn_offset_commits")
    ),
    "TransactionManager has send_offsets_to_transaction, begin_commit, begin_abort, "
    "has_fatal_error, last_error": lambda: _has(
        "kafka.producer.transaction_manager:TransactionManager",
        "send_offsets_to_transaction",
        "begin_commit",
        "begin_abort",
        "has_fatal_error",
        "last_error",
    ),
    "TransactionalRequestResult.wait(timeout_ms)": lambda: (
        "timeout_ms"
        in inspect.signature(
            _internal("kafka.producer.transaction_manager:TransactionalRequestResult.wait")
        ).parameters
    ),
}


def self_check() -> None:
    """Raise ``ImportError`` if the installed kafka-python lacks an internal this module touches,
    naming the installed version, each one missing, and the versions known to work. Called at
    import; cheap (no client is built)."""
    missing = []
    for expectation, holds in _EXPECTATIONS.items():
        try:
            if not holds():
                missing.append(expectation)
        except (AttributeError, ImportError, TypeError, ValueError):
            missing.append(expectation)
    if missing:
        raise ImportError(
            "clstream's kafka-python workarounds (workers/kafka_compat.py) were written for "
            f"kafka-python {', '.join(KNOWN_GOOD_VERSIONS)} (known to work), and the installed "
            f"kafka-python {kafka.__version__} no longer has: {'; '.join(missing)}. Install "
            "kafka-python>=3.0.12,<3.1 (pyproject.toml) or port the workarounds."
        )


self_check()
