"""What ``clstream bench`` measured, typed; ``BenchResult.to_json`` gives the ``--json`` file.

The JSON is flat and its keys are a contract (``docs/throughput.md`` and
``tests/integration/test_bench.py`` read them): ``bare_tweets_per_s``, ``pipeline_vs_bare``,
``latency_p99_ms``... Floats are rounded to 4 decimals there, not here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    """One throughput column: tweets/s, system CPU % (and GPU % on CUDA) while it ran."""

    tweets_per_s: float
    cpu_percent: float | None
    gpu_percent: float | None
    #: Real ÷ computed tokens; None where it is not measured (the naive loop).
    padding_efficiency: float | None = None
    #: Tokens of the texts (not padding) the model went through per second of the column's time.
    real_tokens_per_s: float | None = None
    #: Time the model spent from token ids to probabilities ÷ the column's wall time.
    device_busy_fraction: float | None = None


@dataclass(frozen=True)
class Latency:
    """End-to-end latency of the running pipeline at a steady offered load."""

    offered_tweets_per_s: float
    samples_ms: list[float]
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class PipelineColumn:
    throughput: Column
    #: Actors the stall watchdog replaced mid-measurement: their wait is inside the throughput.
    stalls: int
    latency: Latency
    #: ``workers.delivery`` of this run.
    delivery: str = "at-least-once"

    def json(self, prefix: str) -> dict[str, Any]:
        """Flat keys ``<prefix>tweets_per_s``, ``<prefix>latency_p99_ms``..."""
        column, latency = self.throughput, self.latency
        return {
            f"{prefix}tweets_per_s": column.tweets_per_s,
            f"{prefix}real_tokens_per_s": column.real_tokens_per_s,
            f"{prefix}device_busy_fraction": column.device_busy_fraction,
            f"{prefix}padding_efficiency": column.padding_efficiency,
            f"{prefix}cpu_percent": column.cpu_percent,
            f"{prefix}stalls": self.stalls,
            f"{prefix}latency_offered_tweets_per_s": latency.offered_tweets_per_s,
            f"{prefix}latency_samples": len(latency.samples_ms),
            f"{prefix}latency_p50_ms": latency.p50_ms,
            f"{prefix}latency_p99_ms": latency.p99_ms,
        }


@dataclass(frozen=True)
class Ceiling:
    """The zero-cost-model columns: the same data plane with a model that costs almost nothing
    (``workers.testing.save_tiny_bert``: 2 layers, 32-d, random weights, the default tokenizer,
    and a random head), so the rate is what the data plane itself can carry."""

    model: str
    tweets: int
    bare: Column
    pipeline: PipelineColumn
    exactly_once: PipelineColumn

    @property
    def ceiling_vs_bare(self) -> float:
        return self.pipeline.throughput.tweets_per_s / self.bare.tweets_per_s

    @property
    def exactly_once_vs_at_least_once(self) -> float:
        return self.exactly_once.throughput.tweets_per_s / self.pipeline.throughput.tweets_per_s


@dataclass(frozen=True)
class SweepPoint:
    """Bare throughput at one batch token budget."""

    max_batch_tokens: int
    tweets_per_s: float
    padding_efficiency: float | None


@dataclass(frozen=True)
class Agreement:
    """Share of tweets labeled the same under bf16 autocast as in fp32."""

    label_agreement: float
    tweets: int
    device: str


@dataclass(frozen=True)
class GpuModelOnly:
    """CUDA only: a random-initialised bert-base-sized encoder's useful FLOP/s."""

    label: str
    gpu: str
    matmul_bf16_tflops: float
    useful_tflops: float
    fraction_of_matmul_rate: float
    tweets_per_s: float
    mean_tokens_per_tweet: float
    padding_efficiency: float


@dataclass(frozen=True)
class PipelineSettings:
    """The settings that shape the pipeline column."""

    actors: int
    max_batch_records: int
    inference_batch_size: int
    max_batch_tokens: int


