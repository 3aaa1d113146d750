"""``clstream bench`` deletes its run's topics and consumer groups at the end, or keeps them."""

from __future__ import annotations

import argparse
import io

from rich.console import Console

from pipelines.bench import benchmark
from pipelines.kafka_tools.admin import Removed
from schemas.settings import KafkaSettings

KAFKA = KafkaSettings(bootstrap_servers=("127.0.0.1:1",))


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200), out


def test_the_run_is_removed_and_what_could_not_be_is_named(monkeypatch):
    calls = []

    def remove_run(kafka, name):
        calls.append((kafka, name))
        return Removed(12, 4, ["group bench-1234abcd: NonEmptyGroupError"])

    monkeypatch.setattr(benchmark, "remove_run", remove_run)
    console, out = _console()
    benchmark.clean_up(console, argparse.Namespace(keep_topics=False), KAFKA, "bench-1234abcd")
    assert calls == [(KAFKA, "bench-1234abcd")]
    assert out.getvalue().splitlines() == [
        "deleted this run's 12 topics and 4 consumer groups (bench-1234abcd*)",
        "not deleted: group bench-1234abcd: NonEmptyGroupError",
    ]


def test_keep_topics_leaves_the_broker_alone(monkeypatch):
    def remove_run(kafka, name):
        raise AssertionError("--keep-topics must not delete anything")

    monkeypatch.setattr(benchmark, "remove_run", remove_run)
    console, out = _console()
    benchmark.clean_up(console, argparse.Namespace(keep_topics=True), KAFKA, "bench-1234abcd")
    assert out.getvalue().strip() == "kept this run's topics and consumer groups: bench-1234abcd*"
