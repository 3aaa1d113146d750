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
    gpu_classifier = BertClassifier.load(device="cuda")
    assert gpu_classifier.encoder.device.type == "cuda"
    gpu = gpu_classifier.classify(texts)
    assert np.allclose(cpu, gpu, atol=1e-3)
    assert (cpu.argmax(axis=1) == gpu.argmax(axis=1)).all()
