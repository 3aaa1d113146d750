"""Header names on dead-letter records.

A dead-letter record carries the original key, value and headers byte for byte, plus these
headers saying where it came from and what was wrong with it. Values are UTF-8 text.
"""

from __future__ import annotations

from enum import Enum


class DlqHeader(str, Enum):
    SOURCE_TOPIC = "clstream.source.topic"
    SOURCE_PARTITION = "clstream.source.partition"
    SOURCE_OFFSET = "clstream.source.offset"
    #: A short machine-readable class, e.g. ``InvalidJson``, ``SchemaMismatch``, ``NonUtf8``.
    ERROR_CLASS = "clstream.error.class"
    #: A human-readable sentence saying what was wrong (never the payload itself).
    ERROR_MESSAGE = "clstream.error.message"
    #: Where it failed: ``decode`` or ``classify``.
    ERROR_STAGE = "clstream.error.stage"
    FAILED_AT = "clstream.failed_at"
    #: Only when the original had nulls kafka-python cannot produce: ``key`` (key and value both
    #: null) and/or ``header:<index>`` (a null header value); the copy has ``b""`` in their place.
    SOURCE_NULLS = "clstream.source.nulls"
    #: Only on a copy cut to fit ``topics.dlq_max_record_bytes``: what was cut and its original
    #: size in bytes, e.g. ``value=1046000`` or ``value=1046000,headers=2048`` (``value`` and
    #: ``key`` keep their first bytes; ``headers``: the original headers were left out). The
    #: whole record is still at the source coordinates until the input topic's retention.
    TRUNCATED = "clstream.source.truncated"


#: Not a dead-letter header: ``clstream dlq replay`` adds it to a re-sent record, after its original
#: headers, as ``<dlq topic>/<partition>/<offset>`` of the dead letter it came from. A record that
#: fails again keeps it among its original headers, so their count is how often it was replayed.
REPLAYED_FROM = "clstream.replayed-from"