@dataclass(frozen=True)
class BenchResult:
    device: str
    torch_threads: int
    tweets: int
    model_id: str
    precision: str
    pipeline_settings: PipelineSettings
    quick: bool
    bare: Column
    naive: Column
    pipeline: PipelineColumn
    sweep: list[SweepPoint]
    agreement: Agreement
    #: ``phases.measure_pass_cost``: what one forward pass costs beyond its tokens.
    pass_cost: dict[str, float]
    gpu_model_only: GpuModelOnly | None = None
    #: The same pipeline with ``workers.delivery = exactly-once``.
    exactly_once: PipelineColumn | None = None
    #: The zero-cost-model columns (``--ceiling-tweets 0`` skips them).
    ceiling: Ceiling | None = None

    @property
    def pipeline_vs_bare(self) -> float:
        return self.pipeline.throughput.tweets_per_s / self.bare.tweets_per_s

    @property
    def pipeline_vs_naive(self) -> float:
        return self.pipeline.throughput.tweets_per_s / self.naive.tweets_per_s

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document: flat keys, floats rounded to 4 decimals."""
        pipeline, latency = self.pipeline.throughput, self.pipeline.latency
        document: dict[str, Any] = {
            "device": self.device,
            "torch_threads": self.torch_threads,
            "tweets": self.tweets,
            "model_id": self.model_id,
            "precision": self.precision,
            "pipeline_settings": asdict(self.pipeline_settings),
            "quick": self.quick,
            "bare_tweets_per_s": self.bare.tweets_per_s,
            "bare_padding_efficiency": self.bare.padding_efficiency,
            "bare_cpu_percent": self.bare.cpu_percent,
            "bare_gpu_percent": self.bare.gpu_percent,
            "bare_real_tokens_per_s": self.bare.real_tokens_per_s,
            "bare_device_busy_fraction": self.bare.device_busy_fraction,
            "naive_tweets_per_s": self.naive.tweets_per_s,
            "naive_cpu_percent": self.naive.cpu_percent,
            "naive_gpu_percent": self.naive.gpu_percent,
            "naive_real_tokens_per_s": self.naive.real_tokens_per_s,
            "naive_device_busy_fraction": self.naive.device_busy_fraction,
            "pipeline_tweets_per_s": pipeline.tweets_per_s,
            "pipeline_stalls": self.pipeline.stalls,
            "padding_efficiency": pipeline.padding_efficiency,
            "pipeline_cpu_percent": pipeline.cpu_percent,
            "pipeline_gpu_percent": pipeline.gpu_percent,
            "pipeline_real_tokens_per_s": pipeline.real_tokens_per_s,
            "pipeline_device_busy_fraction": pipeline.device_busy_fraction,
            "latency_offered_tweets_per_s": latency.offered_tweets_per_s,
            "latency_samples": len(latency.samples_ms),
            "latency_p50_ms": latency.p50_ms,
            "latency_p99_ms": latency.p99_ms,
            "latency_ms": latency.samples_ms,
            "sweep": [asdict(point) for point in self.sweep],
            "bf16_label_agreement": self.agreement.label_agreement,
            "bf16_agreement_tweets": self.agreement.tweets,
            "bf16_agreement_device": self.agreement.device,
            "pass_cost": self.pass_cost,
        }
        if self.exactly_once is not None:
            document |= self.exactly_once.json("exactly_once_")
            document["exactly_once_vs_at_least_once"] = (
                self.exactly_once.throughput.tweets_per_s / pipeline.tweets_per_s
            )
        if self.ceiling is not None:
            ceiling = self.ceiling
            document |= {
                "ceiling_model": ceiling.model,
                "ceiling_tweets": ceiling.tweets,
                "ceiling_bare_tweets_per_s": ceiling.bare.tweets_per_s,
                "ceiling_bare_real_tokens_per_s": ceiling.bare.real_tokens_per_s,
                "ceiling_bare_device_busy_fraction": ceiling.bare.device_busy_fraction,
                **ceiling.pipeline.json("ceiling_"),
                **ceiling.exactly_once.json("ceiling_exactly_once_"),
                "ceiling_vs_bare": ceiling.ceiling_vs_bare,
                "ceiling_exactly_once_vs_at_least_once": ceiling.exactly_once_vs_at_least_once,
            }
        if self.gpu_model_only is not None:
            document["gpu_model_only"] = asdict(self.gpu_model_only)
        document["pipeline_vs_bare"] = self.pipeline_vs_bare
        document["pipeline_vs_naive"] = self.pipeline_vs_naive
        return _rounded(document)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value
