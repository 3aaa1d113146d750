"""A dead-letter copy must always be writable, whatever the size of the record it copies.

The input topic accepts records up to the broker's ``message.max.bytes`` (~1 MiB); the DLQ copy
carries the original bytes plus clstream's error headers, so a copy of a record near that limit
is larger than the producer's ``max_request_size`` and would be refused on every retry, stalling
its partition for good. Both delivery modes.
"""

from __future__ import annotations

import threading

import pytest
from kafka import KafkaProducer

from pipelines.kafka_tools.admin import ensure_topics
from pipelines.kafka_tools.records_io import read_topic
from schemas.dlq import DlqHeader
from tests.integration.support import keyword_loop, pipeline_settings, wait_until

#: With its header, just under the broker's default message.max.bytes (1,048,588) once framed; the
#: DLQ copy, with clstream's headers added, is over the producer's 1 MiB request limit.
BIG = 1_046_400
BIG_HEADER = 2_000


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_dead_letter_too_large_to_produce_is_truncated_and_says_so(broker, topic_names, delivery):
    names = topic_names()
    settings = pipeline_settings(broker, names, workers={"delivery": delivery, "poll_timeout_ms": 100})
    topic = names["input"]
    ensure_topics(settings.kafka, {topic: 1, names["output"]: 1, names["dlq"]: 1})
    producer = KafkaProducer(**settings.kafka.client_config(), acks="all", max_request_size=1_048_576)
    big = b"{" + b"x" * (BIG - 1)  # not JSON: dead-lettered
    producer.send(topic, key=b"big", value=big, headers=[("h", b"y" * BIG_HEADER)])
    producer.send(topic, key=b"ok", value=b'{"id": "after", "text": "a good tweet after it"}')
    producer.flush()
    producer.close()

    loop = keyword_loop(settings, "dlq-size-test")
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: loop.stats.consumed == 2, 60, "both records to be committed")
    finally:
        stop.set()
        thread.join(30)
        loop.source.close()
        loop.sink.close()

    committed = delivery == "exactly-once"
    (dead,) = list(read_topic(settings.kafka, names["dlq"], read_committed=committed))
    _, _, key, value, headers = dead
    ours = dict(headers)
    assert key == b"big"
    assert value is not None and big.startswith(value) and len(value) < BIG
    assert ours[DlqHeader.TRUNCATED.value] == f"value={BIG}".encode()
    assert ours[DlqHeader.ERROR_CLASS.value] == b"InvalidJson"
    assert ours[DlqHeader.SOURCE_OFFSET.value] == b"0"
    (labeled,) = list(read_topic(settings.kafka, names["output"], read_committed=committed))
    assert b'"after"' in labeled[3]
