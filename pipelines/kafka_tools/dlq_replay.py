"""``clstream dlq list`` and ``clstream dlq replay``: the way back from the dead-letter topic.

Once the cause of some dead letters is fixed (a model that failed, a schema that was too strict),
``replay`` re-sends the chosen ones to the input topic, each as the original record:

- **What is restored.** The original key, value and headers byte for byte: the loop appends its
  own headers (``schemas.dlq.DlqHeader``) after the originals, so the trailing run of those names
  (each at most once) is removed. Nulls named in ``clstream.source.nulls`` are restored in
  ``DeadLetter``, but kafka-python 3.0.12 cannot produce a null header value, nor a record whose
  key and value are both null, so those are re-sent as ``b""`` and counted (``nulls_sent_empty``).
  The timestamp is the replay's (the original's is not in the dead letter). A dead letter with
  an appended clstream header this module does not know how to undo is skipped, not re-sent
  as something other than the original.
- **Where to.** Each record's source topic and partition (from its headers), or ``--to-topic``,
  where the producer picks the partition by key.
- **Traceable, and no endless loop.** A ``clstream.replayed-from`` header
  (``<dlq topic>/<partition>/<offset>``) is appended after the original headers. A record that
  fails again is dead-lettered with it among its originals, and replayed again it gains one more:
  their count is how often it was replayed. A dead letter already replayed ``--max-replays`` times
  (default 3) is not re-sent; it is counted as skipped and named.
- **At-least-once.** The DLQ is read ``read_committed`` up to its end offsets when the command
  starts, the selection is made, and only then is anything sent (``acks=all``, idempotent
  producer), so a read that fails sends nothing. Nothing is written to the DLQ, so the same
  command run twice re-sends the same records twice. The summary says how far each DLQ partition
  was read: pass ``--after PARTITION:OFFSET`` next time to consider only later dead letters. If
  some records are not acknowledged, the error names, per DLQ partition, the offset up to which
  everything was re-sent.

``parse_dead_letter``, ``Selection.verdict``, ``replay_record`` and ``summarize`` are pure; ``replay``
and ``read_dead_letters`` are the thin Kafka layer around them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from schemas.dlq import REPLAYED_FROM, DlqHeader
from schemas.errors import DeliveryError
from schemas.settings import KafkaSettings
from workers.records import Headers

#: Replays a dead letter may already have had before ``replay`` refuses it (``--max-replays``):
#: enough to retry after a fix that did not hold, few enough that a loop stops within minutes.
DEFAULT_MAX_REPLAYS = 3

_OURS = frozenset(h.value for h in DlqHeader)
#: The appended headers ``parse_dead_letter`` knows how to undo. Any other (a header added to
#: ``DlqHeader`` later, e.g. one saying the copy was cut) makes the dead letter unreplayable
#: until this module learns it: better refused than re-sent as something other than the original.
_UNDERSTOOD = frozenset(
    h.value
    for h in (
        DlqHeader.SOURCE_TOPIC,
        DlqHeader.SOURCE_PARTITION,
        DlqHeader.SOURCE_OFFSET,
        DlqHeader.ERROR_CLASS,
        DlqHeader.ERROR_MESSAGE,
        DlqHeader.ERROR_STAGE,
        DlqHeader.FAILED_AT,
        DlqHeader.SOURCE_NULLS,
    )
)
_REQUIRED = (
    DlqHeader.SOURCE_TOPIC,
    DlqHeader.SOURCE_PARTITION,
    DlqHeader.SOURCE_OFFSET,
    DlqHeader.ERROR_CLASS,
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One DLQ record split into the original record and what clstream said about it."""

    #: Where the dead letter sits in the DLQ topic.
    partition: int
    offset: int
    #: The original's key, value and headers, nulls restored.
    key: bytes | None
    value: bytes | None
    headers: Headers
    #: None: the record does not end with clstream's headers; ``headers`` are then all it had.
    error_class: str | None
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    #: What was null in the original (``key``, ``header:<index>``).
    nulls: tuple[str, ...] = ()
    #: Appended clstream headers this module cannot undo (see ``_UNDERSTOOD``).
    unknown_headers: tuple[str, ...] = ()

    @property
    def replays(self) -> int:
        """How often the record was replayed before it became this dead letter."""
        return sum(1 for name, _ in self.headers if name == REPLAYED_FROM)


