"""``clstream bench``'s output for a reader: live progress bars, the summary table, the PNG."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.bench.result import BenchResult


@contextmanager
def progress_bars(console: Console) -> Iterator[Progress]:
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console,
    ) as progress:  # fmt: skip
        yield progress


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(console: Console, result: BenchResult) -> None:
    bare, naive, pipeline = result.bare, result.naive, result.pipeline.throughput
    latency = result.pipeline.latency
    table = Table(title=f"clstream bench on {result.device}, {result.torch_threads} torch threads")
    table.add_column("column")
    table.add_column("tweets/s", justify="right")
    table.add_column("CPU % (system)", justify="right")
    table.add_row("bare model loop", _fmt(bare.tweets_per_s), _fmt(bare.cpu_percent, 0))
    table.add_row("clstream pipeline", _fmt(pipeline.tweets_per_s), _fmt(pipeline.cpu_percent, 0))
    table.add_row("naive consumer loop", _fmt(naive.tweets_per_s), _fmt(naive.cpu_percent, 0))
    console.print(table)
    summary = Table(show_header=False)
    summary.add_row("pipeline_vs_bare", _fmt(result.pipeline_vs_bare, 3))
    summary.add_row("pipeline_vs_naive", _fmt(result.pipeline_vs_naive, 3))
    summary.add_row("padding_efficiency (pipeline)", _fmt(pipeline.padding_efficiency, 3))
    summary.add_row(
        f"latency p50 / p99 at {_fmt(latency.offered_tweets_per_s, 0)} tweets/s",
        f"{_fmt(latency.p50_ms, 0)} / {_fmt(latency.p99_ms, 0)} ms",
    )
    agreement = result.agreement
    summary.add_row(f"bf16 vs fp32 label agreement ({agreement.device})", _fmt(agreement.label_agreement, 4))
    for point in result.sweep:
        summary.add_row(
            f"bare at max_batch_tokens={point.max_batch_tokens}",
            f"{_fmt(point.tweets_per_s)} tweets/s, padding {_fmt(point.padding_efficiency, 3)}",
        )
    cost = result.pass_cost
    if cost:
        summary.add_row(
            "one forward pass",
            f"{cost['pass_overhead_ms']:.2f} ms + {cost['per_token_slot_ms']:.3f} ms per token slot "
            f"(= {cost['pass_cost_tokens']:.0f} slots)",
        )
    gpu = result.gpu_model_only
    if gpu:
        summary.add_row(
            f"GPU model-only ({gpu.label})",
            f"{gpu.useful_tflops:.1f} TFLOP/s = {gpu.fraction_of_matmul_rate:.2f} of "
            f"{gpu.matmul_bf16_tflops:.0f} TFLOP/s bf16 matmul on {gpu.gpu}",
        )
    console.print(summary)
    if result.pipeline.stalls:
        console.print(
            f"[bold red]warning:[/] the stall watchdog replaced {result.pipeline.stalls} actor(s) during the "
            "pipeline phase; its throughput includes that wait and is not a fair figure"
        )


def plot(result: BenchResult, path: Path) -> None:
    """Three panels: throughput per column, the latency histogram, throughput per token budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = result.pipeline.latency
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = ["bare model", "clstream pipeline", "naive loop"]
    rates = [result.bare.tweets_per_s, result.pipeline.throughput.tweets_per_s, result.naive.tweets_per_s]
    bars = axes[0].bar(names, rates, color=["#888888", "#1f77b4", "#d62728"])
    axes[0].bar_label(bars, fmt="%.0f")
    axes[0].set_ylabel("tweets/s")
    axes[0].set_title(f"throughput ({result.device})")
    if latency.samples_ms:
        axes[1].hist(latency.samples_ms, bins=40, color="#1f77b4")
        for q, style in ((latency.p50_ms, "--"), (latency.p99_ms, ":")):
            axes[1].axvline(q, color="black", linestyle=style)
    axes[1].set_xlabel("end-to-end latency (ms)")
    axes[1].set_title(
        f"latency at {latency.offered_tweets_per_s:.0f} tweets/s: "
        f"p50 {_fmt(latency.p50_ms, 0)}, p99 {_fmt(latency.p99_ms, 0)} ms"
    )
    sweep = result.sweep
    axes[2].plot([p.max_batch_tokens for p in sweep], [p.tweets_per_s for p in sweep], marker="o")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("max_batch_tokens (bare loop, 256-tweet polls)")
    axes[2].set_ylabel("tweets/s")
    axes[2].set_title("throughput vs token budget")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
