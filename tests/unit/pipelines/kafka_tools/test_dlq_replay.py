"""``clstream dlq``'s pure parts: splitting a dead letter, choosing, and the record re-sent.

Dead letters are made by the loop itself (``ClassifierLoop.step`` with the package's test
doubles), then passed through ``producible`` as ``KafkaSink`` does before sending them.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipelines.commands.cli import main
from pipelines.kafka_tools import dlq_replay
from pipelines.kafka_tools.dlq_replay import (
    DeadLetter,
    OffsetRange,
    Replay,
    Selection,
    Verdict,
    parse_dead_letter,
    replay_record,
    sendable,
    summarize,
    summary_table,
)
from schemas.dlq import REPLAYED_FROM, DlqHeader
from schemas.settings import Settings
from workers.kafka_io import producible
from workers.loop import ClassifierLoop
from workers.records import OutboundRecord, RawRecord
from workers.testing import InMemorySink, InMemorySource, KeywordClassifier

SETTINGS = Settings.load()
#: Values the loop dead-letters, by the error class it gives them.
BAD = {
    "InvalidJson": b'{"id": ',
    "NonUtf8": b"\xff",
    "ClassificationFailed": b'{"id": "1", "text": "poison"}',
}


def _written(record: RawRecord) -> OutboundRecord:
    """``record``'s DLQ copy, as the loop makes it and ``KafkaSink`` sends it."""
    sink = InMemorySink()
    ClassifierLoop(InMemorySource([record]), sink, KeywordClassifier(poison="poison"), SETTINGS).step()
    (written,) = sink.on(SETTINGS.topics.dlq)
    return producible(written)


def _dead(record: RawRecord, at: tuple[int, int] = (0, 7)) -> DeadLetter:
    """``record`` dead-lettered by the loop, written to the DLQ at ``at``, and read back."""
    written = _written(record)
    return parse_dead_letter(*at, written.key, written.value, written.headers)


def test_a_dead_letter_splits_into_the_original_record_and_the_loops_verdict():
    # An original header with one of clstream's names is the user's: it stays.
    headers = [("trace", b"\x00\xff"), (DlqHeader.ERROR_CLASS.value, b"the user's own")]
    letter = _dead(RawRecord("tweets", 3, 1207, b"k", BAD["InvalidJson"], headers), at=(2, 40))
    assert (letter.key, letter.value, letter.headers) == (b"k", BAD["InvalidJson"], headers)
    assert (letter.partition, letter.offset) == (2, 40)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("tweets", 3, 1207)
    assert (letter.error_class, letter.nulls, letter.unknown_headers, letter.replays) == (
        "InvalidJson",
        (),
        (),
        0,
    )


def test_nulls_kafka_python_could_not_produce_are_restored_from_the_loops_note():
    original = RawRecord("tweets", 0, 5, None, None, [("a", None), ("b", b"x"), ("c", None)])
    letter = _dead(original)
    assert (letter.key, letter.value, letter.headers) == (None, None, original.headers)
    assert (letter.error_class, letter.nulls) == ("Tombstone", ("key", "header:0", "header:2"))


def test_a_record_without_clstreams_headers_at_the_end_is_never_replayed():
    headers = [("h", b"1"), (DlqHeader.ERROR_CLASS.value, b"X")]
    letter = parse_dead_letter(0, 1, b"k", b"v", headers)
    assert letter.error_class is None and letter.headers == headers
    assert Selection().verdict(letter) is Verdict.UNRECOGNISED
    assert Selection(error_classes=frozenset({"X"})).verdict(letter) is Verdict.UNSELECTED


def test_a_clstream_header_replay_cannot_undo_makes_the_dead_letter_unreplayable(monkeypatch):
    # As if the loop had started appending a header saying it cut the value short.
    monkeypatch.setattr(dlq_replay, "_OURS", dlq_replay._OURS | {"clstream.cut"})
    written = _written(RawRecord("t", 0, 0, b"k", BAD["InvalidJson"], [("h", b"1")]))
    letter = parse_dead_letter(0, 0, written.key, written.value, [*written.headers, ("clstream.cut", b"9")])
    assert letter.unknown_headers == ("clstream.cut",) and letter.headers == [("h", b"1")]
    assert Selection(error_classes=frozenset({"InvalidJson"})).verdict(letter) is Verdict.UNKNOWN_HEADERS


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0:5-9", OffsetRange(0, 5, 9)), ("2:5-", OffsetRange(2, 5, None)), ("1:7", OffsetRange(1, 7, 7))],
)
def test_offset_ranges_parse(text, expected):
    assert OffsetRange.parse(text) == expected


@pytest.mark.parametrize("text", ["5-9", "0:9-5", "a:1", "0:-3", "0:1-2-3"])
def test_bad_offset_ranges_say_the_expected_form(text):
    with pytest.raises(ValueError, match="--offsets"):
        OffsetRange.parse(text)


