"""``clstream verify``: an independent check that every input record came out exactly once.

Like Kafka's own transaction system tests and Jepsen, the check does not trust the pipeline's
bookkeeping (its committed offsets or counters): it reads the input, output and dead-letter
topics with ``isolation_level="read_committed"`` and accounts for every input record by its
position ``(partition, offset)``:

- an output record names its source position (``source_topic``, ``source_partition``,
  ``source_offset`` in the JSON value);
- a dead-letter record names it in the ``clstream.source.*`` headers (the *last* occurrence of
  each: the original headers come first, so an input record that already carries headers with
  those names cannot spoof its position).

Positions, not ids, are the unit: input ids may repeat (a producer's retry, a user's bug) and a
record with no decodable id must still be accounted for. Ids are reported where they are known.

``compare`` is the whole judgement, a pure function of the three record lists; ``read_*`` are the
thin Kafka layer. What counts as a failure (``VerifyReport.failures``):

- always: a lost input record (in neither output nor DLQ), an output/DLQ record naming a
  position the input does not have (``unexpected``), an output record whose id differs from the
  input's id at that position (``mismatched``);
- with ``delivery="exactly-once"`` also: a record produced more than once, a record in both the
  output and the DLQ, and a first copy that arrives after a later record of the same source
  partition in the same output partition (``out_of_order``; replays after a crash are duplicates,
  not order violations, so at-least-once runs report them but do not fail on them).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson

from schemas.dlq import DlqHeader
from schemas.settings import KafkaSettings

Delivery = Literal["at-least-once", "exactly-once"]
Position = tuple[int, int]  # (partition, offset) on the input topic

#: Lists in the report are cut to this many examples; the counts are always complete.
_EXAMPLES = 20


@dataclass(frozen=True, slots=True)
class InputRecord:
    partition: int
    offset: int
    #: The JSON ``id`` when the value is a JSON object with a string or integer id; else None.
    id: str | None


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One labeled record, located by where it sits in the output topic and where it came from."""

    partition: int
    offset: int
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    id: str | None