def parse_dead_letter(
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
) -> DeadLetter:
    """Split a DLQ record as the loop writes it (``workers.loop._dead_letter``, then ``producible``)."""
    cut = len(headers)
    ours: dict[str, bytes | None] = {}
    while cut > 0 and headers[cut - 1][0] in _OURS and headers[cut - 1][0] not in ours:
        cut -= 1
        ours[headers[cut][0]] = headers[cut][1]
    source_partition = _int(ours.get(DlqHeader.SOURCE_PARTITION.value))
    source_offset = _int(ours.get(DlqHeader.SOURCE_OFFSET.value))
    if any(ours.get(h.value) is None for h in _REQUIRED) or source_partition is None or source_offset is None:
        return DeadLetter(partition, offset, key, value, list(headers), None, None, None, None)
    nulls = tuple(n for n in _text(ours.get(DlqHeader.SOURCE_NULLS.value)).split(",") if n)
    null_headers = {f"header:{i}" for i in range(cut)} & set(nulls)
    return DeadLetter(
        partition,
        offset,
        None if "key" in nulls and value is None else key,
        value,
        [
            (name, None if f"header:{i}" in null_headers else raw)
            for i, (name, raw) in enumerate(headers[:cut])
        ],
        _text(ours[DlqHeader.ERROR_CLASS.value]),
        _text(ours[DlqHeader.SOURCE_TOPIC.value]),
        source_partition,
        source_offset,
        nulls,
        tuple(sorted(set(ours) - _UNDERSTOOD)),
    )


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", errors="replace")


def _int(raw: bytes | None) -> int | None:
    text = _text(raw)
    return int(text) if text.isascii() and text.isdigit() else None


# -- choosing (pure) ---------------------------------------------------------------------------


class Verdict(str, Enum):
    REPLAY = "replay"
    UNSELECTED = "not selected"
    UNRECOGNISED = (
        "not a clstream dead letter (no clstream.source.* / clstream.error.class headers at the end)"
    )
    UNKNOWN_HEADERS = "carries a clstream header this version cannot undo"
    REPLAY_LIMIT = "already replayed --max-replays times"


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """DLQ offsets ``first``..``last`` (both included; ``last`` None: no end) of one partition."""

    partition: int
    first: int
    last: int | None

    @classmethod
    def parse(cls, text: str) -> OffsetRange:
        """``P:FROM-TO``, ``P:FROM-`` (to the end) or ``P:OFFSET``."""
        match = re.fullmatch(r"(\d+):(\d+)(?:(-)(\d+)?)?", text.strip())
        if match is None:
            raise ValueError(
                f"--offsets {text!r}: expected PARTITION:FROM-TO, PARTITION:FROM- or PARTITION:OFFSET"
            )
        partition, first, dash, last = match.groups()
        end = int(last) if last is not None else (None if dash else int(first))
        if end is not None and end < int(first):
            raise ValueError(f"--offsets {text!r}: the range ends before it starts")
        return cls(int(partition), int(first), end)

    def covers(self, partition: int, offset: int) -> bool:
        return (
            partition == self.partition
            and offset >= self.first
            and (self.last is None or offset <= self.last)
        )


@dataclass(frozen=True)
class Selection:
    """Which dead letters to replay. Empty criteria choose everything; given ones must all hold."""

    error_classes: frozenset[str] = frozenset()
    #: Any of these DLQ ranges.
    offsets: tuple[OffsetRange, ...] = ()
    source_partitions: frozenset[int] = frozenset()
    #: DLQ partition -> only offsets after this one (what an earlier run read).
    after: dict[int, int] = field(default_factory=dict)
    max_replays: int = DEFAULT_MAX_REPLAYS

    @property
    def chooses(self) -> bool:
        """Whether any criterion narrows the choice (``replay`` asks for one, or ``--all``)."""
        return bool(self.error_classes or self.offsets or self.source_partitions)

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (not self.error_classes or letter.error_class in self.error_classes)
            and (not self.offsets or any(r.covers(letter.partition, letter.offset) for r in self.offsets))
            and (not self.source_partitions or letter.source_partition in self.source_partitions)
            and letter.offset > self.after.get(letter.partition, -1)
        )

    def verdict(self, letter: DeadLetter) -> Verdict:
        if not self.matches(letter):
            return Verdict.UNSELECTED
        if letter.error_class is None:
            return Verdict.UNRECOGNISED
        if letter.unknown_headers:
            return Verdict.UNKNOWN_HEADERS
        if letter.replays >= self.max_replays:
            return Verdict.REPLAY_LIMIT
        return Verdict.REPLAY


