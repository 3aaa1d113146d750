"""The loop under a failing model and an unwritable DLQ (issue 5's poison-input rules, at unit level)."""

import json
import threading
import time
from collections.abc import Sequence

import numpy as np
import orjson

from schemas.dlq import DlqHeader
from schemas.errors import DeliveryError
from schemas.settings import Settings
from workers.loop import ClassifierLoop
from workers.records import OutboundRecord, RawRecord
from workers.testing import InMemorySink, InMemorySource, KeywordClassifier

SETTINGS = Settings.load(
    overrides={
        "topics": {"input": "in", "output": "out", "dlq": "dlq"},
        "workers": {"max_batch_records": 64, "produce_timeout_s": 1.0},
    }
)


def _tweet(offset: int, text: str) -> RawRecord:
    return RawRecord("in", 0, offset, None, json.dumps({"id": f"t{offset}", "text": text}).encode())


class OutOfMemoryOnText(KeywordClassifier):
    """Fails a whole forward pass whenever one text of the batch is ``fatal`` (like an OOM would)."""

    def __init__(self, fatal: str) -> None:
        super().__init__()
        self.fatal = fatal

    def classify(self, texts: Sequence[str]) -> np.ndarray:
        if self.fatal in texts:
            self.calls.append(len(texts))
            raise MemoryError(f"simulated out of memory on a batch of {len(texts)}")
        return super().classify(texts)


def test_a_batch_failing_in_the_model_is_split_until_only_the_bad_record_is_dead_lettered():
    texts = [f"good tweet {i}" for i in range(64)]
    texts[37] = "the one that kills the model"
    classifier = OutOfMemoryOnText(fatal=texts[37])
    source, sink = InMemorySource([_tweet(i, t) for i, t in enumerate(texts)]), InMemorySink()
    loop = ClassifierLoop(source, sink, classifier, SETTINGS)

    assert loop.step() == 64

    assert sorted(orjson.loads(r.value)["id"] for r in sink.on("out")) == sorted(
        f"t{i}" for i in range(64) if i != 37
    )
    (dead,) = sink.on("dlq")
    headers = dict(dead.headers)
    assert headers[DlqHeader.SOURCE_OFFSET.value] == b"37"
    assert headers[DlqHeader.ERROR_CLASS.value] == b"ClassificationFailed"
    assert headers[DlqHeader.ERROR_STAGE.value] == b"classify"
    assert headers[DlqHeader.ERROR_MESSAGE.value] == (
        b"the model failed on this record: MemoryError: simulated out of memory on a batch of 1"
    )
    assert dead.value == _tweet(37, texts[37]).value
    # Binary search, depth first: each level splits the failing half in two, so isolating one record
    # of 64 costs 1 + 2 * log2(64) = 13 forward passes, not 64.
    assert classifier.calls == [64, 32, 32, 16, 8, 4, 4, 2, 1, 1, 2, 8, 16]
    assert source.committed() == {("in", 0): 64}
    assert (loop.stats.classified, loop.stats.dead_lettered) == (63, 1)


class DlqDown(InMemorySink):
    """The output topic works; any delivery containing a dead-letter record fails (DLQ unwritable)."""

    def __init__(self, dlq_topic: str) -> None:
        super().__init__()
        self.dlq_topic = dlq_topic
        self.attempts = 0

    def deliver(self, records: Sequence[OutboundRecord], timeout_s: float) -> None:
        self.attempts += 1
        if any(r.topic == self.dlq_topic for r in records):
            raise DeliveryError(f"the dead-letter topic is not writable ({len(records)} records)")
        super().deliver(records, timeout_s)


def test_an_unwritable_dlq_stops_progress_and_is_reported_never_skipped():
    records = [_tweet(0, "good"), RawRecord("in", 0, 1, b"k", b"{not json"), _tweet(2, "bad")]
    source, sink = InMemorySource(records), DlqDown("dlq")
    loop = ClassifierLoop(source, sink, KeywordClassifier(), SETTINGS)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), kwargs={"drain_timeout_s": 1}, daemon=True)
    thread.start()
    # The model thread retries the same batch with a backoff; nothing is committed, nothing skipped.
    deadline = time.monotonic() + 10
    while loop.stats.delivery_failures < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert loop.stats.delivery_failures >= 3
    assert source.commits == []
    assert sink.attempts == loop.stats.delivery_failures
    assert sink.delivered == [], "the good records of the batch are not delivered without its DLQ record"
    assert loop.stats.last_error == "the dead-letter topic is not writable (3 records)"
    assert loop.stats.consumed == 0 and loop.stats.dead_lettered == 0

    # When the DLQ comes back, the same batch goes through and is committed once.
    sink.dlq_topic = "nowhere"
    assert loop.step() == 3  # read again from the first offset after the stop rewound it
    assert source.commits == [{("in", 0): 3}]
    (dead,) = sink.on("dlq")
    assert dead.value == b"{not json"
