"""Bounded decompression: every codec kafka-python reads, and the batches a bounded consumer parses.

Payloads are compressed with kafka-python's own encoders (``kafka.codec``), as its producer
would. "Without allocating the whole": tracemalloc sees every buffer the codecs hand to Python,
and a 64 MiB bomb against a 1 MiB limit must peak under 4 MiB.
"""

from __future__ import annotations

import socket
import struct
import threading
import tracemalloc
from collections.abc import Callable, Iterator

import kafka
import pytest
import snappy
from kafka import KafkaConsumer, TopicPartition
from kafka import codec as kafka_codec
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.producer.transaction_manager import TransactionManager
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.structs import MemberState

from schemas.errors import DecompressionBombError
from workers import kafka_compat
from workers.kafka_compat import GZIP, LZ4, SNAPPY, ZSTD, bound_decompression, decompress

MIB = 1024**2
#: (name, codec id, encoder): xerial-framed snappy is what kafka-python and Java produce; raw
#: snappy is what some other producers send, and kafka-python reads both.
ENCODINGS: list[tuple[str, int, Callable[[bytes], bytes]]] = [
    ("gzip", GZIP, kafka_codec.gzip_encode),
    ("snappy-xerial", SNAPPY, kafka_codec.snappy_encode),
    ("snappy-raw", SNAPPY, lambda data: kafka_codec.snappy_encode(data, xerial_compatible=False)),
    ("lz4", LZ4, kafka_codec.lz4_encode),
    ("zstd", ZSTD, kafka_codec.zstd_encode),
]
TEXT = b'{"id": "1", "text": "what a great flight, thanks!"}' * 40_000  # ~2 MiB, compresses well


