"""``clstream bench --quick`` end to end on the real broker and real Ray, with the tiny model."""

from __future__ import annotations

import json
import re

import pytest

from pipelines.commands.cli import main
from tests.integration.support import topics_and_groups, wait_until

REQUIRED_KEYS = {
    "bare_tweets_per_s",
    "pipeline_tweets_per_s",
    "naive_tweets_per_s",
    "pipeline_vs_bare",
    "pipeline_vs_naive",
    "padding_efficiency",
    "latency_p50_ms",
    "latency_p99_ms",
    "device",
    "pipeline_real_tokens_per_s",
    "pipeline_device_busy_fraction",
    "exactly_once_tweets_per_s",
    "exactly_once_vs_at_least_once",
    "exactly_once_latency_p99_ms",
    "ceiling_tweets_per_s",
    "ceiling_vs_bare",
    "ceiling_latency_p50_ms",
    "ceiling_latency_p99_ms",
    "ceiling_exactly_once_tweets_per_s",
    "ceiling_exactly_once_vs_at_least_once",
}


def test_quick_bench_writes_every_number_and_the_plot(broker, ray_cluster, tiny_model, tmp_path, capsys):
    encoder, head = tiny_model
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    before = topics_and_groups(broker, "bench-")
    code = main(
        [
            "bench", "--quick", "--tweets", "300", "--latency-seconds", "3", "--ceiling-tweets", "600",
            "--bootstrap-servers", broker, "--encoder", str(encoder), "--head", str(head),
            "--device", "cpu", "--json", str(out), "--plot", str(plot),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) >= REQUIRED_KEYS
    for column in ("bare", "pipeline", "naive"):
        assert result[f"{column}_tweets_per_s"] > 0
    assert result["pipeline_vs_bare"] == round(
        result["pipeline_tweets_per_s"] / result["bare_tweets_per_s"], 4
    )
    assert result["pipeline_vs_naive"] == round(
        result["pipeline_tweets_per_s"] / result["naive_tweets_per_s"], 4
    )
    assert 0 < result["padding_efficiency"] <= 1
    assert result["latency_samples"] > 0
    assert isinstance(result["pipeline_stalls"], int)  # actors the watchdog replaced mid-measurement
    assert 0 < result["latency_p50_ms"] <= result["latency_p99_ms"]
    assert result["device"].startswith("cpu")
    for prefix in ("bare_", "pipeline_", "naive_", "ceiling_", "exactly_once_", "ceiling_exactly_once_"):
        assert result[f"{prefix}real_tokens_per_s"] > 0
        assert 0 < result[f"{prefix}device_busy_fraction"] <= 1
    assert result["ceiling_vs_bare"] == pytest.approx(
        result["ceiling_tweets_per_s"] / result["ceiling_bare_tweets_per_s"], abs=1e-3
    )
    # Half load is half the bare loop's rate, for both models.
    assert result["latency_offered_tweets_per_s"] == pytest.approx(result["bare_tweets_per_s"] / 2, abs=1e-3)
    assert result["ceiling_latency_offered_tweets_per_s"] == pytest.approx(
        result["ceiling_bare_tweets_per_s"] / 2, abs=1e-3
    )
    assert result["ceiling_exactly_once_latency_samples"] > 0
    assert result["tweets"] == 300
    assert [p["max_batch_tokens"] for p in result["sweep"]] == [256, 1024, 4096]
    assert 0 <= result["bf16_label_agreement"] <= 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Its 13 topics and 5 consumer groups are deleted at the end (no --keep-topics); a group that
    # still had a member (an actor replaced mid-run, not yet timed out) is named, not deleted.
    printed = capsys.readouterr().out
    deleted = re.search(r"deleted this run's (\d+) topics and (\d+) consumer groups", printed)
    assert deleted is not None and int(deleted[1]) == 13
    assert int(deleted[2]) + printed.count("not deleted: group bench-") == 5
    wait_until(
        lambda: all(name in printed for name in topics_and_groups(broker, "bench-") - before),
        30,
        "the run's topics and groups to go",
    )


def test_the_stages_command_times_every_stage_against_the_broker(broker, capsys):
    from pipelines.bench import stages

    code = stages.main(
        [
            "--bootstrap-servers",
            broker,
            "--tweets",
            "600",
            "--rounds",
            "1",
            "--producer-batch-bytes",
            "16384",
            "262144",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stage"))
    table = {line.rsplit(maxsplit=2)[0]: line.split()[-2:] for line in lines[header + 1 :]}
    assert list(table) == [
        "consume (poll)",
        "decode",
        "repair",
        "tokenize",
        "model (calls of 256)",
        "output records",
        "deliver, producer batch 16,384 B",
        "deliver, producer batch 262,144 B",
        "commit offsets (at-least-once)",
        "deliver in transactions of 256",
        "deliver in transactions of 1,024",
    ]
    for cpu, wall in table.values():
        assert float(cpu) >= 0 and float(wall) > 0
    run = lines[0].split()[1].removesuffix(".in,")  # "topics stages-<run>.in, .out and .dlq, ..."
    # The run's topics and group are deleted (the broker finishes a deletion on its own time).
    wait_until(lambda: not topics_and_groups(broker, run), 30, "the run's topics and group to go")
