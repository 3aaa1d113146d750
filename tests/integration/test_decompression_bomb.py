"""A decompression bomb never takes the actor's memory nor stalls its partition (both modes).

The bomb is one gzip record batch of four records, each 64 MiB of zeros: 256 MiB decompressed
from about 260 KB on the wire, well under the broker's ``max.message.bytes`` (which applies to
the compressed batch). kafka-python decompresses a whole batch into memory before reading its
first record, so without a bound the process reading it holds the 256 MiB several times over.
clstream stops decompressing at ``workers.max_decompressed_batch_bytes`` (64 MiB by default),
dead-letters each of the batch's offsets by its coordinates (``Unreadable``, stage ``read``; its
bytes are never read), at most a poll's worth at a time, moves past it and reads on.

The consumer loop runs in a process of its own (``tests/integration/loop_process.py``), so the
peak RSS measured is that loop's, not the test's (which builds the batch). The cap: the loop
process's peak RSS once built and before its first poll, plus twice the setting.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaProducer

from pipelines.kafka_tools.admin import ensure_topics
from pipelines.kafka_tools.records_io import read_topic
from schemas.dlq import DlqHeader
from schemas.settings import Settings
from tests.integration.support import pipeline_settings

MODES = ["at-least-once", "exactly-once"]
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Four records of 64 MiB of zeros in one batch: four times the default limit.
BOMB_RECORDS, BOMB_RECORD_BYTES = 4, 64 * 1024**2
VALID_BEFORE, VALID_AFTER = 20, 20


def _produce_valid(settings: Settings, ids: list[str]) -> None:
    producer = KafkaProducer(**settings.kafka.client_config(), acks="all")
    for tid in ids:
        producer.send(
            settings.topics.input, value=json.dumps({"id": tid, "text": "good"}).encode(), partition=0
        )
    producer.flush()
    producer.close()


def _produce_bomb(settings: Settings) -> list[int]:
    """One gzip batch holding ``BOMB_RECORDS`` records of zeros; returns their offsets."""
    batch_bytes = BOMB_RECORDS * BOMB_RECORD_BYTES + 1024**2
    producer = KafkaProducer(
        **settings.kafka.client_config(),
        acks="all",
        compression_type="gzip",
        # Room for the whole batch, uncompressed, and time to put every record in it.
        batch_size=batch_bytes,
        max_request_size=batch_bytes,
        linger_ms=5_000,
    )
    zeros = bytes(BOMB_RECORD_BYTES)
    futures = [producer.send(settings.topics.input, value=zeros, partition=0) for _ in range(BOMB_RECORDS)]
    producer.flush()
    offsets = [future.get(timeout=30).offset for future in futures]
    producer.close()
    return offsets


def _run_loop_process(settings: Settings, records: int, tmp_path: Path) -> dict:
    out = tmp_path / "loop.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integration.loop_process",
            settings.model_dump_json(),
            str(records),
            "50",
            str(out),
        ],
        cwd=REPO_ROOT,
        check=True,
        timeout=120,
    )
    return json.loads(out.read_text())


@pytest.mark.parametrize("delivery", MODES)
def test_a_decompression_bomb_is_dead_lettered_without_taking_the_actors_memory(
    broker, topic_names, delivery, tmp_path, report
):
    """Every valid id reaches the output (exactly once for a read_committed reader in
    exactly-once mode), each offset of the bomb batch is in the DLQ once with the error, and the
    loop process's peak RSS stays under its baseline + 2 x workers.max_decompressed_batch_bytes."""
    names = topic_names()
    # Three records a poll: the bomb's four offsets take two polls, the second meeting it again.
    workers = {"delivery": delivery, "poll_timeout_ms": 100, "max_batch_records": 3}
    settings = pipeline_settings(broker, names, workers=workers)
    limit = settings.workers.max_decompressed_batch_bytes
    ensure_topics(settings.kafka, {names["input"]: 1, names["output"]: 1, names["dlq"]: 1})
    before = [f"before-{i}" for i in range(VALID_BEFORE)]
    after = [f"after-{i}" for i in range(VALID_AFTER)]
    _produce_valid(settings, before)
    bomb_offsets = _produce_bomb(settings)
    _produce_valid(settings, after)
    assert bomb_offsets == list(range(VALID_BEFORE, VALID_BEFORE + BOMB_RECORDS))

    started = time.monotonic()
    result = _run_loop_process(settings, VALID_BEFORE + BOMB_RECORDS + VALID_AFTER, tmp_path)
    elapsed_s = time.monotonic() - started
    baseline_mib, peak_mib = result["baseline_kib"] / 1024, result["peak_kib"] / 1024
    cap_mib = baseline_mib + 2 * limit / 1024**2
    report(
        f"decompression bomb ({delivery})",
        baseline_rss_mib=round(baseline_mib),
        peak_rss_mib=round(peak_mib),
        cap_mib=round(cap_mib),
        loop_s=round(elapsed_s, 1),
    )

    committed = delivery == "exactly-once"
    labeled = Counter(
        json.loads(value)["id"]
        for *_, value, _ in read_topic(
            settings.kafka, names["output"], idle_timeout_s=3.0, read_committed=committed
        )
    )
    assert set(labeled) == set(before + after)
    if committed:
        assert set(labeled.values()) == {1}
    dead = list(read_topic(settings.kafka, names["dlq"], idle_timeout_s=3.0, read_committed=committed))
    headers = [dict(record[4]) for record in dead]
    assert sorted(int(h[DlqHeader.SOURCE_OFFSET.value]) for h in headers) == bomb_offsets
    for h in headers:
        assert h[DlqHeader.ERROR_CLASS.value] == b"Unreadable"
        assert h[DlqHeader.ERROR_STAGE.value] == b"read"
        message = h[DlqHeader.ERROR_MESSAGE.value]
        assert b"DecompressionBombError" in message
        assert f"workers.max_decompressed_batch_bytes={limit}".encode() in message
    stats = result["stats"]
    assert stats["unreadable"] == BOMB_RECORDS
    assert stats["dead_letters_by_class"] == {"Unreadable": BOMB_RECORDS}
    assert peak_mib <= cap_mib, f"peak RSS {peak_mib:.0f} MiB over the cap {cap_mib:.0f} MiB"
