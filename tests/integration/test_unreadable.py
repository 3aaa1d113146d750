"""Records the consumer cannot read at all never stall their partition (both delivery modes).

kafka-python raises from ``poll`` on such a record and leaves the partition's position on it, so
without a policy every later poll raises again. clstream dead-letters each unreadable offset by
its coordinates (``Unreadable``, stage ``read``), moves past it, and reads on:

- a header key that is not UTF-8 (Kafka allows any bytes; kafka-python decodes keys as UTF-8);
- a record whose checksum fails: made by flipping a byte of its value in the segment file of a
  cleanly stopped broker (the broker checks CRCs when records are produced, not when they are
  served), on a broker of its own so the shared one is never stopped.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from kafka import KafkaProducer

from pipelines.kafka_tools.admin import ensure_topics
from pipelines.kafka_tools.broker import LocalBroker
from pipelines.kafka_tools.records_io import read_topic
from schemas.dlq import DlqHeader
from schemas.settings import Settings
from tests.conftest import TEST_BROKER_PORT
from tests.integration.support import keyword_loop, pipeline_settings, wait_until
from workers.loop import ClassifierLoop

MODES = ["at-least-once", "exactly-once"]
GOOD = [b'{"id": "before", "text": "good"}', b'{"id": "after", "text": "bad"}']


def _kcat() -> str:
    kcat = shutil.which("kcat")
    if kcat is None:  # `make test` installs it
        pytest.fail("kcat is not installed (Debian package kcat); `make test` installs it")
    return kcat


def _run_loop_until(settings: Settings, records: int) -> ClassifierLoop:
    loop = keyword_loop(settings, "unreadable-test")
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: loop.stats.consumed == records, 60, f"{records} records to be committed")
    finally:
        stop.set()
        thread.join(30)
        loop.source.close()
        loop.sink.close()
    return loop


def _assert_dead_lettered_once(settings: Settings, offset: int, error: str) -> None:
    committed = settings.workers.delivery == "exactly-once"
    (dead,) = list(read_topic(settings.kafka, settings.topics.dlq, read_committed=committed))
    headers = dict(dead[4])
    assert headers[DlqHeader.ERROR_CLASS.value] == b"Unreadable"
    assert headers[DlqHeader.ERROR_STAGE.value] == b"read"
    assert headers[DlqHeader.SOURCE_OFFSET.value] == str(offset).encode()
    assert headers[DlqHeader.SOURCE_PARTITION.value] == b"0"
    assert error.encode() in headers[DlqHeader.ERROR_MESSAGE.value]
    labeled = [v for *_, v, _ in read_topic(settings.kafka, settings.topics.output, read_committed=committed)]
    assert sorted(b'"before"' in v for v in labeled) == [False, True]
    assert any(b'"after"' in v for v in labeled)


@pytest.mark.parametrize("delivery", MODES)
def test_a_header_key_that_is_not_utf8_is_dead_lettered_by_its_coordinates(broker, topic_names, delivery):
    names = topic_names()
    settings = pipeline_settings(broker, names, workers={"delivery": delivery, "poll_timeout_ms": 100})
    ensure_topics(settings.kafka, {names["input"]: 1, names["output"]: 1, names["dlq"]: 1})
    kcat = _kcat()
    produce = [kcat, "-P", "-b", broker, "-t", names["input"], "-p", "0"]
    subprocess.run(produce, input=GOOD[0] + b"\n", check=True, timeout=60)
    # argv is bytes on Linux: the header key goes to the broker as these two bytes.
    subprocess.run(
        [*produce, b"-H", b"\xff\xfe=v"], input=b'{"id": "x", "text": "x"}\n', check=True, timeout=60
    )
    subprocess.run(produce, input=GOOD[1] + b"\n", check=True, timeout=60)

    loop = _run_loop_until(settings, 3)
    assert loop.stats.unreadable == 1 and loop.stats.dead_letters_by_class == {"Unreadable": 1}
    _assert_dead_lettered_once(settings, offset=1, error="CorruptRecordError")


@pytest.fixture(scope="module")
def own_broker():
    """A broker of this module's own, stopped and restarted by the test: never the shared one."""
    local = LocalBroker(TEST_BROKER_PORT + 40)
    local.start()
    yield local
    local.stop()


@pytest.mark.parametrize("delivery", MODES)
def test_a_record_whose_checksum_fails_is_dead_lettered_and_the_partition_reads_on(
    own_broker, topic_names, delivery
):
    names = topic_names()
    settings = pipeline_settings(
        own_broker.bootstrap, names, workers={"delivery": delivery, "poll_timeout_ms": 100}
    )
    ensure_topics(settings.kafka, {names["input"]: 1, names["output"]: 1, names["dlq"]: 1})
    marker = b"corrupt-me-" + names["input"].encode()
    producer = KafkaProducer(**settings.kafka.client_config(), acks="all")
    for value in (GOOD[0], b'{"id": "mid", "text": "' + marker + b'"}', GOOD[1]):
        producer.send(names["input"], value=value, partition=0).get(timeout=30)  # one batch each
    producer.close()

    own_broker.stop()
    segment = _segment_holding(own_broker.state_dir / "data", names["input"], marker)
    data = bytearray(segment.read_bytes())
    at = data.index(marker)
    data[at] ^= 0x01  # the batch's CRC no longer matches
    segment.write_bytes(bytes(data))
    own_broker.start()

    loop = _run_loop_until(settings, 3)
    assert loop.stats.unreadable == 1
    _assert_dead_lettered_once(settings, offset=1, error="CorruptRecordError")


def _segment_holding(data_dir: Path, topic: str, marker: bytes) -> Path:
    for segment in sorted((data_dir / f"{topic}-0").glob("*.log")):
        if marker in segment.read_bytes():
            return segment
    raise AssertionError(f"no segment of {topic}-0 holds the marker")
