"""`clstream verify` against the real broker: it reads committed records only and exits 1 on loss."""

from __future__ import annotations

import json
import subprocess
import sys

import orjson
from kafka import KafkaProducer

from pipelines.kafka_tools.admin import ensure_topics
from pipelines.kafka_tools.verify import verify_topics
from schemas.dlq import DlqHeader
from schemas.settings import Settings


def _labeled(topic: str, partition: int, offset: int, record_id: str) -> bytes:
    return orjson.dumps(
        {"id": record_id, "source_topic": topic, "source_partition": partition, "source_offset": offset}
    )


def test_verify_ignores_aborted_output_and_exits_1_on_loss(broker, topic_names, tmp_path):
    names = topic_names()
    kafka = Settings.load(overrides={"kafka": {"bootstrap_servers": broker}}).kafka
    ensure_topics(kafka, {names["input"]: 1, names["output"]: 2, names["dlq"]: 1})
    plain = KafkaProducer(**kafka.client_config(), acks="all")
    for i in range(10):
        plain.send(names["input"], value=orjson.dumps({"id": f"v-{i}", "text": "x"}), partition=0)
    plain.send(names["input"], value=b"{broken", partition=0)  # offset 10, no id
    plain.flush()
    # Offsets 0-8 labeled (0 twice), 10 dead-lettered; 9 only in an aborted transaction.
    for i in [*range(9), 0]:
        plain.send(names["output"], value=_labeled(names["input"], 0, i, f"v-{i}"))
    dlq_headers = [
        (DlqHeader.SOURCE_TOPIC.value, names["input"].encode()),
        (DlqHeader.SOURCE_PARTITION.value, b"0"),
        (DlqHeader.SOURCE_OFFSET.value, b"10"),
    ]
    plain.send(names["dlq"], value=b"{broken", headers=dlq_headers)
    plain.flush()
    plain.close()
    txn = KafkaProducer(**kafka.client_config(), transactional_id=f"verify-{names['group_id']}")
    txn.init_transactions()
    txn.begin_transaction()
    txn.send(names["output"], value=_labeled(names["input"], 0, 9, "v-9")).get(timeout=30)
    txn.abort_transaction()
    txn.close()

    report = verify_topics(kafka, names["input"], names["output"], names["dlq"])
    assert (report.input_records, report.output_records, report.dlq_records) == (11, 10, 1)
    assert (report.lost, report.duplicates, report.delivered) == (1, 1, 10)
    assert report.lost_examples == ["v-9 (0:9)"]

    json_path = tmp_path / "report.json"
    cmd = [
        sys.executable, "-m", "pipelines.commands.cli", "verify", "--bootstrap-servers", broker,
        "--input-topic", names["input"], "--output-topic", names["output"], "--dlq-topic", names["dlq"],
        "--json", str(json_path),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED: lost=1" in result.stdout
    assert json.loads(json_path.read_text())["lost_examples"] == ["v-9 (0:9)"]