@dataclass(frozen=True, slots=True)
class Replay:
    """A record to re-send; ``partition`` None lets the producer choose by key."""

    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: Headers
    #: The dead letter's position in the DLQ.
    origin: tuple[int, int]


def replay_record(letter: DeadLetter, dlq_topic: str, to_topic: str | None = None) -> Replay:
    """The original record, with a ``clstream.replayed-from`` header after its own headers."""
    assert letter.source_topic is not None, "only recognised dead letters are replayed"
    trace = f"{dlq_topic}/{letter.partition}/{letter.offset}".encode()
    return Replay(
        to_topic or letter.source_topic,
        None if to_topic else letter.source_partition,
        letter.key,
        letter.value,
        [*letter.headers, (REPLAYED_FROM, trace)],
        (letter.partition, letter.offset),
    )


def sendable(record: Replay) -> Replay:
    """``record`` as kafka-python 3.0.12's ``send`` accepts it: no null header value, and not both
    key and value null (it refuses both). Those nulls become ``b""``, as in the dead letter."""
    headers: Headers = [(name, b"" if raw is None else raw) for name, raw in record.headers]
    key = b"" if record.key is None and record.value is None else record.key
    return replace(record, key=key, headers=headers)


# -- listing (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClassSummary:
    error_class: str
    records: int
    #: Of them, records that had already been replayed at least once.
    replayed: int
    #: DLQ partition -> (first offset, last offset).
    offsets: dict[int, tuple[int, int]]


def summarize(letters: Iterable[DeadLetter]) -> list[ClassSummary]:
    """Dead letters by error class, most frequent first."""
    counts: Counter[str] = Counter()
    replayed: Counter[str] = Counter()
    spans: dict[str, dict[int, tuple[int, int]]] = {}
    for letter in letters:
        name = letter.error_class or "(not a clstream dead letter)"
        counts[name] += 1
        replayed[name] += letter.replays > 0
        span = spans.setdefault(name, {})
        first, last = span.get(letter.partition, (letter.offset, letter.offset))
        span[letter.partition] = (min(first, letter.offset), max(last, letter.offset))
    return [
        ClassSummary(name, n, replayed[name], dict(sorted(spans[name].items())))
        for name, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]


def summary_table(summaries: Sequence[ClassSummary]) -> str:
    rows = [("error class", "records", "replayed before", "dlq offsets (partition:first-last)")]
    rows += [
        (
            s.error_class,
            str(s.records),
            str(s.replayed),
            " ".join(f"{p}:{first}-{last}" for p, (first, last) in s.offsets.items()),
        )
        for s in summaries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows]
    lines.append(f"{sum(s.records for s in summaries)} dead letters")
    return "\n".join(lines)


# -- the Kafka layer ---------------------------------------------------------------------------


@dataclass
class ReplayReport:
    """Counts of one ``replay`` run; ``selected`` = ``resent`` + sum of ``skipped``."""

    dry_run: bool
    read: int = 0
    selected: int = 0
    resent: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    #: Re-sent records whose original had nulls kafka-python cannot produce (sent as ``b""``).
    nulls_sent_empty: int = 0
    #: DLQ partition -> the last offset read (every dead letter up to it was considered).
    last_read: dict[int, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items())
        verb = "would re-send" if self.dry_run else "re-sent"
        lines = [
            f"read {self.read} dead letters; selected {self.selected}, {verb} {self.resent}, "
            f"skipped {sum(self.skipped.values())}" + (f" ({skipped})" if skipped else "")
        ]
        if self.nulls_sent_empty:
            lines.append(
                f"{self.nulls_sent_empty} records had a null key or header value, {verb} as empty bytes "
                "(kafka-python cannot produce them)"
            )
        if self.last_read and not self.dry_run:
            after = " ".join(f"--after {p}:{o}" for p, o in sorted(self.last_read.items()))
            lines.append(f"to skip these dead letters in a later replay, add: {after}")
        return lines


