"""``clstream bench --json``: the typed result flattens to the keys docs and scripts read."""

from __future__ import annotations

from pipelines.bench.plan import BenchPlan
from pipelines.bench.result import (
    Agreement,
    BenchResult,
    Ceiling,
    Column,
    GpuModelOnly,
    Latency,
    PipelineColumn,
    PipelineSettings,
    SweepPoint,
)

# Every key of the --json document, in the order it is written (gpu_model_only on CUDA only).
KEYS = [
    "device", "torch_threads", "tweets", "model_id", "precision", "pipeline_settings", "quick",
    "bare_tweets_per_s", "bare_padding_efficiency", "bare_cpu_percent", "bare_gpu_percent",
    "bare_real_tokens_per_s", "bare_device_busy_fraction",
    "naive_tweets_per_s", "naive_cpu_percent", "naive_gpu_percent", "naive_real_tokens_per_s",
    "naive_device_busy_fraction",
    "pipeline_tweets_per_s", "pipeline_stalls", "padding_efficiency", "pipeline_cpu_percent",
    "pipeline_gpu_percent", "pipeline_real_tokens_per_s", "pipeline_device_busy_fraction",
    "latency_offered_tweets_per_s", "latency_samples", "latency_p50_ms",
    "latency_p99_ms", "latency_ms", "sweep", "bf16_label_agreement", "bf16_agreement_tweets",
    "bf16_agreement_device", "pass_cost", "pipeline_vs_bare", "pipeline_vs_naive",
]  # fmt: skip


def _pipeline(rate: float, p50: float, delivery: str = "at-least-once") -> PipelineColumn:
    column = Column(rate, 60.0, None, 0.9, rate * 20, 0.5)
    return PipelineColumn(column, 0, Latency(rate / 2, [p50, p50 * 2], p50, p50 * 1.98), delivery)


def _result(gpu: GpuModelOnly | None = None, **extra) -> BenchResult:
    return BenchResult(
        device="cpu (2 cores)",
        torch_threads=1,
        tweets=300,
        model_id="tiny",
        precision="float32",
        pipeline_settings=PipelineSettings(1, 256, 64, 1024),
        quick=True,
        bare=Column(300.0, 50.0, None, 0.9),
        naive=Column(100.0, 40.0, None),
        pipeline=PipelineColumn(Column(200.0, 60.0, None, 0.8), 0, Latency(100.0, [5.0, 7.0], 6.0, 6.98)),
        sweep=[SweepPoint(256, 250.123456, 0.95)],
        agreement=Agreement(1.0, 200, "cpu (2 cores)"),
        pass_cost={"pass_overhead_ms": 1.0, "per_token_slot_ms": 0.01, "pass_cost_tokens": 100.0},
        gpu_model_only=gpu,
        **extra,
    )


def test_json_has_every_key_in_order_with_ratios_and_rounded_floats():
    document = _result().to_json()
    assert list(document) == KEYS
    assert document["pipeline_vs_bare"] == round(200 / 300, 4)
    assert document["pipeline_vs_naive"] == 2.0
    assert document["latency_samples"] == 2
    assert document["sweep"] == [
        {"max_batch_tokens": 256, "tweets_per_s": 250.1235, "padding_efficiency": 0.95}
    ]
    assert document["pipeline_settings"] == {
        "actors": 1,
        "max_batch_records": 256,
        "inference_batch_size": 64,
        "max_batch_tokens": 1024,
    }


def test_gpu_model_only_appears_only_when_measured():
    gpu = GpuModelOnly("bert-base", "H200", 900.0, 300.0, 0.33, 20000.0, 30.0, 0.9)
    document = _result(gpu).to_json()
    assert list(document) == [*KEYS[:-2], "gpu_model_only", *KEYS[-2:]]
    assert document["gpu_model_only"]["fraction_of_matmul_rate"] == 0.33


def test_plan_overrides_keep_the_sweep_within_the_tweets():
    plan = BenchPlan.sized(quick=True, tweets=100, latency_s=3)
    assert (plan.tweets, plan.sweep_tweets, plan.agreement_tweets, plan.latency_s) == (100, 100, 100, 3)
    assert plan.budgets == (256, 1024, 4096)
    assert BenchPlan.sized(quick=False).tweets == 6000


def test_exactly_once_and_the_zero_cost_ceiling_add_their_keys_and_ratios():
    ceiling = Ceiling("tiny", 10_000, Column(4000.0, 50.0, None, 0.9, 80_000.0, 0.6),
                      _pipeline(3600.0, 20.0), _pipeline(3000.0, 30.0, "exactly-once"))  # fmt: skip
    document = _result(exactly_once=_pipeline(190.0, 300.0, "exactly-once"), ceiling=ceiling).to_json()
    assert document["exactly_once_tweets_per_s"] == 190.0
    assert document["exactly_once_vs_at_least_once"] == round(190 / 200, 4)
    assert document["exactly_once_latency_p99_ms"] == round(300 * 1.98, 4)
    assert document["ceiling_vs_bare"] == 0.9
    assert document["ceiling_tweets_per_s"] == 3600.0
    assert document["ceiling_latency_p50_ms"] == 20.0
    assert document["ceiling_exactly_once_vs_at_least_once"] == round(3000 / 3600, 4)
    assert document["ceiling_device_busy_fraction"] == 0.5
    assert document["ceiling_bare_real_tokens_per_s"] == 80_000.0
    assert list(document)[-2:] == ["pipeline_vs_bare", "pipeline_vs_naive"]


def test_the_plot_of_every_column_is_a_png(tmp_path):
    from pipelines.bench.report import plot

    ceiling = Ceiling("tiny", 10_000, Column(4000.0, 50.0, None, 0.9, 80_000.0, 0.6),
                      _pipeline(3600.0, 20.0), _pipeline(3000.0, 30.0, "exactly-once"))  # fmt: skip
    result = _result(exactly_once=_pipeline(190.0, 300.0, "exactly-once"), ceiling=ceiling)
    path = tmp_path / "bench.png"
    plot(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
