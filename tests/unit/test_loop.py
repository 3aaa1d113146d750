import json
import threading

import orjson

from schemas.dlq import DlqHeader
from schemas.records import LabeledTweet
from schemas.settings import Settings
from workers.loop import ClassifierLoop
from workers.records import RawRecord
from workers.testing import InMemorySink, InMemorySource, KeywordClassifier

SETTINGS = Settings.load(overrides={"topics": {"input": "in", "output": "out", "dlq": "dlq"}})


def _tweet(partition: int, offset: int, text: str, headers=None) -> RawRecord:
    value = json.dumps({"id": f"{partition}-{offset}", "text": text}).encode()
    return RawRecord("in", partition, offset, f"k{offset}".encode(), value, headers or [])


def _loop(records, classifier=None, settings=SETTINGS):
    source, sink = InMemorySource(records), InMemorySink()
    return ClassifierLoop(source, sink, classifier or KeywordClassifier(), settings), source, sink


def test_good_tweets_are_labeled_and_committed_after_delivery():
    loop, source, sink = _loop([_tweet(0, 0, "good day"), _tweet(0, 1, "bad day"), _tweet(1, 0, "a day")])
    assert loop.step() == 3
    out = [LabeledTweet.model_validate_json(r.value) for r in sink.on("out")]
    assert [(t.id, t.label.value) for t in out] == [
        ("0-0", "POSITIVE"),
        ("0-1", "NEGATIVE"),
        ("1-0", "NEUTRAL"),
    ]
    assert [(t.source_partition, t.source_offset) for t in out] == [(0, 0), (0, 1), (1, 0)]
    assert sink.on("out")[0].key == b"k0"
    assert source.commits == [{("in", 0): 2, ("in", 1): 1}]
    assert loop.stats.classified == 3 and loop.stats.dead_lettered == 0


def test_bad_json_goes_to_dlq_with_original_bytes_and_error_headers():
    bad = RawRecord("in", 2, 9, b"key-bytes", b"{not json", [("trace", b"\x00\x01")])
    loop, source, sink = _loop([_tweet(2, 8, "good"), bad])
    loop.step()
    (dead,) = sink.on("dlq")
    assert (dead.key, dead.value) == (b"key-bytes", b"{not json")
    headers = dict(dead.headers)
    assert dead.headers[0] == ("trace", b"\x00\x01")
    assert headers[DlqHeader.SOURCE_TOPIC.value] == b"in"
    assert headers[DlqHeader.SOURCE_PARTITION.value] == b"2"
    assert headers[DlqHeader.SOURCE_OFFSET.value] == b"9"
    assert headers[DlqHeader.ERROR_CLASS.value] == b"InvalidJson"
    assert b"not valid JSON" in headers[DlqHeader.ERROR_MESSAGE.value]
    assert headers[DlqHeader.ERROR_STAGE.value] == b"decode"
    assert len(sink.on("out")) == 1
    assert source.committed() == {("in", 2): 10}


def test_tombstone_keeps_its_null_value_in_the_dlq():
    loop, _, sink = _loop([RawRecord("in", 0, 0, b"k", None)])
    loop.step()
    (dead,) = sink.on("dlq")
    assert dead.value is None
    assert dict(dead.headers)[DlqHeader.ERROR_CLASS.value] == b"Tombstone"


def test_model_failure_is_isolated_to_the_failing_record():
    records = [_tweet(0, i, "poison" if i == 5 else f"good {i}") for i in range(8)]
    loop, source, sink = _loop(records, KeywordClassifier(poison="poison"))
    loop.step()
    assert sorted(orjson.loads(r.value)["id"] for r in sink.on("out")) == [
        f"0-{i}" for i in range(8) if i != 5
    ]
    (dead,) = sink.on("dlq")
    headers = dict(dead.headers)
    assert headers[DlqHeader.ERROR_CLASS.value] == b"ClassificationFailed"
    assert headers[DlqHeader.ERROR_STAGE.value] == b"classify"
    assert headers[DlqHeader.SOURCE_OFFSET.value] == b"5"
    assert source.committed() == {("in", 0): 8}


def test_undelivered_batch_is_not_committed_and_is_retried():
    loop, source, sink = _loop([_tweet(0, 0, "good"), _tweet(0, 1, "bad")])
    sink.fail_next = 1
    assert loop.step(threading.Event()) == 0
    assert source.commits == []
    assert loop.stats.delivery_failures == 1
    assert "injected failure" in (loop.stats.last_error or "")
    assert loop.step() == 2
    assert [orjson.loads(r.value)["id"] for r in sink.on("out")] == ["0-0", "0-1"]
    assert source.commits == [{("in", 0): 2}]


def test_commits_follow_batches_in_order():
    settings = Settings.load(
        overrides={
            "topics": {"input": "in", "output": "out", "dlq": "dlq"},
            "workers": {"max_batch_records": 2},
        }
    )
    loop, source, sink = _loop([_tweet(0, i, "x") for i in range(5)], settings=settings)
    stop = threading.Event()
    while loop.step(stop):
        pass
    assert source.commits == [{("in", 0): 2}, {("in", 0): 4}, {("in", 0): 5}]
    assert len(sink.on("out")) == 5


def test_commit_refused_during_a_rebalance_is_made_after_the_next_poll():
    settings = Settings.load(
        overrides={
            "topics": {"input": "in", "output": "out", "dlq": "dlq"},
            "workers": {"max_batch_records": 2},
        }
    )
    loop, source, sink = _loop([_tweet(0, i, "x") for i in range(3)], settings=settings)
    source.rebalancing_commits = 1
    assert loop.step() == 2
    assert source.commits == [] and loop.stats.commit_failures == 1
    assert loop.step() == 1
    assert source.commits == [{("in", 0): 3}]
    assert loop.step() == 0
    assert source.commits == [{("in", 0): 3}] and len(sink.on("out")) == 3
