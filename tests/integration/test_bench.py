"""``clstream bench --quick`` end to end on the real broker and real Ray, with the tiny model."""

from __future__ import annotations

import json

from pipelines.commands.cli import main

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
}


def test_quick_bench_writes_every_number_and_the_plot(broker, ray_cluster, tiny_model, tmp_path):
    encoder, head = tiny_model
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(
        [
            "bench", "--quick", "--tweets", "300", "--latency-seconds", "3",
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
    assert result["tweets"] == 300
    assert [p["max_batch_tokens"] for p in result["sweep"]] == [256, 1024, 4096]
    assert 0 <= result["bf16_label_agreement"] <= 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