@dataclass(frozen=True, slots=True)
class DlqRecord:
    partition: int
    offset: int
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of ``compare``: counts, and up to ``_EXAMPLES`` examples of each problem."""

    delivery: Delivery
    input_records: int
    output_records: int
    dlq_records: int
    #: Input records with exactly one copy in output or DLQ, at least one copy, and none at all.
    delivered: int
    lost: int
    #: Extra copies: a record produced three times counts 2.
    duplicates: int
    duplicated_records: int
    in_both: int
    unexpected: int
    unreadable: int
    mismatched: int
    out_of_order: int
    lost_examples: list[str] = field(default_factory=list)
    duplicate_examples: list[str] = field(default_factory=list)
    in_both_examples: list[str] = field(default_factory=list)
    unexpected_examples: list[str] = field(default_factory=list)
    mismatched_examples: list[str] = field(default_factory=list)
    out_of_order_examples: list[str] = field(default_factory=list)
    lost_by_partition: dict[int, int] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        """What makes this run fail under its delivery mode; empty when it passes."""
        problems = {"lost": self.lost, "unexpected": self.unexpected + self.unreadable}
        problems["mismatched"] = self.mismatched
        if self.delivery == "exactly-once":
            problems.update(duplicates=self.duplicates, in_both=self.in_both, out_of_order=self.out_of_order)
        return [f"{name}={count}" for name, count in problems.items() if count]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok, "failures": self.failures}

    def table(self) -> str:
        rows = [
            ("delivery", self.delivery),
            ("input records", self.input_records),
            ("output records", self.output_records),
            ("dlq records", self.dlq_records),
            ("delivered", self.delivered),
            ("lost", self.lost),
            ("duplicates (extra copies)", self.duplicates),
            ("duplicated records", self.duplicated_records),
            ("in output and dlq", self.in_both),
            ("unexpected", self.unexpected),
            ("unreadable output/dlq", self.unreadable),
            ("id mismatches", self.mismatched),
            ("out of order", self.out_of_order),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        for label, examples in (
            ("lost", self.lost_examples),
            ("duplicated", self.duplicate_examples),
            ("in both", self.in_both_examples),
            ("unexpected", self.unexpected_examples),
            ("mismatched", self.mismatched_examples),
            ("out of order", self.out_of_order_examples),
        ):
            if examples:
                lines.append(f"{label} (first {len(examples)}): {', '.join(examples)}")
        lines.append("OK" if self.ok else f"FAILED: {', '.join(self.failures)}")
        return "\n".join(lines)


def compare(
    input_topic: str,
    inputs: Iterable[InputRecord],
    outputs: Iterable[OutputRecord],
    dlq: Iterable[DlqRecord],
    delivery: Delivery = "at-least-once",
) -> VerifyReport:
    """Account for every input record by position. Pure: no I/O, no clock."""
    ids: dict[Position, str | None] = {(r.partition, r.offset): r.id for r in inputs}
    outputs = list(outputs)
    dlq = list(dlq)

    out_copies: Counter[Position] = Counter()
    dlq_copies: Counter[Position] = Counter()
    unexpected: list[str] = []
    unreadable = 0
    mismatched: list[str] = []
    for out in outputs:
        if out.source_partition is None or out.source_offset is None:
            unreadable += 1
            continue
        if out.source_topic != input_topic or (out.source_partition, out.source_offset) not in ids:
            unexpected.append(f"output {out.partition}:{out.offset} -> {out.source_topic}/{_pos(out)}")
            continue
        position = (out.source_partition, out.source_offset)
        out_copies[position] += 1
        if out.id != ids[position]:
            mismatched.append(f"{_name(position, ids[position])} came out as id {out.id!r}")
    for dead in dlq:
        if dead.source_partition is None or dead.source_offset is None:
            unreadable += 1
            continue
        if dead.source_topic != input_topic or (dead.source_partition, dead.source_offset) not in ids:
            unexpected.append(f"dlq {dead.partition}:{dead.offset} -> {dead.source_topic}/{_pos(dead)}")
            continue
        dlq_copies[(dead.source_partition, dead.source_offset)] += 1

    lost = [p for p in ids if out_copies[p] + dlq_copies[p] == 0]
    copies = {p: out_copies[p] + dlq_copies[p] for p in ids}
    duplicated = sorted(p for p, n in copies.items() if n > 1)
    in_both = sorted(p for p in ids if out_copies[p] and dlq_copies[p])
    out_of_order = _first_copies_out_of_order(outputs, ids)

    lost_by_partition: Counter[int] = Counter(p for p, _ in lost)
    return VerifyReport(
        delivery=delivery,
        input_records=len(ids),
        output_records=len(outputs),
        dlq_records=len(dlq),
        delivered=len(ids) - len(lost),
        lost=len(lost),
        duplicates=sum(n - 1 for n in copies.values() if n > 1),
        duplicated_records=len(duplicated),
        in_both=len(in_both),
        unexpected=len(unexpected),
        unreadable=unreadable,
        mismatched=len(mismatched),
        out_of_order=len(out_of_order),
        lost_examples=[_name(p, ids[p]) for p in sorted(lost)[:_EXAMPLES]],
        duplicate_examples=_where(duplicated[:_EXAMPLES], ids, copies, outputs, dlq),
        in_both_examples=[_name(p, ids[p]) for p in in_both[:_EXAMPLES]],
        unexpected_examples=unexpected[:_EXAMPLES],
        mismatched_examples=mismatched[:_EXAMPLES],
        out_of_order_examples=out_of_order[:_EXAMPLES],
        lost_by_partition=dict(sorted(lost_by_partition.items())),
    )


def _where(
    positions: Sequence[Position],
    ids: dict[Position, str | None],
    copies: dict[Position, int],
    outputs: Sequence[OutputRecord],
    dlq: Sequence[DlqRecord],
) -> list[str]:
    """Each duplicated input record with where its copies are (``out 1:530``, ``dlq 0:7``):
    copies next to each other in one partition came from one transaction or one retried send."""
    wanted: dict[Position, list[str]] = {p: [] for p in positions}
    for kind, records in (("out", outputs), ("dlq", dlq)):
        for r in records:
            found = wanted.get((r.source_partition, r.source_offset))  # type: ignore[arg-type]
            if found is not None:
                found.append(f"{kind} {r.partition}:{r.offset}")
    return [f"{_name(p, ids[p])} x{copies[p]} ({', '.join(wanted[p])})" for p in positions]


def _first_copies_out_of_order(outputs: Sequence[OutputRecord], ids: dict[Position, str | None]) -> list[str]:
    """First copies that follow a later record of the same source partition in one output partition.

    One producer keeps a source partition's records in order within each output partition, and a
    replay after a crash repeats a prefix of what was already written: it produces copies, never
    a *first* copy behind a later record. A first copy behind a later one means reordering.
    """
    seen: set[Position] = set()
    highest: dict[tuple[int, int], int] = {}  # (output partition, source partition) -> max offset seen
    problems: list[str] = []
    for out in sorted(outputs, key=lambda r: (r.partition, r.offset)):
        if out.source_partition is None or out.source_offset is None:
            continue
        position = (out.source_partition, out.source_offset)
        if position not in ids:
            continue
        stream = (out.partition, out.source_partition)
        first = position not in seen
        seen.add(position)
        if first and out.source_offset < highest.get(stream, -1):
            problems.append(
                f"{_name(position, ids[position])} at output {out.partition}:{out.offset} "
                f"after source offset {highest[stream]}"
            )
        highest[stream] = max(highest.get(stream, -1), out.source_offset)
    return problems


def _pos(record: OutputRecord | DlqRecord) -> str:
    return f"{record.source_partition}:{record.source_offset}"


def _name(position: Position, record_id: str | None) -> str:
    where = f"{position[0]}:{position[1]}"
    return f"{record_id} ({where})" if record_id is not None else f"<no id> ({where})"


# -- parsing records (pure) ---------------------------------------------------------------------


def input_id(value: bytes | None) -> str | None:
    """The record's JSON ``id`` as text, or None when the value is not a JSON object with one."""
    if not value:
        return None
    try:  # not orjson: it reads integers past 64 bits as floats, and ids can be that long
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    record_id = parsed.get("id")
    if isinstance(record_id, bool) or not isinstance(record_id, str | int):
        return None
    return str(record_id)


