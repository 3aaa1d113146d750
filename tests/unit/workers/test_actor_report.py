"""The one typed actor report: built by the actor from its loop, light enough for anyone to import."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import structlog

from schemas.settings import Settings
from workers.actor import ClassifierActor
from workers.loop import ClassifierLoop, LoopStats
from workers.records import RawRecord
from workers.report import LoopCounters, Placement
from workers.testing import InMemorySink, InMemorySource, KeywordClassifier

ROOT = Path(__file__).resolve().parents[3]


def test_loop_counters_has_exactly_the_loop_stats_fields():
    # The report copies the loop's counters by name: a field added on one side only would make
    # every report fail (or be lost), so the two lists must stay the same.
    assert [f.name for f in dataclasses.fields(LoopCounters)] == [
        f.name for f in dataclasses.fields(LoopStats)
    ]


def test_an_actor_reports_its_loop_counters_and_its_placement():
    settings = Settings.load(overrides={"topics": {"input": "in", "output": "out", "dlq": "dlq"}})
    actor = ClassifierActor(settings, "classifier-0", slot=3, placement=lambda: Placement("node-a", ("0",)))
    before = actor.report()
    assert (before.name, before.state, before.counters, before.assignment) == (
        "classifier-0",
        "starting",
        None,
        None,
    )

    records = [RawRecord("in", 0, i, None, b'{"id": "%d", "text": "good"}' % i, []) for i in range(3)]
    actor._loop = ClassifierLoop(InMemorySource(records), InMemorySink(), KeywordClassifier(), settings)
    actor._loop.step()
    report = actor.report()
    assert report.counters is not None
    assert (report.counters.consumed, report.counters.classified, report.counters.batches) == (3, 3, 1)
    assert report.counters.latency_counts == tuple(actor._loop.stats.latency_counts)
    assert report.placement == Placement("node-a", ("0",))
    assert report.pid is not None and report.rss_bytes > 0


def test_the_pool_port_and_the_report_import_neither_ray_nor_torch_nor_kafka():
    code = (
        "import sys, pipelines.streaming.pool, workers.report; "
        "print(sorted(m for m in ('ray', 'torch', 'kafka') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def test_an_actor_without_its_secrets_in_the_environment_fails_at_once_naming_the_variable(monkeypatch):
    monkeypatch.delenv("CLSTREAM_KAFKA__SASL_PASSWORD", raising=False)
    kafka = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_username": "alice",
        "sasl_password": "canary-8d0e",
    }
    shipped, variables = Settings.load(overrides={"kafka": kafka}).without_secrets()
    actor = ClassifierActor(shipped, "classifier-0", secret_variables=variables)
    actor.start()
    actor._thread.join(timeout=10)
    report = actor.report()
    assert report.state == "failed" and report.counters is None  # before the model or Kafka
    assert report.error is not None
    assert report.error.startswith("MissingSecretError: CLSTREAM_KAFKA__SASL_PASSWORD is not set")
    assert "canary-8d0e" not in report.error


def test_the_actor_logs_where_it_runs_once_its_model_is_loaded():
    settings = Settings.load(overrides={"topics": {"input": "in", "output": "out", "dlq": "dlq"}})
    actor = ClassifierActor(settings, "classifier-0", placement=lambda: Placement("node-a", ("0",)))

    def build() -> ClassifierLoop:
        actor.device = "cuda:0"  # as _build sets it from the loaded model
        return ClassifierLoop(InMemorySource([]), InMemorySink(), KeywordClassifier(), settings)

    actor._build = build  # type: ignore[method-assign]
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        actor.start()
        deadline = time.monotonic() + 10
        while actor.state == "starting" and time.monotonic() < deadline:
            time.sleep(0.01)
        actor.drain(timeout_s=10)
    running = [line for line in logs if line["event"] == "actor running"]
    assert running == [
        {
            "event": "actor running",
            "log_level": "info",
            "actor": "classifier-0",
            "node": "node-a",
            "gpu_ids": ["0"],
            "device": "cuda:0",
        }
    ]
