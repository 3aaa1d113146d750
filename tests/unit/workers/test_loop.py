import json
import threading
import time

import orjson
import pytest

from schemas.dlq import DlqHeader
from schemas.records import LabeledTweet
from schemas.settings import Settings
from workers.loop import ClassifierLoop, record_bytes
from workers.records import RawRecord
from workers.testing import InMemorySink, InMemorySource, InMemoryTransactionalSink, KeywordClassifier

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


def test_undelivered_batch_is_retried_and_committed_only_once_delivered():
    loop, source, sink = _loop([_tweet(0, 0, "good"), _tweet(0, 1, "bad")])
    sink.fail_next = 2
    assert loop.step() == 2
    assert loop.stats.delivery_failures == 2
    assert "injected failure" in (loop.stats.last_error or "")
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
    while loop.step():
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
    assert loop.step() == 0  # delivered, but the commit was refused: kept for the next one
    assert source.commits == [] and loop.stats.commit_failures == 1 and len(sink.on("out")) == 2
    assert loop.step() == 3
    assert source.commits == [{("in", 0): 3}]
    assert loop.step() == 0
    assert source.commits == [{("in", 0): 3}] and len(sink.on("out")) == 3


def _run_in_thread(loop):
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), kwargs={"drain_timeout_s": 10}, daemon=True)
    thread.start()
    return stop, thread


