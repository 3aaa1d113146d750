"""The poison-input catalogue shared by the decode unit tests and the pipeline integration test.

Each case is a record as a hostile or careless producer might send it, with the verdict clstream
must reach: an error class (the record is dead-lettered once, with its original key, value and
headers byte for byte) or ``None`` (a valid tweet, classified like any other).

What counts as bad, and why:

- Not JSON, or JSON that is not an object with a string/integer ``id`` and a string ``text``
  (truncated, trailing garbage, an array, missing/null/numeric text, a ``true`` id, nesting past
  the parser's recursion limit, a UTF-8 byte-order mark, which RFC 8259 forbids producers to add).
- Not UTF-8: Latin-1 bytes, and lone surrogates both as raw (CESU-style) bytes and as ``\\ud800``
  escapes: a lone surrogate cannot be encoded to UTF-8 again, so it could never be written out.
- Text with nothing visible (empty, whitespace, zero-width, control-only, bidi controls only):
  there is nothing to classify, and a label would be noise.
- Text over ``MAX_TEXT_CHARS`` (a ~1 MB text): not a post on any network, and the tokenizer
  splits the whole text before truncating (~1.2 s per MB on one core), so one such record
  would stall its batch.
- Tombstones (null value) and empty values.

Valid, and classified: emoji, RTL and combining-mark floods, a single 100,000-character word
(the tokenizer maps it to one [UNK]), a 25,000-character post, a surrogate *pair* escape, NUL
inside text, a null key, duplicate ids (two records, two labels), unknown fields and unusual
metadata types, and any headers at all, including binary values, repeated keys and spoofed
``clstream.*`` DLQ headers: headers are carried, never interpreted.

Nulls kafka-python cannot produce (a null key with a null value, a null header value) are copied to
the DLQ as ``b""`` with a ``clstream.source.nulls`` header naming them (see ``workers.kafka_io``).
Not in the catalogue: a header *key* that is not UTF-8. kafka-python's consumer raises
``CorruptRecordError`` on it and then spins in ``poll``; the record cannot even be read (see the
issue 5 report).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from schemas.dlq import DlqHeader


@dataclass(frozen=True)
class PoisonCase:
    name: str
    value: bytes | None
    #: The DLQ error class, or None for a valid tweet that must be classified.
    verdict: str | None
    key: bytes | None = b"poison-key"
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)

    @property
    def needs_kcat(self) -> bool:
        """kafka-python cannot produce a null key with a null value, nor a null header value."""
        return (self.key is None and self.value is None) or any(v is None for _, v in self.headers)


def _tweet(record_id: str, text: str, **extra: object) -> bytes:
    return json.dumps({"id": record_id, "text": text, **extra}).encode()


SPOOFED_HEADERS = [
    (DlqHeader.SOURCE_TOPIC.value, b"spoofed-topic"),
    (DlqHeader.SOURCE_PARTITION.value, b"77"),
    (DlqHeader.SOURCE_OFFSET.value, b"123456"),
    (DlqHeader.ERROR_CLASS.value, b"Spoofed"),
]
ODD_HEADERS = [("bin", b"\x00\xff\xfe\x80"), ("dup", b"first"), ("dup", b"second"), ("empty", b"")]

CATALOGUE: list[PoisonCase] = [
    # -- bad: invalid JSON
    PoisonCase("truncated-json", b'{"id": "p-trunc", "text": "trunc', "InvalidJson"),
    PoisonCase("trailing-garbage", b'{"id": "p-trail", "text": "ok"} trailing', "InvalidJson"),
    PoisonCase("deep-nesting", b"[" * 5_000 + b"]" * 5_000, "InvalidJson"),
    PoisonCase("utf8-bom", b'\xef\xbb\xbf{"id": "p-bom", "text": "bom"}', "InvalidJson"),
    PoisonCase("escaped-lone-high-surrogate", b'{"id": "p-sur1", "text": "a\\ud800b"}', "InvalidJson"),
    PoisonCase("escaped-lone-low-surrogate", b'{"id": "p-sur2", "text": "a\\udc00"}', "InvalidJson"),
    # -- bad: valid JSON, wrong shape
    PoisonCase("array", b'[{"id": "p-arr", "text": "x"}]', "SchemaMismatch"),
    PoisonCase("string", b'"just text"', "SchemaMismatch"),
    PoisonCase("missing-text", b'{"id": "p-miss"}', "SchemaMismatch"),
    PoisonCase("null-text", b'{"id": "p-null", "text": null}', "SchemaMismatch"),
    PoisonCase("numeric-text", b'{"id": "p-num", "text": 42}', "SchemaMismatch"),
    PoisonCase("missing-id", b'{"text": "no id"}', "SchemaMismatch"),
    PoisonCase("boolean-id", b'{"id": true, "text": "x"}', "SchemaMismatch"),
    PoisonCase("overlong-id", _tweet("i" * 300, "x"), "SchemaMismatch"),
    # -- bad: not UTF-8
    PoisonCase("latin1", b'{"id": "p-lat", "text": "caf\xe9"}', "NonUtf8"),
    PoisonCase("raw-lone-surrogate", b'{"id": "p-raw", "text": "a\xed\xa0\x80b"}', "NonUtf8"),
    # -- bad: nothing visible to classify
    PoisonCase("empty-text", _tweet("p-empty", ""), "EmptyText"),
    PoisonCase("whitespace-text", _tweet("p-ws", " \t\n\u00a0\u3000"), "EmptyText"),
    PoisonCase("zero-width-text", _tweet("p-zw", "\u200b\u200c\u200d\u2060\ufeff"), "EmptyText"),
    PoisonCase("control-text", _tweet("p-ctl", "\u0000\u0007\u001b\u007f"), "EmptyText"),
    PoisonCase("bidi-controls-only", _tweet("p-bidi0", "\u202e\u2066\u2067\u2069\u200f"), "EmptyText"),
    # -- bad: too long to be a post
    PoisonCase("one-megabyte-text", _tweet("p-1mb", "spam " * 200_000), "TextTooLong"),
    # -- bad: no value
    PoisonCase("tombstone", None, "Tombstone"),
    PoisonCase("empty-value", b"", "EmptyValue"),
    PoisonCase("tombstone-null-key", None, "Tombstone", key=None),
    # -- bad, with headers that must survive byte for byte
    PoisonCase("bad-with-spoofed-dlq-headers", b"{not json", "InvalidJson", headers=SPOOFED_HEADERS),
    PoisonCase("bad-with-odd-headers", b"\xff\xfe", "NonUtf8", headers=ODD_HEADERS),
    PoisonCase(
        "bad-with-null-header-value", b"{not json", "InvalidJson", headers=[("nul", None), ("x", b"1")]
    ),
    # -- valid: classified like any tweet
    PoisonCase("emoji-flood", _tweet("v-emoji", "😀🔥💯" * 3_000), None),
    PoisonCase("rtl-bidi", _tweet("v-rtl", "\u202bשלום עולם مرحبا بالعالم\u202c \u2067abc\u2069"), None),
    PoisonCase("combining-flood", _tweet("v-zalgo", "Z" + "\u0301\u0316\u0334" * 5_000), None),
    PoisonCase("hundred-thousand-char-word", _tweet("v-word", "a" * 100_000), None),
    PoisonCase("long-post", _tweet("v-long", "so long " * 3_125), None),
    PoisonCase("escaped-surrogate-pair", b'{"id": "v-pair", "text": "smile \\ud83d\\ude00"}', None),
    PoisonCase("nul-inside-text", _tweet("v-nul", "before\u0000after"), None),
    PoisonCase("null-key", _tweet("v-nokey", "no key at all"), None, key=None),
    PoisonCase("numeric-id", b'{"id": 18446744073709551616, "text": "big id"}', None),
    PoisonCase(
        "odd-metadata",
        _tweet("v-meta", "metadata", created_at=1_700_000_000_000, user=5, lang=["en"], extra={"x": 1}),
        None,
    ),
    PoisonCase("repeated-json-key", b'{"id": "v-rep", "text": "first", "text": "second"}', None),
    PoisonCase("duplicate-id-1", _tweet("v-dup", "same id, first record"), None),
    PoisonCase("duplicate-id-2", _tweet("v-dup", "same id, second record"), None),
    PoisonCase("valid-with-spoofed-dlq-headers", _tweet("v-spoof", "fine"), None, headers=SPOOFED_HEADERS),
    PoisonCase("valid-with-odd-headers", _tweet("v-odd", "fine too"), None, headers=ODD_HEADERS),
    PoisonCase("valid-with-null-header-value", _tweet("v-nulh", "fine three"), None, headers=[("nul", None)]),
]

BAD = [case for case in CATALOGUE if case.verdict is not None]
VALID = [case for case in CATALOGUE if case.verdict is None]
