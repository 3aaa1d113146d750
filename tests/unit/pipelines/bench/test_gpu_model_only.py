"""The GPU script end to end on the CPU: ``prepare`` writes a carry that fits a device run, and
``measure`` reads it with nothing of clstream but ``workers.forward``, ``workers.batching`` and
``workers.cls_only``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipelines.bench.gpu_model_only import main

ROOT = Path(__file__).resolve().parents[4]


def test_prepare_then_measure_writes_every_figure(tmp_path):
    carry, out = tmp_path / "carry", tmp_path / "out"
    assert main(["prepare", "--carry", str(carry), "--tweets", "48"]) == 0
    size = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    assert size < 60 * 1024**2, f"the carry is {size / 1e6:.0f} MB; a device run carries at most 64 MiB"
    assert not list(carry.rglob("*.bin")), "safetensors only"
    assert (
        main(
            [
                "measure",
                "--carry",
                str(carry),
                "--out",
                str(out),
                "--seconds",
                "0",
                "--agreement-tweets",
                "8",
                "--sweep-seconds",
                "0",
                "--shared",
                "1",
            ]  # fmt: skip
        )
        == 0
    )
    result = json.loads((out / "gpu-model-only.json").read_text())
    assert result["cuda"] is False and result["matmul_bf16_tflops"] is None
    assert result["tweets"] == 48 and result["tokenizer_tweets_per_s_one_core"] > 0
    runs = {(run["model"].split()[0], run["call_size"]) for run in result["runs"]}
    assert runs == {("default", 256), ("default", 4096), ("bert-base-sized", 256), ("bert-base-sized", 4096)}
    for run in result["runs"]:
        assert run["tweets_per_s"] > 0 and 0 < run["padding_efficiency"] <= 1
        assert run["feeder_cores_per_device"] > 0
    assert "RANDOM weights" in result["runs"][-1]["model"]
    for fit in result["pass_fit"].values():
        assert fit["a_ms"] is not None and len(fit["points"]) == 2
    assert [run["pass_cost"] for run in result["pass_cost_sweep"]] == [0, 128, 512, 2048, 16384]
    assert all(run["passes_per_call"] >= 1 for run in result["pass_cost_sweep"])
    assert {run["last_layer"] for run in result["runs"]} == {"cls-only"}
    compared = [(run["call_size"], run["last_layer"]) for run in result["last_layer"]]
    assert compared == [(256, "stock"), (256, "cls-only"), (4096, "stock"), (4096, "cls-only")]
    assert result["cls_only_vs_stock"]["label_agreement"] == 1.0  # fp32 on the CPU
    assert result["cls_only_vs_stock"]["largest_difference"] < 1e-4
    settings = [(run["batch_size"], run["max_tokens"]) for run in result["settings_sweep"]]
    assert settings == [(64, 1024), (256, 4096), (256, 16384), (256, 32768)]
    [shared] = result["shared_device"]
    assert shared["processes"] == 1 and shared["tweets"] == 48 and shared["tweets_per_s"] > 0
    assert not list(out.glob("shared-ids.json")), "the scratch file is removed"


def test_measure_imports_nothing_a_bare_gpu_machine_lacks():
    # The device has torch and transformers, not pydantic, kafka, ray or structlog.
    code = (
        "import sys, pipelines.bench.gpu_model_only\n"
        "bad = sorted(m for m in ('pydantic', 'kafka', 'ray', 'structlog', 'schemas') if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_the_cls_only_last_layer_is_counted_as_the_work_it_executes():
    from pipelines.bench.flops import bert_flops_per_token

    shape = (6, 384, 1536)
    # A one-token text is all [CLS]: nothing is skipped.
    assert bert_flops_per_token(*shape, 1.0, cls_only=True) == bert_flops_per_token(*shape, 1.0)
    # At a tweet's length the last layer costs each token only its key and value projections.
    full, cls_only = bert_flops_per_token(*shape, 30.0), bert_flops_per_token(*shape, 30.0, cls_only=True)
    assert 0.84 < cls_only / full < 0.87
