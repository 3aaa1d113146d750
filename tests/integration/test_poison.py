"""The poison-input catalogue (tests/poison.py) through the whole pipeline: real broker, real Ray.

Each bad record lands in the DLQ exactly once, with its original key, value and headers byte for
byte followed by clstream's error headers; every valid record around it (the catalogue's valid
cases and plain filler tweets) is labeled exactly once; and the whole catalogue, sent at once
after the actors are up, is through within ``LATENCY_BOUND_S``. Both delivery modes; the input
topic mixes every compression codec producers use (the fillers in gzip, snappy, lz4 and zstd
batches written by kcat/librdkafka, the catalogue gzip-compressed by kafka-python).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import orjson
import pytest
from kafka import KafkaProducer

from pipelines.kafka_tools.admin import ensure_topics
from pipelines.kafka_tools.verify import (
    InputRecord,
    compare,
    input_id,
    parse_dlq,
    parse_output,
    read_committed,
)
from schemas.dlq import DlqHeader
from schemas.records import LabeledTweet
from tests.integration.support import pipeline_settings, running_pipeline, wait_until
from tests.poison import BAD, CATALOGUE, VALID, PoisonCase

FILLERS = 200
#: Every codec Kafka defines; the fillers are spread over them in equal batches.
CODECS = ("gzip", "snappy", "lz4", "zstd")
#: From the last record acknowledged by the broker to the group's lag reaching 0, with a tiny model
#: on a 2-core machine shared with other work. The slowest valid record (the 100k-character word)
#: tokenizes in ~0.05 s and the 1 MB text is rejected before the tokenizer sees it; measured ~2-5 s.
LATENCY_BOUND_S = 60.0


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_poison_catalogue_goes_to_the_dlq_once_byte_for_byte_and_valid_records_flow(
    broker, ray_cluster, topic_names, tiny_model, report, delivery
):
    encoder, head = tiny_model
    names = topic_names()
    settings = pipeline_settings(
        broker, names, workers={"count": 1, "delivery": delivery}, model={"encoder": encoder, "head": head}
    )
    ensure_topics(settings.kafka, {names["input"]: 2, names["output"]: 2, names["dlq"]: 1})

    with running_pipeline(settings, partitions=2) as driver:
        wait_until(lambda: any(a.state == "running" for a in driver.tick().actors), 180, "the actor to start")
        sent = _send_catalogue_between_fillers(broker, settings.kafka.client_config(), names["input"])
        sent_at = time.monotonic()
        stop = threading.Event()
        timer = threading.Timer(LATENCY_BOUND_S, stop.set)
        timer.start()
        try:
            driver.run(stop, until=lambda v: v.lag.total_end >= len(sent) and v.lag.total == 0)
        finally:
            timer.cancel()
        took = time.monotonic() - sent_at
        assert not stop.is_set(), f"the catalogue was not through within {LATENCY_BOUND_S:.0f}s"

    dlq = list(read_committed(settings.kafka, names["dlq"]))
    out = list(read_committed(settings.kafka, names["output"]))
    # Every bad case once, by position, with its bytes intact and the verdict in the last headers.
    assert len(dlq) == len(BAD)
    seen = set()
    for partition, offset, key, value, headers in dlq:
        located = parse_dlq(partition, offset, headers)
        position = (located.source_partition, located.source_offset)
        case = sent[position]
        assert case.verdict is not None, f"{case.name} at {position} was dead-lettered"
        ours = dict(headers[len(case.headers) :])
        nulls = ours.pop(DlqHeader.SOURCE_NULLS.value, b"").decode().split(",")
        # Byte for byte, except nulls kafka-python cannot produce, which are b"" and named.
        original_key = None if "key" in nulls else key
        original_headers = [
            (name, None if f"header:{i}" in nulls else raw)
            for i, (name, raw) in enumerate(headers[: len(case.headers)])
        ]
        assert (original_key, value) == (case.key, case.value), case.name
        assert original_headers == case.headers, case.name
        assert ours[DlqHeader.ERROR_CLASS.value] == case.verdict.encode(), case.name
        assert ours[DlqHeader.SOURCE_TOPIC.value] == names["input"].encode()
        optional = {DlqHeader.SOURCE_NULLS.value, DlqHeader.TRUNCATED.value}
        assert set(ours) == {h.value for h in DlqHeader} - optional, case.name
        seen.add(case.name)
    assert seen == {case.name for case in BAD}

    labeled = [LabeledTweet.model_validate_json(value) for *_, value, _ in out]
    assert len(labeled) == FILLERS + len(VALID)
    for tweet in labeled:
        case = sent[(tweet.source_partition, tweet.source_offset)]
        assert case.verdict is None, f"{case.name} was labeled"
    verdict = compare(
        names["input"],
        [InputRecord(p, o, input_id(case.value)) for (p, o), case in sent.items()],
        [parse_output(p, o, v) for p, o, _, v, _ in out],
        [parse_dlq(p, o, h) for p, o, _, _, h in dlq],
        delivery="exactly-once",
    )
    assert verdict.ok, verdict.table()
    assert (verdict.lost, verdict.duplicates, verdict.in_both, verdict.delivered) == (0, 0, 0, len(sent))
    report(
        f"poison catalogue, mixed codecs, {delivery}",
        records=len(sent),
        bad=len(BAD),
        valid_cases=len(VALID),
        fillers=FILLERS,
        dlq=len(dlq),
        labeled=len(labeled),
        lost=verdict.lost,
        duplicates=verdict.duplicates,
        through_s=round(took, 1),
    )


def _filler(n: int) -> PoisonCase:
    value = orjson.dumps({"id": f"fill-{n}", "text": f"an ordinary tweet, number {n}"})
    return PoisonCase(f"filler-{n}", value, None, key=f"f{n}".encode())


def _send_catalogue_between_fillers(
    bootstrap: str, client_config: dict, topic: str
) -> dict[tuple[int, int], PoisonCase]:
    """Produce fillers with the catalogue among them; returns each record's position -> case.

    Cases kafka-python cannot produce go first, with kcat, to partition 0 (offsets 0, 1, ...).
    The fillers go in compressed batches, one codec each, with kcat; the rest of the catalogue
    goes gzip-compressed with kafka-python between them.
    """
    sent = {(0, offset): case for offset, case in enumerate(c for c in CATALOGUE if c.needs_kcat)}
    for case in sent.values():
        _kcat_produce(bootstrap, topic, case)
    fillers = [_filler(n) for n in range(FILLERS)]
    catalogue = [case for case in CATALOGUE if not case.needs_kcat]
    share = len(fillers) // len(CODECS)
    producer = KafkaProducer(**client_config, acks="all", compression_type="gzip")
    try:
        for index, codec in enumerate(CODECS):
            _kcat_produce_batch(bootstrap, topic, fillers[index * share : (index + 1) * share], codec)
            cases = catalogue[index :: len(CODECS)]
            futures = [
                (
                    case,
                    producer.send(topic, key=case.key, value=case.value, headers=list(case.headers) or None),
                )
                for case in cases
            ]
            producer.flush()
            for case, future in futures:
                meta = future.get(timeout=30)
                sent[(meta.partition, meta.offset)] = case
    finally:
        producer.close()
    _kcat_produce_batch(bootstrap, topic, fillers[len(CODECS) * share :], "none")
    # kcat's producer reports no offsets: place each filler by its key, read back by kcat too
    # (the reader of a test must not depend on the codecs under test being in kafka-python).
    by_key = {case.key: case for case in fillers}
    for partition, offset, key in _kcat_positions(bootstrap, topic):
        if key in by_key:
            sent[(partition, offset)] = by_key.pop(key)
    assert not by_key and len(sent) == len(CATALOGUE) + FILLERS, "every record was written"
    return sent


def _kcat_positions(bootstrap: str, topic: str) -> list[tuple[int, int, bytes]]:
    cmd = [_kcat(), "-C", "-b", bootstrap, "-t", topic, "-e", "-q", "-f", "%p %o %k\\n"]
    lines = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout.split(b"\n")
    return [
        (int(p), int(o), k) for p, o, k in (line.split(b" ", 2) for line in lines if line.count(b" ") >= 2)
    ]


def _kcat_produce_batch(bootstrap: str, topic: str, cases: list[PoisonCase], codec: str) -> None:
    """Keyed records in one kcat run, compressed with ``codec`` (librdkafka batches them)."""
    kcat = _kcat()
    lines = b"".join((case.key or b"") + b"\t" + (case.value or b"") + b"\n" for case in cases)
    cmd = [kcat, "-P", "-b", bootstrap, "-t", topic, "-K", "\t", "-z", codec, "-X", "linger.ms=50"]
    subprocess.run(cmd, input=lines, check=True, timeout=60)


def _kcat() -> str:
    kcat = shutil.which("kcat")
    if kcat is None:  # `make test` installs it
        pytest.fail("kcat is not installed (Debian package kcat); `make test` installs it")
    return kcat


def _kcat_produce(bootstrap: str, topic: str, case: PoisonCase) -> None:
    """One record with kcat: -Z makes an empty key/value NULL; `-H name` alone is a NULL header value."""
    kcat = _kcat()
    assert case.value is None or b"\t" not in case.value and b"\n" not in case.value
    headers = [
        arg for name, raw in case.headers for arg in ("-H", name if raw is None else f"{name}={raw.decode()}")
    ]
    line = (case.key or b"") + b"\t" + (case.value or b"")
    cmd = [kcat, "-P", "-b", bootstrap, "-t", topic, "-p", "0", "-Z", "-K", "\t", *headers]
    subprocess.run(cmd, input=line + b"\n", check=True, timeout=60)
