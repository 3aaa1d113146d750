"""The poison-input catalogue (tests/poison.py) through the whole pipeline: real broker, real Ray.

Each bad record lands in the DLQ exactly once, with its original key, value and headers byte for
byte followed by clstream's error headers; every valid record around it (the catalogue's valid
cases and plain filler tweets) is labeled exactly once; and the whole catalogue, sent at once
after the actors are up, is through within ``LATENCY_BOUND_S``.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import orjson
import pytest
from kafka import KafkaProducer

from pipelines.driver import Driver
from pipelines.kafka_admin import ensure_topics
from pipelines.verify import InputRecord, compare, input_id, parse_dlq, parse_output, read_committed
from schemas.dlq import DlqHeader
from schemas.records import LabeledTweet
from tests.integration.support import pipeline_settings, wait_until
from tests.poison import BAD, CATALOGUE, VALID, PoisonCase

FILLERS = 200
#: From the last record acknowledged by the broker to the group's lag reaching 0, with a tiny model
#: on a 2-core machine shared with other work. The slowest valid record (the 100k-character word)
#: tokenizes in ~0.05 s and the 1 MB text is rejected before the tokenizer sees it; measured ~2-5 s.
LATENCY_BOUND_S = 60.0


def test_poison_catalogue_goes_to_the_dlq_once_byte_for_byte_and_valid_records_flow(
    broker, ray_cluster, topic_names, tiny_model, report
):
    encoder, head = tiny_model
    names = topic_names()
    settings = pipeline_settings(
        broker, names, workers={"count": 1}, model={"encoder": encoder, "head": head}
    )
    ensure_topics(settings.kafka, {names["input"]: 2, names["output"]: 2, names["dlq"]: 1})

    driver = Driver(settings)
    driver.start(input_partitions=2)
    try:
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
    finally:
        driver.drain()

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
        assert set(ours) == {h.value for h in DlqHeader} - {DlqHeader.SOURCE_NULLS.value}, case.name
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
        "poison catalogue",
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
    """Produce fillers with the catalogue spread among them; returns each record's position -> case.

    Cases kafka-python cannot produce go first, with kcat, to partition 0 (offsets 0, 1, ...).
    """
    sent = {(0, offset): case for offset, case in enumerate(c for c in CATALOGUE if c.needs_kcat)}
    for case in sent.values():
        _kcat_produce(bootstrap, topic, case)
    fillers = [_filler(n) for n in range(FILLERS)]
    catalogue = [case for case in CATALOGUE if not case.needs_kcat]
    step = FILLERS // len(catalogue)
    records: list[PoisonCase] = []
    for index, case in enumerate(catalogue):
        records += [*fillers[index * step : (index + 1) * step], case]
    records += fillers[len(catalogue) * step :]
    producer = KafkaProducer(**client_config, acks="all")
    try:
        futures = [
            (case, producer.send(topic, key=case.key, value=case.value, headers=list(case.headers) or None))
            for case in records
        ]
        producer.flush()
        for case, future in futures:
            meta = future.get(timeout=30)
            sent[(meta.partition, meta.offset)] = case
        return sent
    finally:
        producer.close()


def _kcat_produce(bootstrap: str, topic: str, case: PoisonCase) -> None:
    """One record with kcat: -Z makes an empty key/value NULL; `-H name` alone is a NULL header value."""
    kcat = shutil.which("kcat")
    if kcat is None:  # `make test` installs it
        pytest.fail("kcat is not installed (Debian package kcat); `make test` installs it")
    assert case.value is None or b"\t" not in case.value and b"\n" not in case.value
    headers = [
        arg for name, raw in case.headers for arg in ("-H", name if raw is None else f"{name}={raw.decode()}")
    ]
    line = (case.key or b"") + b"\t" + (case.value or b"")
    cmd = [kcat, "-P", "-b", bootstrap, "-t", topic, "-p", "0", "-Z", "-K", "\t", *headers]
    subprocess.run(cmd, input=line + b"\n", check=True, timeout=60)