@pytest.mark.parametrize(("name", "codec", "encode"), ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_within_the_limit_the_data_comes_back_exactly(name, codec, encode):
    compressed = encode(TEXT)
    assert bytes(decompress(codec, compressed, len(TEXT))) == TEXT
    assert bytes(decompress(codec, memoryview(compressed), 64 * MIB)) == TEXT


@pytest.mark.parametrize(("name", "codec", "encode"), ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_one_byte_past_the_limit_raises(name, codec, encode):
    with pytest.raises(DecompressionBombError, match="workers.max_decompressed_batch_bytes=") as raised:
        decompress(codec, encode(TEXT), len(TEXT) - 1)
    assert raised.value.max_bytes == len(TEXT) - 1


@pytest.mark.parametrize(("name", "codec", "encode"), ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_a_bomb_raises_without_allocating_the_whole(name, codec, encode):
    bomb = encode(bytes(64 * MIB))
    tracemalloc.start()
    try:
        with pytest.raises(DecompressionBombError):
            decompress(codec, bomb, MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB, f"{name}: {peak / MIB:.1f} MiB allocated to refuse a 64 MiB bomb at 1 MiB"


def test_a_snappy_block_that_claims_less_than_it_holds_is_refused():
    """The claimed lengths bound what snappy may allocate only if the decoder holds a block to
    its claim: a block of 1 MiB that claims 1,000 bytes must fail, not grow."""
    block = snappy.compress(bytes(MIB))
    lying = bytes([0xE8, 0x07]) + block[3:]  # 1,000 as a varint, in place of 1 MiB's 3 bytes
    with pytest.raises(snappy.UncompressError):
        decompress(SNAPPY, lying, 64 * MIB)


@pytest.mark.parametrize(
    ("codec", "encode"), [(GZIP, kafka_codec.gzip_encode), (LZ4, kafka_codec.lz4_encode)], ids=["gzip", "lz4"]
)
def test_a_stream_cut_short_is_an_error_not_a_hang(codec, encode):
    compressed = encode(TEXT)
    with pytest.raises(CorruptRecordError, match="ends before"):
        decompress(codec, compressed[: len(compressed) // 2], 64 * MIB)


def test_gzip_members_one_after_another_are_read_like_kafka_python():
    two = kafka_codec.gzip_encode(b"first ") + kafka_codec.gzip_encode(b"second") + b"\0\0"
    assert bytes(decompress(GZIP, two, MIB)) == kafka_codec.gzip_decode(two) == b"first second"


def _batch(magic: int, codec: int, values: list[bytes], offset: int = 0) -> bytes:
    """One batch as a broker stores it from ``offset`` on: the producer's batch, with the offset
    the broker writes over its first 8 bytes (outside the CRC): v2, the batch's first offset;
    a v0/v1 wrapper message, its last inner record's."""
    builder = MemoryRecordsBuilder(magic=magic, compression_type=codec, batch_size=1024 * MIB)
    for value in values:
        assert builder.append(timestamp=0, key=None, value=value) is not None
    builder.close()
    stored = offset if magic == 2 else offset + len(values) - 1
    return struct.pack(">q", stored) + bytes(builder.buffer())[8:]


@pytest.fixture
def silent_bootstrap() -> Iterator[str]:
    """An address that accepts connections and never answers. No broker is needed (nothing is
    fetched), but a refused address would not do: kafka-python leaves the socket of a refused
    connection open, and the test run fails on unclosed resources."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def consumers(silent_bootstrap):
    """Two consumers, bounded at 1 MiB and 8 MiB."""
    built = [KafkaConsumer(bootstrap_servers=silent_bootstrap, api_version=(3, 0)) for _ in range(2)]
    bound_decompression(built[0], MIB)
    bound_decompression(built[1], 8 * MIB)
    yield built
    for consumer in built:
        consumer.close()


def _parse(consumer: KafkaConsumer, data: bytes, fetch_offset: int = 0) -> list:
    """What the consumer's fetcher makes of ``data`` as a fetch response's records."""
    parsed = consumer._fetcher.PartitionRecords(fetch_offset, TopicPartition("t", 0), MemoryRecords(data))
    return parsed.take()


@pytest.mark.parametrize("magic", [1, 2])
def test_each_consumer_reads_batches_within_its_own_limit(consumers, magic):
    small, large = consumers
    values = [bytes(MIB)] * 2  # 2 MiB and a little framing, decompressed
    data = _batch(magic, GZIP, values, offset=40)
    with pytest.raises(DecompressionBombError) as raised:
        _parse(small, data, fetch_offset=40)
    if magic == 2:
        assert (raised.value.first_offset, raised.value.last_offset) == (40, 41)
        assert "at offsets 40-41" in str(raised.value)
    else:  # a v1 wrapper message knows its last inner offset only
        assert (raised.value.first_offset, raised.value.last_offset) == (None, 41)
    records = _parse(large, data, fetch_offset=40)
    assert [(r.offset, r.value) for r in records] == [(40, values[0]), (41, values[1])]


def test_uncompressed_batches_and_other_consumers_are_left_to_kafka_python(consumers, silent_bootstrap):
    other = KafkaConsumer(bootstrap_servers=silent_bootstrap, api_version=(3, 0))
    try:
        assert "PartitionRecords" not in vars(other._fetcher)
        data = _batch(2, GZIP, [bytes(2 * MIB)])
        assert [len(r.value) for r in _parse(other, data)] == [2 * MIB]
    finally:
        other.close()
    plain = _batch(2, 0, [bytes(2 * MIB)])  # not compressed: no decompression to bound
    assert [len(r.value) for r in _parse(consumers[0], plain)] == [2 * MIB]


def test_records_before_a_bomb_in_the_same_fetch_are_returned_first(consumers):
    data = _batch(2, GZIP, [b"a", b"b"]) + _batch(2, GZIP, [bytes(2 * MIB)], offset=2)
    parsed = consumers[0]._fetcher.PartitionRecords(0, TopicPartition("t", 0), MemoryRecords(data))
    assert [r.value for r in parsed.take()] == [b"a", b"b"]
    with pytest.raises(DecompressionBombError, match="at offsets 2-2"):
        parsed.take()


def test_the_installed_kafka_python_has_every_internal_the_compat_module_touches():
    kafka_compat.self_check()


def test_the_import_check_names_what_is_missing_and_the_installed_version(monkeypatch):
    """An upgrade whose fetcher no longer builds records through ``self.PartitionRecords`` would
    make the bound a silent no-op: the check refuses it by name, with the installed version."""
    monkeypatch.setattr(Fetcher, "_parse_fetched_data", lambda self, completed_fetch: None)
    with pytest.raises(
        ImportError, match=r"kafka-python 3\.0\.\d+ no longer has: Fetcher._parse_fetched_data"
    ):
        kafka_compat.self_check()


def test_the_import_check_names_a_missing_private_attribute_and_the_versions_known_to_work(monkeypatch):
    """A private attribute a workaround reads (here the transaction manager's pending offsets)
    gone in an upgrade fails the check, not a transaction in an actor."""
    monkeypatch.setattr(TransactionManager.__init__, "__code__", (lambda self: None).__code__)
    with pytest.raises(ImportError) as raised:
        kafka_compat.self_check()
    message = str(raised.value)
    assert "TransactionManager keeps _lock and _pending_txn_offset_commits" in message
    assert f"installed kafka-python {kafka.__version__}" in message
    assert "kafka-python 3.0.12 (known to work)" in message


class _CompletesAsStateIsRead:
    """A consumer's real coordinator, except that reading ``state`` lets the IO thread finish the
    join at that very moment, as it can between two reads on another thread: it sets
    ``rejoin_needed`` False and ``state`` STABLE under the coordinator's lock, as kafka-python's
    ``join_group_async`` does. The read still returns the state from before (REBALANCING)."""

    def __init__(self, coordinator) -> None:
        self._real = coordinator
        self.finisher: threading.Thread | None = None

    def __getattr__(self, name):
        return getattr(self._real, name)

    @property
    def state(self):
        seen = self._real.state
        if self.finisher is None:

            def finish_join() -> None:
                with self._real._lock:
                    self._real.rejoin_needed = False
                    self._real.state = MemberState.STABLE

            self.finisher = threading.Thread(target=finish_join)
            self.finisher.start()
            self.finisher.join(timeout=0.5)  # done at once unless the caller holds the lock
        return seen


def test_a_join_that_completes_between_the_checks_is_not_rejoined(silent_bootstrap):
    """``finish_interrupted_join`` reads the member state, then ``rejoin_needed``. A first join in
    progress has both REBALANCING and ``rejoin_needed`` True; if the join completes between the two
    reads, the check saw REBALANCING and then False, and asked for a rejoin: a leader that rejoins
    makes the broker rebalance again (a CI run of
    test_kafka_source.py::test_a_member_alone_in_a_new_group_joins_it_with_one_rebalance saw
    generation 2)."""
    consumer = KafkaConsumer(bootstrap_servers=silent_bootstrap, api_version=(3, 0), group_id="g")
    try:
        coordinator = consumer._coordinator
        coordinator.state = MemberState.REBALANCING
        coordinator.rejoin_needed = True  # a first join, under way
        racing = _CompletesAsStateIsRead(coordinator)
        consumer._coordinator = racing
        kafka_compat.finish_interrupted_join(consumer)
        racing.finisher.join(timeout=5)
        assert coordinator.state == MemberState.STABLE
        assert coordinator.rejoin_needed is False, "a rejoin was asked for after the join completed"
    finally:
        consumer._coordinator = coordinator
        consumer.close()
