"""``clstream bench``'s output for a reader: live progress bars, the summary table, the PNG."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.bench.result import BenchResult, Column, Latency


@contextmanager
def progress_bars(console: Console) -> Iterator[Progress]:
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console,
    ) as progress:  # fmt: skip
        yield progress


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _column_row(table: Table, name: str, column: Column) -> None:
    busy = column.device_busy_fraction
    table.add_row(
        name,
        _fmt(column.tweets_per_s),
        _fmt(column.real_tokens_per_s, 0),
        "-" if busy is None else f"{busy:.1%}",
        _fmt(column.cpu_percent, 0),
    )


def _latency_row(table: Table, name: str, latency: Latency) -> None:
    table.add_row(
        f"{name}: latency p50 / p99 at {_fmt(latency.offered_tweets_per_s, 0)} tweets/s",
        f"{_fmt(latency.p50_ms, 0)} / {_fmt(latency.p99_ms, 0)} ms",
    )


def print_table(console: Console, result: BenchResult) -> None:
    table = Table(title=f"clstream bench on {result.device}, {result.torch_threads} torch threads")
    for name in ("column", "tweets/s", "real tokens/s", "device busy", "CPU % (system)"):
        table.add_column(name, justify="left" if name == "column" else "right")
    _column_row(table, "bare model loop", result.bare)
    _column_row(table, "clstream pipeline, at-least-once", result.pipeline.throughput)
    if result.exactly_once is not None:
        _column_row(table, "clstream pipeline, exactly-once", result.exactly_once.throughput)
    _column_row(table, "naive consumer loop", result.naive)
    ceiling = result.ceiling
    if ceiling is not None:
        _column_row(table, "zero-cost model: bare loop", ceiling.bare)
        _column_row(table, "zero-cost model: pipeline, at-least-once", ceiling.pipeline.throughput)
        _column_row(table, "zero-cost model: pipeline, exactly-once", ceiling.exactly_once.throughput)
    console.print(table)
    pipeline = result.pipeline.throughput
    summary = Table(show_header=False)
    summary.add_row("pipeline_vs_bare", _fmt(result.pipeline_vs_bare, 3))
    summary.add_row("pipeline_vs_naive", _fmt(result.pipeline_vs_naive, 3))
    summary.add_row("padding_efficiency (pipeline)", _fmt(pipeline.padding_efficiency, 3))
    _latency_row(summary, "at-least-once", result.pipeline.latency)
    if result.exactly_once is not None:
        _latency_row(summary, "exactly-once", result.exactly_once.latency)
    if ceiling is not None:
        summary.add_row("ceiling_vs_bare (zero-cost model)", _fmt(ceiling.ceiling_vs_bare, 3))
        summary.add_row(
            "exactly-once ÷ at-least-once (zero-cost model)", _fmt(ceiling.exactly_once_vs_at_least_once, 3)
        )
        _latency_row(summary, "zero-cost model, at-least-once", ceiling.pipeline.latency)
        _latency_row(summary, "zero-cost model, exactly-once", ceiling.exactly_once.latency)
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
    """Four panels: throughput per column, the latency histograms, throughput per token budget,
    and the zero-cost-model (ceiling) columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    names, rates = (
        ["bare\nmodel loop", "pipeline\nALO"],
        [result.bare.tweets_per_s, result.pipeline.throughput.tweets_per_s],
    )
    if result.exactly_once is not None:
        names.append("pipeline\nEO")
        rates.append(result.exactly_once.throughput.tweets_per_s)
    names.append("naive\nloop")
    rates.append(result.naive.tweets_per_s)
    bars = axes[0].bar(names, rates, color=["#888888", "#1f77b4", "#2ca02c", "#d62728"][-len(names) :])
    axes[0].bar_label(bars, fmt="%.0f")
    axes[0].margins(y=0.1)  # room for the labels above the bars
    axes[0].set_ylabel("tweets/s")
    axes[0].set_title(f"throughput ({result.device})")
    runs = [("at-least-once", result.pipeline.latency, "#1f77b4")]
    if result.exactly_once is not None:
        runs.append(("exactly-once", result.exactly_once.latency, "#2ca02c"))
    for name, latency, color in runs:
        if latency.samples_ms:
            axes[1].hist(
                latency.samples_ms, bins=40, color=color, alpha=0.6,
                label=f"{name}: p50 {_fmt(latency.p50_ms, 0)}, p99 {_fmt(latency.p99_ms, 0)} ms",
            )  # fmt: skip
    axes[1].legend(fontsize=7)
    axes[1].set_xlabel("end-to-end latency (ms)")
    axes[1].set_title(f"latency at {result.pipeline.latency.offered_tweets_per_s:.0f} tweets/s")
    sweep = result.sweep
    axes[2].plot([p.max_batch_tokens for p in sweep], [p.tweets_per_s for p in sweep], marker="o")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("max_batch_tokens (bare loop, 256-tweet polls)")
    axes[2].set_ylabel("tweets/s")
    axes[2].set_title("throughput vs token budget")
    ceiling = result.ceiling
    if ceiling is not None:
        bars = axes[3].bar(
            ["bare", "pipeline\nALO", "pipeline\nEO"],
            [ceiling.bare.tweets_per_s, ceiling.pipeline.throughput.tweets_per_s,
             ceiling.exactly_once.throughput.tweets_per_s],
            color=["#888888", "#1f77b4", "#2ca02c"],
        )  # fmt: skip
        axes[3].bar_label(bars, fmt="%.0f")
        axes[3].margins(y=0.1)
        latency = ceiling.pipeline.latency
        axes[3].set_title(
            f"zero-cost model: ceiling {ceiling.ceiling_vs_bare:.2f} of bare; "
            f"p50/p99 {_fmt(latency.p50_ms, 0)}/{_fmt(latency.p99_ms, 0)} ms",
            fontsize=9,
        )
        axes[3].set_ylabel("tweets/s")
    else:
        axes[3].set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
