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
            "naive_tweets_per_s": self.naive.tweets_per_s,
            "naive_cpu_percent": self.naive.cpu_percent,
            "naive_gpu_percent": self.naive.gpu_percent,
            "pipeline_tweets_per_s": pipeline.tweets_per_s,
            "pipeline_stalls": self.pipeline.stalls,
            "padding_efficiency": pipeline.padding_efficiency,
            "pipeline_cpu_percent": pipeline.cpu_percent,
            "pipeline_gpu_percent": pipeline.gpu_percent,
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
