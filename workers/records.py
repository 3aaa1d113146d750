"""Transport-neutral record types passed between the Kafka source/sink and the loop."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Kafka allows null header values; a consumer hands them over as None.
Headers = list[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as consumed: bytes exactly as they were on the input topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    timestamp_ms: int = -1
    #: Set when the consumer could not read the record at this offset at all (a corrupt batch, a
    #: codec it lacks, a header key that is not UTF-8, a batch that would decompress past
    #: ``workers.max_decompressed_batch_bytes``): what went wrong. Key, value and headers
    #: are then unknown (None, None, []); the record is dead-lettered by its coordinates.
    unreadable: str | None = None


@dataclass(frozen=True, slots=True)
class OutboundRecord:
    """One record to produce, to the output topic or the dead-letter topic."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
