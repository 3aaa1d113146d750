import json

import orjson
import pytest

from pipelines.commands.cli import build_parser
from pipelines.kafka_tools.verify import (
    DlqRecord,
    InputRecord,
    OutputRecord,
    compare,
    input_id,
    parse_dlq,
    parse_output,
)
from schemas.dlq import DlqHeader

TOPIC = "in"


def _inputs(n: int, partition: int = 0) -> list[InputRecord]:
    return [InputRecord(partition, o, f"id-{partition}-{o}") for o in range(n)]


def _out(source: InputRecord, at: int, partition: int = 0, topic: str = TOPIC) -> OutputRecord:
    return OutputRecord(partition, at, topic, source.partition, source.offset, source.id)


def _dlq(source: InputRecord, at: int) -> DlqRecord:
    return DlqRecord(0, at, TOPIC, source.partition, source.offset)


def test_every_record_once_in_output_or_dlq_passes_in_both_modes():
    inputs = _inputs(5)
    outputs = [_out(r, i) for i, r in enumerate(inputs[:4])]
    for delivery in ("at-least-once", "exactly-once"):
        report = compare(TOPIC, inputs, outputs, [_dlq(inputs[4], 0)], delivery)
        assert report.ok, report.table()
        assert (report.delivered, report.lost, report.duplicates) == (5, 0, 0)
        assert (report.output_records, report.dlq_records) == (4, 1)


def test_a_missing_record_is_lost_and_fails_at_least_once():
    inputs = _inputs(4)
    report = compare(TOPIC, inputs, [_out(inputs[0], 0), _out(inputs[1], 1), _out(inputs[3], 2)], [])
    assert report.lost == 1
    assert report.lost_examples == ["id-0-2 (0:2)"]
    assert report.lost_by_partition == {0: 1}
    assert report.failures == ["lost=1"]
    assert not report.ok


def test_a_record_without_an_id_is_accounted_for_by_position():
    inputs = [InputRecord(3, 7, None), InputRecord(3, 8, None)]
    report = compare(TOPIC, inputs, [], [_dlq(inputs[0], 0)])
    assert report.lost == 1
    assert report.lost_examples == ["<no id> (3:8)"]


def test_duplicates_are_reported_always_but_fail_only_exactly_once():
    inputs = _inputs(3)
    outputs = [_out(r, i) for i, r in enumerate(inputs)] + [_out(inputs[0], 3), _out(inputs[1], 4)]
    outputs.append(_out(inputs[0], 5))
    at_least = compare(TOPIC, inputs, outputs, [], "at-least-once")
    assert (at_least.duplicates, at_least.duplicated_records) == (3, 2)
    assert at_least.duplicate_examples == [
        "id-0-0 (0:0) x3 (out 0:0, out 0:3, out 0:5)",
        "id-0-1 (0:1) x2 (out 0:1, out 0:4)",
    ]
    in_dlq_too = compare(TOPIC, inputs, outputs[:3], [_dlq(inputs[2], 9)])
    assert in_dlq_too.duplicate_examples == ["id-0-2 (0:2) x2 (out 0:2, dlq 0:9)"]
    assert at_least.ok
    exactly = compare(TOPIC, inputs, outputs, [], "exactly-once")
    assert exactly.failures == ["duplicates=3"]


def test_a_record_in_both_output_and_dlq_is_a_duplicate():
    inputs = _inputs(2)
    report = compare(TOPIC, inputs, [_out(inputs[0], 0), _out(inputs[1], 1)], [_dlq(inputs[1], 0)])
    assert (report.in_both, report.duplicates) == (1, 1)
    assert report.in_both_examples == ["id-0-1 (0:1)"]
    assert report.ok
    assert compare(
        TOPIC, inputs, [_out(inputs[0], 0), _out(inputs[1], 1)], [_dlq(inputs[1], 0)], "exactly-once"
    ).failures == [
        "duplicates=1",
        "in_both=1",
    ]


def test_duplicate_ids_at_different_positions_are_two_records():
    inputs = [InputRecord(0, 0, "same"), InputRecord(0, 1, "same")]
    report = compare(TOPIC, inputs, [_out(inputs[0], 0)], [], "exactly-once")
    assert (report.lost, report.duplicates) == (1, 0)
    assert report.lost_examples == ["same (0:1)"]


def test_output_naming_an_unknown_position_or_another_topic_is_unexpected():
    inputs = _inputs(1)
    ghost = OutputRecord(0, 1, TOPIC, 0, 99, "ghost")
    elsewhere = _out(inputs[0], 2, topic="other")
    report = compare(TOPIC, inputs, [_out(inputs[0], 0), ghost, elsewhere], [DlqRecord(0, 0, TOPIC, 5, 5)])
    assert report.unexpected == 3
    assert report.unexpected_examples == [
        "output 0:1 -> in/0:99",
        "output 0:2 -> other/0:0",
        "dlq 0:0 -> in/5:5",
    ]
    assert report.failures == ["unexpected=3"]