def test_every_given_criterion_must_hold_and_ranges_are_inclusive():
    # (DLQ partition, DLQ offset, error class, source partition)
    letters = [
        _dead(RawRecord("tweets", sp, o, b"k", BAD[cls]), at=(p, o))
        for p, o, cls, sp in [
            (0, 4, "InvalidJson", 0),
            (0, 5, "ClassificationFailed", 1),
            (0, 9, "ClassificationFailed", 0),
            (0, 10, "NonUtf8", 1),
            (1, 5, "ClassificationFailed", 1),
        ]
    ]

    def chosen(selection: Selection) -> list[tuple[int, int]]:
        return [(d.partition, d.offset) for d in letters if selection.verdict(d) is Verdict.REPLAY]

    failed = frozenset({"ClassificationFailed"})
    assert chosen(Selection()) == [(0, 4), (0, 5), (0, 9), (0, 10), (1, 5)]
    assert chosen(Selection(error_classes=failed)) == [(0, 5), (0, 9), (1, 5)]
    assert chosen(Selection(error_classes=failed | {"NonUtf8"})) == [(0, 5), (0, 9), (0, 10), (1, 5)]
    assert chosen(Selection(offsets=(OffsetRange(0, 5, 9),))) == [(0, 5), (0, 9)]
    assert chosen(Selection(offsets=(OffsetRange(0, 5, 9), OffsetRange(1, 0, None)))) == [
        (0, 5),
        (0, 9),
        (1, 5),
    ]
    assert chosen(Selection(source_partitions=frozenset({1}))) == [(0, 5), (0, 10), (1, 5)]
    assert chosen(Selection(after={0: 9})) == [(0, 10), (1, 5)]
    assert chosen(Selection(error_classes=failed, source_partitions=frozenset({0}))) == [(0, 9)]
    assert not Selection(after={0: 3}).chooses and Selection(source_partitions=frozenset({0})).chooses


def test_the_replayed_record_is_the_original_plus_where_it_came_from():
    original = RawRecord("tweets", 3, 1207, b"k", BAD["ClassificationFailed"], [("h", b"1"), ("n", None)])
    letter = _dead(original, at=(1, 40))
    record = replay_record(letter, "tweets.dlq")
    assert record == Replay(
        "tweets", 3, b"k", original.value, [*original.headers, (REPLAYED_FROM, b"tweets.dlq/1/40")], (1, 40)
    )
    elsewhere = replay_record(letter, "tweets.dlq", to_topic="retry")
    assert (elsewhere.topic, elsewhere.partition) == ("retry", None)
    # kafka-python 3.0.12 produces no null header value: sent as b"", as the dead letter had it.
    assert sendable(record).headers == [("h", b"1"), ("n", b""), (REPLAYED_FROM, b"tweets.dlq/1/40")]
    assert sendable(record).key == b"k"
    tombstone = sendable(replay_record(_dead(RawRecord("t", 0, 0, None, None)), "d"))
    assert (tombstone.key, tombstone.value) == (b"", None)


def test_a_record_that_fails_again_counts_its_replays_and_stops_at_the_limit():
    letter = _dead(RawRecord("tweets", 0, 1, b"k", BAD["ClassificationFailed"]), at=(0, 1))
    for round_ in range(1, 4):
        again = sendable(replay_record(letter, "dlq"))
        # Consumed from the input topic, it fails again and is dead-lettered anew.
        consumed = RawRecord(again.topic, 0, 100 + round_, again.key, again.value, again.headers)
        letter = _dead(consumed, at=(0, 1 + round_))
        assert letter.replays == round_
        assert letter.headers[0] == (REPLAYED_FROM, b"dlq/0/1")
        assert letter.headers[-1] == (REPLAYED_FROM, f"dlq/0/{round_}".encode())
    assert (letter.key, letter.value) == (b"k", BAD["ClassificationFailed"])
    assert Selection(max_replays=4).verdict(letter) is Verdict.REPLAY
    assert Selection(max_replays=3).verdict(letter) is Verdict.REPLAY_LIMIT


def test_list_counts_dead_letters_by_class_with_their_offsets():
    letters = [
        _dead(RawRecord("t", 0, o, b"k", BAD[cls]), at=at)
        for o, (cls, at) in enumerate(
            [("InvalidJson", (0, 3)), ("NonUtf8", (0, 4)), ("InvalidJson", (1, 9)), ("InvalidJson", (0, 8))]
        )
    ]
    letters.append(parse_dead_letter(1, 2, b"k", b"v", []))
    summaries = summarize(letters)
    assert [(s.error_class, s.records, s.offsets) for s in summaries] == [
        ("InvalidJson", 3, {0: (3, 8), 1: (9, 9)}),
        ("(not a clstream dead letter)", 1, {1: (2, 2)}),
        ("NonUtf8", 1, {0: (4, 4)}),
    ]
    table = summary_table(summaries)
    assert "0:3-8 1:9-9" in table and table.endswith("5 dead letters")


def test_a_failed_send_names_how_far_each_dlq_partition_was_resent():
    letter = _dead(RawRecord("t", 0, 0, b"k", BAD["InvalidJson"]))
    records = [replace(replay_record(letter, "d"), origin=at) for at in [(0, 1), (1, 4), (0, 2), (0, 3)]]
    assert dlq_replay._acknowledged_through(records, [True, True, False, True]) == {0: 1, 1: 4}


def test_replay_without_a_choice_refuses_before_reading_anything(capsys):
    assert main(["dlq", "replay", "--bootstrap-servers", "127.0.0.1:1", "--after", "0:3"]) == 1
    assert "say what to replay" in capsys.readouterr().err
