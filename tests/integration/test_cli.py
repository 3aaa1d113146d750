"""The command line as a user runs it: `clstream run` fed by an independent client (kcat)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import orjson
import pytest

from pipelines.kafka_tools.admin import admin_client
from pipelines.kafka_tools.broker import LocalBroker, run_broker
from schemas.dlq import DlqHeader
from schemas.settings import Settings
from tests.conftest import TEST_BROKER_PORT
from tests.integration.support import pipeline_settings, read_all, running_pipeline, topic_size, wait_until

MALFORMED = [
    b'{"id": "m1", "text": "trunc',
    b"not json at all",
    b'{"id": "m3"}',
    b'{"id": "m4", "text": ""}',
    b"[]",
]


def _kcat() -> str:
    kcat = shutil.which("kcat")
    if kcat is None:  # `make test` installs it; running pytest by hand without it is a set-up error
        pytest.fail("kcat is not installed (Debian package kcat); `make test` installs it")
    return kcat


def test_broker_start_is_idempotent_and_status_reports_it(broker):
    local = LocalBroker(TEST_BROKER_PORT)
    assert local.is_running()
    assert local.start() == broker
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.commands.cli", "broker", "status", "--port", str(TEST_BROKER_PORT)],
        capture_output=True,
        text=True,
        check=True,
    )
    status = json.loads(out.stdout)
    assert status["running"] is True and status["bootstrap"] == broker and status["pid"] == local.pid()


def test_a_run_stops_the_broker_it_started_and_leaves_a_running_one_alone(broker):
    port = TEST_BROKER_PORT + 7  # apart from the session's broker and the three-node cluster
    own = LocalBroker(port)
    assert not own.is_running()
    with run_broker(None, port) as bootstrap:
        assert bootstrap == own.bootstrap and own.is_running()
    assert not own.is_running(), "the broker this run started is stopped"
    with run_broker(None, TEST_BROKER_PORT) as bootstrap:
        assert bootstrap == broker
    assert LocalBroker(TEST_BROKER_PORT).is_running(), "a broker that was already running keeps running"
    with run_broker("elsewhere:9092", port) as bootstrap:
        assert bootstrap == "elsewhere:9092" and not own.is_running()


def test_clstream_run_labels_what_kcat_produces_and_exits_0_on_sigterm(broker, topic_names, tmp_path):
    names = topic_names()
    kafka = Settings.load(overrides={"kafka": {"bootstrap_servers": broker}}).kafka
    cmd = [
        sys.executable, "-m", "pipelines.commands.cli", "run",
        "--bootstrap-servers", broker,
        "--input-topic", names["input"], "--output-topic", names["output"], "--dlq-topic", names["dlq"],
        "--group-id", names["group_id"], "--workers", "2", "--partitions", "4",
    ]  # fmt: skip
    env = {
        **os.environ,
        "CLSTREAM_WORKERS__SESSION_TIMEOUT_MS": "6000",
        "CLSTREAM_LOG__FORMAT": "json",
        "CLSTREAM_METRICS__PORT": "0",  # a free port: never collide with a real driver
    }
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        # `run` creates its topics; wait for them instead of racing it.
        wait_until(
            lambda: _topics_exist(kafka, [names["input"], names["output"], names["dlq"]]), 120, "topics"
        )
        lines = [
            json.dumps({"id": f"k-{i}", "text": f"I really {'love' if i % 2 else 'hate'} this #{i}"})
            for i in range(1000)
        ]
        payload = ("\n".join(lines) + "\n").encode() + b"\n".join(MALFORMED) + b"\n"
        subprocess.run(
            [_kcat(), "-P", "-b", broker, "-t", names["input"], "-z", "none"], input=payload, check=True
        )
        assert topic_size(kafka, names["input"]) == 1000 + len(MALFORMED)

        wait_until(lambda: topic_size(kafka, names["output"]) >= 1000, 300, "1,000 labeled records")
        wait_until(
            lambda: topic_size(kafka, names["dlq"]) >= len(MALFORMED), 60, "the malformed records on the DLQ"
        )
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log_text = log_path.read_text(errors="replace")
    assert code == 0, log_text[-3000:]
    assert took < 30
    assert "stopped cleanly" in log_text

    out = read_all(kafka, names["output"])
    ids = Counter(orjson.loads(value)["id"] for _, _, _, value, _ in out)
    assert set(ids) == {f"k-{i}" for i in range(1000)}
    dead = read_all(kafka, names["dlq"])
    assert sorted(value for _, _, _, value, _ in dead) == sorted(MALFORMED)
    assert all(dict(h)[DlqHeader.ERROR_CLASS.value] for *_, h in dead)
    # Logs carry counts and reasons, never the records themselves.
    assert "I really love this" not in log_text and "trunc" not in log_text


def _topics_exist(kafka, topics: list[str]) -> bool:
    admin = admin_client(kafka)
    try:
        return set(topics) <= set(admin.list_topics())
    finally:
        admin.close()


def test_status_says_on_which_node_and_device_each_actor_runs(broker, ray_cluster, topic_names, tiny_model):
    import ray

    encoder, head = tiny_model
    settings = pipeline_settings(broker, topic_names(), model={"encoder": encoder, "head": head})
    with running_pipeline(settings, partitions=2) as driver:
        stop = threading.Event()
        timer = threading.Timer(120, stop.set)
        timer.start()
        try:
            view = driver.run(
                stop, until=lambda v: len(v.actors) == 2 and all(a.state == "running" for a in v.actors)
            )
        finally:
            timer.cancel()
        assert not stop.is_set(), f"the actors did not run within 120 s: {view.to_log_fields()}"
        url = f"http://127.0.0.1:{driver.metrics_port}/metrics"
        status = subprocess.run(
            [sys.executable, "-m", "pipelines.commands.cli", "status", "--url", url],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
            timeout=120,
        )
    assert status.returncode == 0, status.stderr
    # The session's Ray is one node without GPUs: no GPU part, and torch's CPU device.
    node = ray.get_runtime_context().get_node_id()
    lines = {line.strip() for line in status.stdout.splitlines()}
    for actor in view.actors:
        assert f"{actor.name} · running · node {node[:8]}… · device cpu" in lines, status.stdout