def test_output_with_another_id_than_its_source_is_a_mismatch():
    inputs = _inputs(1)
    wrong = OutputRecord(0, 0, TOPIC, 0, 0, "not-the-id")
    report = compare(TOPIC, inputs, [wrong], [])
    assert report.mismatched == 1
    assert report.mismatched_examples == ["id-0-0 (0:0) came out as id 'not-the-id'"]
    assert not report.ok


def test_a_replayed_prefix_is_duplicates_not_reordering():
    inputs = _inputs(4)
    # Offsets 0-1 written, crash before the commit, replay from 0: 0 1 0 1 2 3.
    order = [0, 1, 0, 1, 2, 3]
    outputs = [_out(inputs[src], at) for at, src in enumerate(order)]
    report = compare(TOPIC, inputs, outputs, [], "at-least-once")
    assert (report.out_of_order, report.duplicates, report.lost) == (0, 2, 0)


def test_a_first_copy_behind_a_later_record_of_its_partition_is_out_of_order():
    inputs = _inputs(3) + _inputs(1, partition=1)
    # Source partition 0 in output partition 0 as 0, 2, 1; partition 1 interleaved is irrelevant.
    outputs = [_out(inputs[0], 0), _out(inputs[3], 1), _out(inputs[2], 2), _out(inputs[1], 3)]
    report = compare(TOPIC, inputs, outputs, [], "at-least-once")
    assert report.out_of_order == 1
    assert report.out_of_order_examples == ["id-0-1 (0:1) at output 0:3 after source offset 2"]
    assert report.ok, "reported, but only exactly-once fails on order"
    assert compare(TOPIC, inputs, outputs, [], "exactly-once").failures == ["out_of_order=1"]


def test_order_is_judged_per_output_partition():
    inputs = _inputs(2)
    # Offset 1 reaches output partition 1 before offset 0 reaches partition 0: no constraint between them.
    outputs = [_out(inputs[1], 0, partition=1), _out(inputs[0], 0, partition=0)]
    assert compare(TOPIC, inputs, outputs, [], "exactly-once").ok


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'{"id": "a", "text": "x"}', "a"),
        (b'{"id": 12345678901234567890, "text": "x"}', "12345678901234567890"),
        (b'{"id": 18446744073709551616123, "text": "x"}', "18446744073709551616123"),
        (b"[" * 5000, None),
        (b'{"id": true}', None),
        (b'{"id": null}', None),
        (b"[1]", None),
        (b"{not json", None),
        (b"\xff", None),
        (b"", None),
        (None, None),
    ],
)
def test_input_id_is_read_leniently(value, expected):
    assert input_id(value) == expected


def test_output_values_are_parsed_and_garbage_is_unreadable():
    value = orjson.dumps({"id": "7", "source_topic": "in", "source_partition": 2, "source_offset": 9})
    assert parse_output(1, 4, value) == OutputRecord(1, 4, "in", 2, 9, "7")
    assert parse_output(1, 5, b"garbage") == OutputRecord(1, 5, None, None, None, None)
    report = compare(TOPIC, [], [parse_output(1, 5, b"garbage")], [])
    assert report.unreadable == 1 and not report.ok


def test_dlq_position_comes_from_the_last_clstream_headers_not_spoofed_originals():
    headers = [
        (DlqHeader.SOURCE_TOPIC.value, b"spoofed"),
        (DlqHeader.SOURCE_OFFSET.value, b"999"),
        ("binary", b"\xff\x00"),
        (DlqHeader.SOURCE_TOPIC.value, b"in"),
        (DlqHeader.SOURCE_PARTITION.value, b"3"),
        (DlqHeader.SOURCE_OFFSET.value, b"12"),
    ]
    assert parse_dlq(0, 8, headers) == DlqRecord(0, 8, "in", 3, 12)
    assert parse_dlq(0, 9, [("x", None)]) == DlqRecord(0, 9, None, None, None)


def test_report_json_and_table_say_what_failed():
    inputs = _inputs(2)
    report = compare(TOPIC, inputs, [_out(inputs[0], 0)], [])
    as_json = json.loads(json.dumps(report.to_json()))
    assert as_json["ok"] is False and as_json["failures"] == ["lost=1"] and as_json["lost"] == 1
    table = report.table()
    assert "lost                       1" in table
    assert table.splitlines()[-1] == "FAILED: lost=1"


def test_verify_is_a_cli_subcommand_with_a_delivery_flag():
    args = build_parser().parse_args(["verify", "--input-topic", "a", "--delivery", "exactly-once"])
    assert args.delivery == "exactly-once" and args.input_topic == "a"
    assert build_parser().parse_args(["verify"]).delivery == "at-least-once"