def parse_output(partition: int, offset: int, value: bytes | None) -> OutputRecord:
    try:
        parsed = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        return OutputRecord(partition, offset, None, None, None, None)
    return OutputRecord(
        partition,
        offset,
        _str_or_none(parsed.get("source_topic")),
        _int_or_none(parsed.get("source_partition")),
        _int_or_none(parsed.get("source_offset")),
        _str_or_none(parsed.get("id")),
    )


def parse_dlq(partition: int, offset: int, headers: Sequence[tuple[str, bytes | None]]) -> DlqRecord:
    # dict() keeps the last value of a repeated key: clstream's headers follow the originals.
    last = dict(headers)
    topic = last.get(DlqHeader.SOURCE_TOPIC.value)
    return DlqRecord(
        partition,
        offset,
        topic.decode("utf-8", errors="replace") if topic is not None else None,
        _int_or_none(last.get(DlqHeader.SOURCE_PARTITION.value)),
        _int_or_none(last.get(DlqHeader.SOURCE_OFFSET.value)),
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


# -- reading topics (the thin Kafka layer) -----------------------------------------------------


def read_committed(
    kafka: KafkaSettings, topic: str, timeout_s: float = 120.0
) -> Iterator[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]]:
    """(partition, offset, key, value, headers) of every committed record of ``topic``.

    Reads from the beginning up to the end offsets seen when it starts (the last stable offsets:
    aborted and still-open transactions are not returned). Raises ``TimeoutError`` if that end is
    not reached within ``timeout_s``.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **kafka.client_config(),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        key_deserializer=None,
        value_deserializer=None,
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                behind = {tp.partition: end[tp] - consumer.position(tp) for tp in tps}
                raise TimeoutError(f"{topic}: could not read to the end within {timeout_s:.0f}s: {behind}")
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    if r.offset < end[TopicPartition(topic, r.partition)]:
                        yield r.partition, r.offset, r.key, r.value, list(r.headers or [])
    finally:
        consumer.close()


def verify_topics(
    kafka: KafkaSettings,
    input_topic: str,
    output_topic: str,
    dlq_topic: str,
    delivery: Delivery = "at-least-once",
    timeout_s: float = 120.0,
) -> VerifyReport:
    """Read the three topics (read_committed) and ``compare`` them."""
    from pipelines.kafka_tools.admin import admin_client

    admin_client(kafka).close()  # fails fast, naming the cause, on a wrong password or no broker
    inputs = [
        InputRecord(p, o, input_id(v)) for p, o, _, v, _ in read_committed(kafka, input_topic, timeout_s)
    ]
    outputs = [parse_output(p, o, v) for p, o, _, v, _ in read_committed(kafka, output_topic, timeout_s)]
    dead = [parse_dlq(p, o, h) for p, o, _, _, h in read_committed(kafka, dlq_topic, timeout_s)]
    return compare(input_topic, inputs, outputs, dead, delivery)
