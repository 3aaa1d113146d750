"""Failures that are not a record's: the device running out of memory, a zombie producer.

A record error dead-letters the record; a device error must never dead-letter a good record: the
batch is split (a smaller batch needs less memory) and a single record retried, and if the device
still fails the loop stops with ``DeviceError`` so the driver replaces the actor, leaving the
batch uncommitted for the next owner. A producer fenced by a newer one with its transactional id
(``ProducerFencedError``) stops the loop the same way: it must not re-initialize, which would
fence the live producer in turn, and it commits nothing more. Both delivery modes.
"""

import json
import threading

import orjson
import pytest
import torch

from schemas.errors import DeviceError, ProducerFencedError
from schemas.settings import Settings
from workers.loop import ClassifierLoop
from workers.records import RawRecord
from workers.testing import InMemorySink, InMemorySource, InMemoryTransactionalSink, KeywordClassifier

MODES = ["at-least-once", "exactly-once"]


def _tweet(offset: int) -> RawRecord:
    value = json.dumps({"id": f"0-{offset}", "text": f"good tweet {offset}"}).encode()
    return RawRecord("in", 0, offset, f"k{offset}".encode(), value, [])


class OutOfMemoryAbove(KeywordClassifier):
    """Raises CUDA's out-of-memory error for any batch larger than ``limit`` texts (every batch
    when ``limit`` is 0), as a GPU does when a batch's activations do not fit."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.attempts = 0

    def classify(self, texts):
        self.attempts += 1
        if len(texts) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected: {len(texts)} texts)")
        return super().classify(texts)


def _loop(delivery: str, records, classifier):
    settings = Settings.load(
        overrides={
            "topics": {"input": "in", "output": "out", "dlq": "dlq"},
            "workers": {
                "delivery": delivery,
                "max_batch_records": 16,
                "max_call_records": 16,
                "poll_timeout_ms": 10,
            },
        }
    )
    sink = InMemoryTransactionalSink() if delivery == "exactly-once" else InMemorySink()
    source = InMemorySource(records)
    return ClassifierLoop(source, sink, classifier, settings), source, sink


def _committed(source, sink) -> dict:
    return sink.committed_offsets() if isinstance(sink, InMemoryTransactionalSink) else source.committed()


def _run(loop) -> BaseException | None:
    """Run the threaded loop until it stops by itself (or 10 s); returns what it raised."""
    raised: list[BaseException] = []
    stop = threading.Event()

    def target() -> None:
        try:
            loop.run(stop, drain_timeout_s=5)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    stop.set()
    thread.join(10)
    assert not thread.is_alive(), "the loop did not stop"
    return raised[0] if raised else None


@pytest.mark.parametrize("delivery", MODES)
def test_an_out_of_memory_batch_is_split_and_no_good_record_is_dead_lettered(delivery):
    loop, source, sink = _loop(delivery, [_tweet(i) for i in range(16)], OutOfMemoryAbove(limit=3))
    assert loop.step() == 16
    ids = sorted(orjson.loads(r.value)["id"] for r in sink.on("out"))
    assert ids == sorted(f"0-{i}" for i in range(16))
    assert sink.on("dlq") == [], "a device error dead-lettered good records"
    assert _committed(source, sink) == {("in", 0): 16}


@pytest.mark.parametrize("delivery", MODES)
def test_a_device_that_fails_even_on_one_record_stops_the_loop_with_nothing_dead_lettered(delivery):
    classifier = OutOfMemoryAbove(limit=0)
    loop, source, sink = _loop(delivery, [_tweet(i) for i in range(40)], classifier)
    raised = _run(loop)
    assert isinstance(raised, DeviceError), raised
    assert "out of memory" in str(raised).lower()
    assert classifier.attempts > 2, "a single record was not retried before giving up"
    assert sink.on("dlq") == [] and sink.on("out") == []
    assert _committed(source, sink) == {}, "offsets committed past records never classified"


def test_a_producer_fenced_by_a_newer_one_stops_the_loop_and_commits_nothing_more():
    # A slow model: each poll of 16 reaches the sink alone, so there is a second transaction.
    loop, source, sink = _loop(
        "exactly-once", [_tweet(i) for i in range(48)], KeywordClassifier(delay_s=0.05)
    )
    sink.zombie_after = 1  # the first transaction commits; then a newer producer takes the id
    raised = _run(loop)
    assert isinstance(raised, ProducerFencedError), raised
    (only,) = sink.committed  # one transaction (one or more polls of 16); nothing after it
    assert sink.committed_offsets() == {("in", 0): len(only[0])} and len(only[0]) % 16 == 0
    assert len(sink.on("out")) == len(only[0])
    assert source.commits == []
