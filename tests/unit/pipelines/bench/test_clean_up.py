"""``clstream bench`` owns its runs' topics, groups and delivery modes: it takes no flag for them,
and deletes the topics and groups at the end, or keeps them."""

from __future__ import annotations

import argparse
import io

import pytest
from rich.console import Console

from pipelines.bench import benchmark
from pipelines.commands.cli import build_parser
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


@pytest.mark.parametrize(
    "flag",
    [
        ["--input-topic", "tweets"],
        ["--output-topic", "out"],
        ["--dlq-topic", "dlq"],
        ["--group-id", "g"],
        ["--delivery", "exactly-once"],
        ["--metrics-port", "9000"],
    ],
)
def test_bench_takes_no_flag_that_would_override_every_run_alike(flag, capsys):
    # Each column sets its own topics, group, delivery mode and metrics port; one flag for all of
    # them would make the exactly-once columns at-least-once, or every column share one topic.
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["bench", "--quick", *flag])
    assert exit_.value.code == 2
    assert f"unrecognized arguments: {' '.join(flag)}" in capsys.readouterr().err
    assert build_parser().parse_args(["run", *flag]) is not None  # the pipeline itself takes it
