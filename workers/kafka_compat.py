"""clstream's private access to kafka-python 3.0.12 internals, in one place.

Issue 14 moves every private kafka-python access here (``workers/kafka_io.py`` still holds the
older ones). Each workaround says what it works around, and at import this module checks that
the internals it touches are still there, failing with the installed kafka-python's version if
not: an upgrade breaks loudly here, never silently in the actor.

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

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import kafka
import lz4.frame
import snappy
import zstandard
from kafka import KafkaConsumer
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError, UnsupportedCodecError
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.legacy_records import LegacyRecordBatch
from kafka.record.memory_records import MemoryRecords

from schemas.errors import DecompressionBombError

#: Codec ids in a batch's attributes; the same in message formats v0, v1 and v2.
GZIP, SNAPPY, LZ4, ZSTD = 1, 2, 3, 4
#: Output is taken from a codec at most this much at a time: the batch so far and one chunk are
#: all that is ever held, never the batch twice over.
_CHUNK_BYTES = 1024**2
#: A xerial-framed snappy stream (Kafka's Java producer) starts with these 8 bytes, then two int32.
_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER_BYTES = 16


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


def _check_internals() -> None:
    """Fail at import if kafka-python no longer has what ``bound_decompression`` relies on."""

    def calls(function: Callable[..., Any], name: str) -> bool:
        return name in function.__code__.co_names

    expectations: dict[str, Callable[[], bool]] = {
        "KafkaConsumer keeps its fetcher as _fetcher": lambda: calls(KafkaConsumer.__init__, "_fetcher"),
        "Fetcher._parse_fetched_data builds records with self.PartitionRecords": lambda: calls(
            Fetcher._parse_fetched_data, "PartitionRecords"
        ),
        "PartitionRecords._unpack_records reads batches with next_batch": lambda: calls(
            Fetcher.PartitionRecords._unpack_records, "next_batch"
        ),
        "MemoryRecords keeps the next batch's bytes as _next_slice": lambda: (
            "_next_slice" in MemoryRecords.__slots__
        ),
        "DefaultRecordBatch.__iter__ decompresses with _maybe_uncompress": lambda: calls(
            DefaultRecordBatch.__iter__, "_maybe_uncompress"
        ),
        "DefaultRecordBatch has _buffer, _pos and _decompressed": lambda: (
            {"_buffer", "_pos", "_decompressed"} <= set(DefaultRecordBatch.__slots__)
        ),
        "LegacyRecordBatch.__iter__ decompresses with _decompress": lambda: calls(
            LegacyRecordBatch.__iter__, "_decompress"
        ),
        "LegacyRecordBatch has _read_key_value and _magic": lambda: (
            hasattr(LegacyRecordBatch, "_read_key_value") and "_magic" in LegacyRecordBatch.__slots__
        ),
    }
    missing = []
    for expectation, holds in expectations.items():
        try:
            if not holds():
                missing.append(expectation)
        except AttributeError:
            missing.append(expectation)
    if missing:
        raise ImportError(
            f"clstream's kafka-python workarounds (workers/kafka_compat.py) were written for "
            f"kafka-python 3.0.12, and the installed kafka-python {kafka.__version__} no longer has: "
            f"{'; '.join(missing)}. Install kafka-python>=3.0.12,<3.1 (pyproject.toml) or port them."
        )


_check_internals()
