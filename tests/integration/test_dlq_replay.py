"""``clstream dlq replay`` against the real broker: dead letters written by the loop itself (a real
``KafkaSink``), chosen by error class, come back on the input topic as the original records."""

from __future__ import annotations

import re

from pipelines.commands.cli import main
from pipelines.kafka_tools.admin import ensure_topics
from pipelines.kafka_tools.verify import parse_dlq, read_committed
from schemas.dlq import REPLAYED_FROM
from tests.integration.support import pipeline_settings, topic_size
from workers.kafka_io import KafkaSink
from workers.loop import ClassifierLoop
from workers.records import RawRecord
from workers.testing import InMemorySource, KeywordClassifier


def _dead_letter(settings, records: list[RawRecord]) -> None:
    """Run ``records`` through the loop; its dead letters go to the real DLQ topic."""
    sink = KafkaSink(settings, client_id="dlq-replay-test")
    loop = ClassifierLoop(InMemorySource(records), sink, KeywordClassifier(poison="poison"), settings)
    try:
        while loop.step():
            pass
    finally:
        sink.close()


def test_replay_by_error_class_resends_exactly_those_originals_with_the_replay_header(
    broker, topic_names, capsys
):
    names = topic_names()
    settings = pipeline_settings(broker, names)
    ensure_topics(settings.kafka, {names["input"]: 2, names["output"]: 1, names["dlq"]: 1})
    topic = names["input"]
    poison = [
        RawRecord(
            topic, 0, 1, b"p1", b'{"id": "p1", "text": "poison one"}', [("trace", b"\x00\xff"), ("n", None)]
        ),
        RawRecord(topic, 1, 1, None, b'{"id": "p2", "text": "poison two"}'),
    ]
    _dead_letter(
        settings,
        [
            RawRecord(topic, 0, 0, b"g", b'{"id": "g", "text": "a good day"}'),
            poison[0],
            RawRecord(topic, 1, 0, b"j", b'{"id": ', [("h", b"1")]),  # InvalidJson
            poison[1],
            RawRecord(topic, 1, 2, None, None, [("n", None)]),  # Tombstone
        ],
    )
    dlq = {(d.source_partition, d.source_offset): d.offset for d in _dlq(settings, names["dlq"])}
    assert len(dlq) == 4
    cli = ["--bootstrap-servers", broker, "--dlq-topic", names["dlq"], "--timeout", "30"]

    assert main(["dlq", "list", *cli]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"ClassificationFailed +2 +0 +0:\d+-\d+", listed), listed
    assert "4 dead letters" in listed

    assert main(["dlq", "replay", "--error-class", "ClassificationFailed", "--dry-run", *cli]) == 0
    dry = capsys.readouterr().out
    assert dry.count("would re-send dlq 0:") == 2 and "would re-send 2, skipped 0" in dry, dry
    assert topic_size(settings.kafka, topic) == 0, "a dry run sends nothing"

    assert main(["dlq", "replay", "--error-class", "ClassificationFailed", *cli]) == 0
    out = capsys.readouterr().out
    assert "selected 2, re-sent 2, skipped 0" in out
    assert "1 records had a null key or header value" in out
    replayed = sorted(read_committed(settings.kafka, topic, timeout_s=30), key=lambda r: r[0])
    assert [(p, key, value, headers) for p, _, key, value, headers in replayed] == [
        (
            original.partition,
            original.key,
            original.value,
            # kafka-python cannot produce a null header value: b"" as in the dead letter (documented).
            [(name, raw or b"") for name, raw in original.headers]
            + [(REPLAYED_FROM, f"{names['dlq']}/0/{dlq[(original.partition, original.offset)]}".encode())],
        )
        for original in poison
    ]

    # They fail again; with --max-replays 1 the next replay refuses them. Starting after what the
    # first run read (its own hint) leaves the first-generation dead letters out.
    _dead_letter(settings, [RawRecord(topic, p, o, k, v, h) for p, o, k, v, h in replayed])
    after = re.search(r"add: (.*)$", out, re.MULTILINE)
    assert after is not None, out
    again = ["dlq", "replay", "--error-class", "ClassificationFailed", "--max-replays", "1"]
    assert main([*again, *after[1].split(), *cli]) == 0
    out = capsys.readouterr().out
    assert "selected 2, re-sent 0, skipped 2 (2 replay limit)" in out, out
    assert out.count("already replayed --max-replays times") == 2
    assert topic_size(settings.kafka, topic) == 2


def _dlq(settings, topic: str):
    return [parse_dlq(p, o, h) for p, o, _, _, h in read_committed(settings.kafka, topic, timeout_s=30)]
