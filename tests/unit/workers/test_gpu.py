"""GPU path checks: run only where torch sees a CUDA GPU (CI has none; they skip cleanly there)."""

import numpy as np
import pytest
import torch

from workers.model import BertClassifier

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_default_classifier_on_gpu_matches_cpu():
    texts = ["what a great flight", "my bag is lost again", "landing at 5pm", "ok"] * 8
    cpu = BertClassifier.load(device="cpu").classify(texts)
    gpu_classifier = BertClassifier.load(device="cuda", precision="fp32")
    assert gpu_classifier.encoder.device.type == "cuda"
    gpu = gpu_classifier.classify(texts)
    assert np.allclose(cpu, gpu, atol=1e-3)
    assert (cpu.argmax(axis=1) == gpu.argmax(axis=1)).all()


def test_bf16_fast_path_labels_agree_with_fp32_on_real_tweets():
    from pipelines.bench.plan import bench_texts

    texts = bench_texts(2000)
    fast = BertClassifier.load(device="cuda", max_tokens=16_384, batch_size=1024)
    assert fast.encoder.autocast_dtype == torch.bfloat16  # precision auto is bf16 on CUDA
    assert fast.encoder.model.config._attn_implementation == "sdpa"
    exact = BertClassifier.load(device="cuda", precision="fp32", max_tokens=16_384, batch_size=1024)
    agreement = (fast.classify(texts).argmax(axis=1) == exact.classify(texts).argmax(axis=1)).mean()
    assert agreement >= 0.995
    assert fast.stats.padding_efficiency is not None and fast.stats.padding_efficiency > 0.9