def _await(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached before the deadline")


def _threaded_settings(**workers):
    return Settings.load(
        overrides={
            "topics": {"input": "in", "output": "out", "dlq": "dlq"},
            "workers": {"max_batch_records": 10, "poll_timeout_ms": 10, **workers},
        }
    )


def test_spent_credit_pauses_partitions_but_keeps_polling_through_a_stalled_batch():
    gate = threading.Event()
    records = [_tweet(p, i, f"tweet {i}") for p in range(2) for i in range(50)]
    loop, source, sink = _loop(
        records, KeywordClassifier(gate=gate), _threaded_settings(max_inflight_batches=2)
    )
    stop, thread = _run_in_thread(loop)
    _await(lambda: source.paused)
    polls_when_paused = source.polls
    _await(lambda: source.polls > polls_when_paused + 5)  # the member keeps polling while the model is stuck
    assert loop.stats.inflight_batches == 2 and source.commits == []
    assert loop.unfinished_batches() >= 1  # the model is still on it: work, not a stall
    gate.set()
    _await(lambda: loop.stats.consumed == 100)
    stop.set()
    thread.join(10)
    assert loop.stats.pauses >= 1 and loop.stats.resumes >= 1
    assert source.committed() == {("in", 0): 50, ("in", 1): 50}
    assert sorted(orjson.loads(r.value)["id"] for r in sink.on("out")) == sorted(
        f"{p}-{i}" for p in range(2) for i in range(50)
    )


def test_batches_whose_commits_are_refused_forever_hold_the_credit_but_are_not_unfinished():
    # What the stall watchdog tells apart: finished batches stuck on their commit (kafka-python
    # half way through a rejoin refuses every commit as "rebalancing") are not work in hand.
    records = [_tweet(0, i, f"tweet {i}") for i in range(50)]
    loop, source, sink = _loop(records, settings=_threaded_settings(max_inflight_batches=2))
    source.rebalancing_commits = 10**9
    stop, thread = _run_in_thread(loop)
    _await(lambda: source.paused and loop.stats.commit_failures > 5)
    assert loop.stats.inflight_batches == 2 and loop.unfinished_batches() == 0
    assert loop.stats.consumed == 0 and len(sink.on("out")) == 20
    stop.set()
    thread.join(10)


def test_token_credit_bounds_what_is_in_flight():
    records = [_tweet(0, i, "x" * 400) for i in range(40)]  # ~100+ estimated tokens each
    settings = _threaded_settings(max_inflight_tokens=1000, max_inflight_batches=64)
    loop, source, _ = _loop(records, KeywordClassifier(delay_s=0.02), settings)
    peak = 0
    stop, thread = _run_in_thread(loop)
    deadline = time.monotonic() + 10
    while loop.stats.consumed < 40 and time.monotonic() < deadline:
        peak = max(peak, loop.stats.inflight_tokens)
        time.sleep(0.001)
    stop.set()
    thread.join(10)
    assert loop.stats.consumed == 40
    # Pauses once the credit is spent: at most one batch beyond the budget is ever polled.
    assert 0 < peak < 1000 + 10 * settings.model.max_length
    assert loop.stats.pauses >= 1


def test_byte_credit_bounds_what_is_in_flight_whatever_the_token_estimate():
    # Values the loop rejects unread (not JSON) are cheap in tokens but not in memory.
    records = [RawRecord("in", 0, i, b"k", b"\xff" * 300_000, []) for i in range(20)]
    settings = _threaded_settings(
        max_inflight_bytes=1024**2, max_batch_records=2, max_inflight_batches=64, max_inflight_tokens=10**6
    )
    loop, _, _ = _loop(records, KeywordClassifier(), settings)
    loop.sink = _SlowSink(delay_s=0.02)
    peak = 0
    stop, thread = _run_in_thread(loop)
    deadline = time.monotonic() + 10
    while loop.stats.consumed < 20 and time.monotonic() < deadline:
        peak = max(peak, loop.stats.inflight_bytes)
        time.sleep(0.001)
    stop.set()
    thread.join(10)
    assert loop.stats.consumed == 20
    # Pauses once the credit is spent: at most one batch (2 x 300 kB) beyond it is ever polled.
    assert 0 < peak <= 1024**2 + 2 * 300_002
    assert loop.stats.pauses >= 1


class _SlowSink(InMemorySink):
    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def deliver(self, records, timeout_s):
        time.sleep(self.delay_s)
        super().deliver(records, timeout_s)


def test_revocation_waits_for_batches_in_flight_and_commits_them_before_partitions_move():
    gate = threading.Event()
    records = [_tweet(0, i, "x") for i in range(30)]
    loop, source, _ = _loop(records, KeywordClassifier(gate=gate), _threaded_settings())
    stop, thread = _run_in_thread(loop)
    _await(lambda: loop.stats.inflight_batches == 3)
    assert source.commits == []
    source.revoke_next_poll = True
    _await(lambda: source.polls > 0 and not source.revoke_next_poll)  # the callback is now waiting
    gate.set()
    _await(lambda: source.commits_at_revoke is not None)
    stop.set()
    thread.join(10)
    assert source.committed() == {("in", 0): 30}
    assert source.commits_at_revoke and source.commits_at_revoke[-1] == {("in", 0): 30}


def test_stop_finishes_and_commits_the_batches_in_flight():
    records = [_tweet(0, i, "x") for i in range(20)]
    loop, source, sink = _loop(records, KeywordClassifier(delay_s=0.05), _threaded_settings())
    stop, thread = _run_in_thread(loop)
    _await(lambda: loop.stats.inflight_batches > 0)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert loop.stats.inflight_batches == 0
    committed = source.committed().get(("in", 0), 0)
    assert committed > 0
    assert len(sink.on("out")) >= committed  # everything committed was delivered first


# -- exactly-once ------------------------------------------------------------------------------


def _exactly_once(records, **workers):
    settings = Settings.load(
        overrides={
            "topics": {"input": "in", "output": "out", "dlq": "dlq"},
            "workers": {
                "delivery": "exactly-once",
                "max_batch_records": 10,
                "poll_timeout_ms": 10,
                **workers,
            },
        }
    )
    source, sink = InMemorySource(records), InMemoryTransactionalSink()
    return ClassifierLoop(source, sink, KeywordClassifier(), settings), source, sink


def test_exactly_once_commits_output_and_offsets_in_one_transaction_and_never_directly():
    loop, source, sink = _exactly_once(
        [_tweet(0, i, "good") for i in range(15)] + [RawRecord("in", 0, 15, b"k", b"not json", [])]
    )
    assert loop.step() == 10 and loop.step() == 6
    assert source.commits == [], "offsets go through the transaction, never the consumer"
    assert [offsets for _, offsets, _ in sink.committed] == [{("in", 0): 10}, {("in", 0): 16}]
    assert all(metadata == "generation-1" for _, _, metadata in sink.committed)
    assert len(sink.on("out")) == 15 and len(sink.on("dlq")) == 1


def test_an_aborted_transaction_is_retried_and_its_output_appears_once():
    loop, _, sink = _exactly_once([_tweet(0, i, "good") for i in range(5)])
    sink.abort_next = 2
    assert loop.step() == 5
    assert sink.aborted == 2 and len(sink.committed) == 1
    assert sorted(orjson.loads(r.value)["id"] for r in sink.on("out")) == [f"0-{i}" for i in range(5)]


def test_a_fenced_batch_and_those_after_it_are_read_again_from_their_first_offsets():
    records = [_tweet(p, i, "good") for p in range(2) for i in range(30)]
    loop, source, sink = _exactly_once(records, max_inflight_batches=8)
    sink.fence_next = 1
    stop, thread = _run_in_thread(loop)
    _await(lambda: sink.committed_offsets() == {("in", 0): 30, ("in", 1): 30})
    stop.set()
    thread.join(10)
    assert source.seeks and source.seeks[0][("in", 0)] == 0, "read again from the fenced batch's start"
    ids = [orjson.loads(r.value)["id"] for r in sink.on("out")]
    assert sorted(ids) == sorted(f"{p}-{i}" for p in range(2) for i in range(30)), "each id exactly once"
    assert source.commits == []


def test_a_batch_that_fails_unexpectedly_stops_every_later_transaction_from_committing_past_it():
    records = [_tweet(0, i, "good") for i in range(30)]
    loop, source, sink = _exactly_once(records, max_inflight_batches=4)
    loop.classifier = KeywordClassifier(delay_s=0.05)  # the next batches are polled before it fails
    sink.crash_next = 1
    stop, thread = _run_in_thread(loop)
    _await(lambda: sink.committed_offsets() == {("in", 0): 30})
    stop.set()
    thread.join(10)
    # Every transaction's offsets are covered by the output committed so far: none ever commits
    # past the batch that failed (a transaction may span several batches, so not one per batch).
    done: set[str] = set()
    for records, offsets, _ in sink.committed:
        done |= {orjson.loads(r.value)["id"] for r in records}
        assert {f"0-{i}" for i in range(offsets[("in", 0)])} <= done
    ids = [orjson.loads(r.value)["id"] for r in sink.on("out")]
    assert sorted(ids) == sorted(f"0-{i}" for i in range(30)), "each id exactly once"


def test_exactly_once_refuses_a_sink_without_transactions():
    settings = Settings.load(overrides={"workers": {"delivery": "exactly-once"}})
    with pytest.raises(TypeError, match="transactional sink"):
        ClassifierLoop(InMemorySource([]), InMemorySink(), KeywordClassifier(), settings)


def test_at_least_once_refuses_a_sink_that_only_delivers_in_transactions():
    settings = Settings.load(overrides={"workers": {"delivery": "at-least-once"}})
    with pytest.raises(TypeError, match="sink that delivers"):
        ClassifierLoop(InMemorySource([]), InMemoryTransactionalSink(), KeywordClassifier(), settings)


def test_a_dead_letter_over_the_size_limit_keeps_the_first_bytes_and_says_what_was_cut():
    settings = Settings.load(
        overrides={"topics": {"input": "in", "dlq": "dlq", "dlq_max_record_bytes": 20_000}}
    )
    big = RawRecord("in", 0, 0, b"key", b"{" + b"x" * 50_000, [("h", b"small")])
    loop, _, sink = _loop([big], settings=settings)
    loop.step()
    (dead,) = sink.on("dlq")
    assert record_bytes(dead) <= 20_000
    assert big.value.startswith(dead.value) and len(dead.value) > 19_000
    headers = dict(dead.headers)
    assert headers[DlqHeader.TRUNCATED.value] == b"value=50001"
    assert headers["h"] == b"small" and dead.key == b"key"


def test_a_dead_letter_whose_headers_alone_are_too_large_leaves_them_out_and_says_so():
    settings = Settings.load(
        overrides={"topics": {"input": "in", "dlq": "dlq", "dlq_max_record_bytes": 20_000}}
    )
    big = RawRecord("in", 0, 0, b"key", b"not json", [("h", b"y" * 30_000)])
    loop, _, sink = _loop([big], settings=settings)
    loop.step()
    (dead,) = sink.on("dlq")
    assert record_bytes(dead) <= 20_000
    headers = dict(dead.headers)
    assert "h" not in headers and headers[DlqHeader.ERROR_CLASS.value] == b"InvalidJson"
    assert headers[DlqHeader.TRUNCATED.value] == b"value=8,headers=30001"


def test_a_dead_letter_within_the_limit_is_copied_byte_for_byte_without_a_truncation_header():
    record = RawRecord("in", 0, 0, b"key", b"{" + b"x" * 5_000, [("h", b"small")])
    loop, _, sink = _loop([record])
    loop.step()
    (dead,) = sink.on("dlq")
    assert (dead.key, dead.value) == (record.key, record.value)
    assert DlqHeader.TRUNCATED.value not in dict(dead.headers)


# -- continuous batching --------------------------------------------------------------------------


class _TrickleSource(InMemorySource):
    """Polls of at most three records: records arriving a few at a time."""

    def poll(self, timeout_ms: int, max_records: int):
        return super().poll(timeout_ms, min(3, max_records))


@pytest.mark.parametrize(
    ("source_type", "max_batch_records", "records", "most_calls"),
    [
        # Records arriving three at a time (polls of up to 12 return 3): calls gather the polls
        # waiting, up to max_call_records.
        (_TrickleSource, 12, 30, 4),
        # Polls of four: ten of them in at most five calls, each spanning up to three polls.
        (InMemorySource, 4, 40, 5),
    ],
)
def test_batches_waiting_when_the_model_is_free_share_one_model_call(
    source_type, max_batch_records, records, most_calls
):
    gate = threading.Event()
    classifier = KeywordClassifier(gate=gate)
    settings = _threaded_settings(
        max_batch_records=max_batch_records, max_call_records=12, max_inflight_batches=8
    )
    source, sink = source_type([_tweet(0, i, f"good {i}") for i in range(records)]), InMemorySink()
    loop = ClassifierLoop(source, sink, classifier, settings)
    stop, thread = _run_in_thread(loop)
    _await(lambda: loop.stats.inflight_batches == 8)  # one poll in the model, seven waiting
    gate.set()
    _await(lambda: loop.stats.consumed == records)
    stop.set()
    thread.join(10)
    assert sum(classifier.calls) == records and max(classifier.calls) == 12, classifier.calls
    assert len(classifier.calls) <= most_calls, classifier.calls
    assert [orjson.loads(r.value)["id"] for r in sink.on("out")] == [f"0-{i}" for i in range(records)]
    assert source.committed() == {("in", 0): records}


def test_a_paused_member_resumes_when_a_batch_finishes_not_when_its_poll_times_out():
    # With one batch of credit every poll pauses the partitions; a poll with nothing fetchable
    # blocks for poll_timeout_ms (5 s here), so waiting for it would take 10 x 5 s.
    settings = _threaded_settings(max_batch_records=3, max_inflight_batches=1, poll_timeout_ms=5_000)
    source, sink = InMemorySource([_tweet(0, i, "x") for i in range(30)]), InMemorySink()
    loop = ClassifierLoop(source, sink, KeywordClassifier(), settings)
    started = time.monotonic()
    stop, thread = _run_in_thread(loop)
    _await(lambda: loop.stats.consumed == 30, timeout_s=20)
    took = time.monotonic() - started
    stop.set()
    thread.join(10)
    assert loop.stats.pauses >= 9
    assert took < 5, f"30 records in polls of 3 took {took:.1f}s: the member waited out its polls"


def test_an_exactly_once_transaction_spans_the_micro_batches_of_its_linger():
    records = [_tweet(0, i, "good") for i in range(30)]
    loop, source, sink = _exactly_once(records, transaction_linger_ms=300, max_inflight_batches=16)
    loop.source = source = _TrickleSource(records)
    loop.commits = type(loop.commits)(source, sink)
    stop, thread = _run_in_thread(loop)
    _await(lambda: sink.committed_offsets() == {("in", 0): 30})
    stop.set()
    thread.join(10)
    assert loop.stats.batches == 10  # ten polls of three
    assert len(sink.committed) < 10, "one transaction per poll: the linger did not gather them"
    ids = [orjson.loads(r.value)["id"] for r in sink.on("out")]
    assert ids == [f"0-{i}" for i in range(30)], "each id exactly once, in order"


def test_a_tweet_is_classified_on_its_repaired_text_and_its_record_is_not_rewritten():
    classifier = KeywordClassifier()
    loop, _, sink = _loop([_tweet(0, 0, "good &amp; CafÃ© donâ€™t"), _tweet(0, 1, "plain day")], classifier)
    assert loop.step() == 2
    assert classifier.texts == ["good & Café don’t", "plain day"]
    out = [LabeledTweet.model_validate_json(r.value) for r in sink.on("out")]
    assert [(t.id, t.label.value) for t in out] == [("0-0", "POSITIVE"), ("0-1", "NEUTRAL")]


def test_with_repair_off_a_tweet_is_classified_on_its_text_as_sent():
    settings = Settings.load(
        overrides={
            "topics": {"input": "in", "output": "out", "dlq": "dlq"},
            "workers": {"repair_text": False},
        }
    )
    classifier = KeywordClassifier()
    loop, _, _ = _loop([_tweet(0, 0, "good &amp; CafÃ©")], classifier, settings)
    assert loop.step() == 1
    assert classifier.texts == ["good &amp; CafÃ©"]