def read_dead_letters(kafka: KafkaSettings, dlq_topic: str, timeout_s: float) -> Iterator[DeadLetter]:
    """Every committed record of the DLQ up to its end when called, parsed."""
    from pipelines.kafka_tools.admin import admin_client
    from pipelines.kafka_tools.verify import read_committed

    admin_client(kafka).close()  # fails fast, naming the cause, on a wrong password or no broker
    for partition, offset, key, value, headers in read_committed(kafka, dlq_topic, timeout_s):
        yield parse_dead_letter(partition, offset, key, value, headers)


def replay(
    kafka: KafkaSettings,
    dlq_topic: str,
    selection: Selection,
    to_topic: str | None = None,
    dry_run: bool = False,
    timeout_s: float = 120.0,
    say: Callable[[str], None] = print,
) -> ReplayReport:
    """Read the DLQ, choose, then re-send the chosen records and wait for every acknowledgement.

    ``say`` receives one line per skipped record and, with ``dry_run``, per record it would send.
    Raises ``DeliveryError`` when some records are not acknowledged within ``timeout_s``.
    """
    report = ReplayReport(dry_run)
    chosen: list[Replay] = []
    for letter in read_dead_letters(kafka, dlq_topic, timeout_s):
        report.read += 1
        report.last_read[letter.partition] = max(letter.offset, report.last_read.get(letter.partition, -1))
        verdict = selection.verdict(letter)
        if verdict is Verdict.UNSELECTED:
            continue
        report.selected += 1
        where = f"dlq {letter.partition}:{letter.offset}"
        if verdict is not Verdict.REPLAY:
            report.skipped[verdict.name.lower().replace("_", " ")] += 1
            detail = f" {', '.join(letter.unknown_headers)}" if letter.unknown_headers else ""
            say(f"skipped {where} ({letter.error_class}, {letter.replays} replays): {verdict.value}{detail}")
            continue
        record = replay_record(letter, dlq_topic, to_topic)
        chosen.append(record)
        report.nulls_sent_empty += bool(letter.nulls)
        if dry_run:
            target = record.topic + (f" partition {record.partition}" if record.partition is not None else "")
            say(
                f"would re-send {where} ({letter.error_class}, from {letter.source_topic}/"
                f"{letter.source_partition}/{letter.source_offset}, {letter.replays} replays) to {target}"
            )
    if not dry_run and chosen:
        _send(kafka, chosen, timeout_s)
    report.resent = len(chosen)
    return report


def _send(kafka: KafkaSettings, records: Sequence[Replay], timeout_s: float) -> None:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    producer = KafkaProducer(**kafka.client_config(), acks="all", enable_idempotence=True, linger_ms=5)
    try:
        futures = []
        for record in map(sendable, records):
            futures.append(
                producer.send(
                    record.topic,
                    key=record.key,
                    value=record.value,
                    headers=list(record.headers),
                    partition=record.partition,
                )
            )
        producer.flush(timeout=timeout_s)
    except KafkaError as exc:
        raise DeliveryError(f"could not re-send {len(records)} records: {type(exc).__name__}: {exc}") from exc
    finally:
        producer.close(timeout=5)
    acknowledged = [f.is_done and not f.failed() for f in futures]
    if not all(acknowledged):
        through = _acknowledged_through(records, acknowledged)
        resume = " ".join(f"--after {p}:{o}" for p, o in sorted(through.items())) or "nothing to skip"
        raise DeliveryError(
            f"{acknowledged.count(False)} of {len(records)} re-sent records were not acknowledged within "
            f"{timeout_s:.0f}s; run the same replay again with {resume} to skip those that were"
        )


def _acknowledged_through(records: Sequence[Replay], acknowledged: Sequence[bool]) -> dict[int, int]:
    """DLQ partition -> the last offset up to which every chosen record of it was acknowledged."""
    through: dict[int, int] = {}
    broken: set[int] = set()
    for record, ok in zip(records, acknowledged, strict=True):
        partition, offset = record.origin
        if not ok:
            broken.add(partition)
        elif partition not in broken:
            through[partition] = offset
    return through
