"""The columns of ``clstream bench`` that need no running pipeline, each under its progress bar:
the bare model loop, the naive consumer, the token-budget sweep, bf16 agreement and, on CUDA,
model-only FLOP/s. ``phases`` holds how each number is taken; this module runs them."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.progress import Progress

from pipelines.bench.flops import bert_flops_per_token, matmul_flops_per_s
from pipelines.bench.phases import (
    measure_bare,
    measure_naive,
    throughput_from_outputs,
)
from pipelines.bench.result import Agreement, Column, GpuModelOnly, SweepPoint
from schemas.settings import Settings
from workers.model import BertClassifier, BertEncoder


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores)"


def bare_column(
    progress: Progress, classifier: BertClassifier, texts: list[str], label: str = "bare model loop"
) -> Column:
    task = progress.add_task(label, total=len(texts))
    # Best policy for texts in memory: bucket across large chunks, so groups are nearly uniform.
    rate, efficiency, meter, work = measure_bare(
        classifier, texts, chunk=2048, progress=lambda n: progress.update(task, completed=n)
    )
    tokens_per_s, busy = work.per_second(rate.seconds)
    return Column(rate.tweets_per_s, meter.cpu_percent, meter.gpu_percent, efficiency, tokens_per_s, busy)


def preload(settings: Settings, texts: Sequence[str], partitions: int) -> None:
    """Create the run's topics and produce every tweet to the input topic, before any column reads it."""
    from pipelines.kafka_tools.admin import ensure_topics
    from pipelines.kafka_tools.records_io import produce_values

    topics = settings.topics
    ensure_topics(settings.kafka, {topics.input: partitions, topics.output: partitions, topics.dlq: 1})
    pairs = (
        (f"tw-{i}".encode(), json.dumps({"id": f"tw-{i}", "text": text}).encode())
        for i, text in enumerate(texts)
    )
    produce_values(settings.kafka, topics.input, pairs)


def naive_column(
    progress: Progress, settings: Settings, classifier: BertClassifier, expected: int, run_id: str
) -> Column:
    from pipelines.kafka_tools.admin import ensure_topics

    output = f"bench-{run_id}.naive-labeled"
    ensure_topics(settings.kafka, {output: 4})
    task = progress.add_task("naive consumer loop", total=expected)
    outputs, meter, work = measure_naive(
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
    # The model's work over all tweets, against the time all of them take at the measured rate.
    tokens_per_s, busy = work.per_second(expected / rate.tweets_per_s)
    return Column(rate.tweets_per_s, meter.cpu_percent, meter.gpu_percent, None, tokens_per_s, busy)


def token_budget_sweep(
    progress: Progress, classifier: BertClassifier, texts: list[str], budgets: Sequence[int]
) -> list[SweepPoint]:
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

            rate, efficiency, _, _ = measure_bare(classifier, texts, chunk=256, progress=advance)
            points.append(SweepPoint(budget, rate.tweets_per_s, efficiency))
    finally:
        classifier.max_tokens = saved
    return points


def bf16_agreement(progress: Progress, classifier: BertClassifier, texts: list[str]) -> Agreement:
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
    return Agreement(float((fp32 == bf16).mean()), len(texts), device_name(classifier.device))


def gpu_model_only(progress: Progress, classifier: BertClassifier, texts: list[str]) -> GpuModelOnly:
    """CUDA only: a random-initialised bert-base-sized encoder (bf16, SDPA) over the tweets;
    useful FLOP/s count the work executed on real tokens only (the last layer [CLS] alone), as a
    fraction of the measured bf16 matmul rate."""
    from transformers import BertConfig, BertModel

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
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size,
        mean_len,
        cls_only=encoder.cls_only_last_layer,
    )
    progress.update(task, completed=3)
    return GpuModelOnly(
        label="random-initialised bert-base-sized BertConfig, bf16 autocast, SDPA, real tokens only",
        gpu=torch.cuda.get_device_name(device),
        matmul_bf16_tflops=peak / 1e12,
        useful_tflops=useful / seconds / 1e12,
        fraction_of_matmul_rate=useful / seconds / peak,
        tweets_per_s=len(batch) / seconds,
        mean_tokens_per_tweet=mean_len,
        padding_efficiency=encoded.real_tokens / encoded.padded_tokens,
    )


def zero_cost_model(directory: Path) -> tuple[Path, Path]:
    """The ceiling columns' model under ``directory``: ``save_tiny_bert`` (2 layers, 32-d, random
    weights, the default tokenizer) and a random head; returns (encoder, head) directories."""
    from workers.testing import save_random_head, save_tiny_bert

    encoder = save_tiny_bert(directory / "encoder")
    return encoder, save_random_head(directory / "head", encoder)
