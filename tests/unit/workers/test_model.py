from pathlib import Path

import numpy as np
import pytest
import torch

from schemas.errors import ModelLoadError, UnsafeCheckpointError
from workers.head import load_head
from workers.model import BertClassifier, BertEncoder


def test_pickle_only_encoder_directory_is_refused(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeCheckpointError, match="safetensors only"):
        BertEncoder(tmp_path)


def test_pickle_head_is_refused(tmp_path: Path):
    (tmp_path / "head.pt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="pickle files are refused"):
        load_head(tmp_path)


def test_classifier_gives_probabilities_in_input_order(tiny_model):
    encoder_dir, head_dir = tiny_model
    classifier = BertClassifier.load(encoder_dir, head_dir, device="cpu", batch_size=2)
    texts = ["short", "a much longer tweet with many more words in it", "mid length text", "x"]
    probs = classifier.classify(texts)
    assert probs.shape == (4, 3) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # Length-sorted batching must not reorder results.
    one_by_one = np.concatenate([classifier.classify([t]) for t in texts])
    assert np.allclose(probs, one_by_one, atol=1e-5)
    assert classifier.padded_tokens >= classifier.real_tokens > 0


def test_cls_vector_is_the_final_hidden_state_at_position_zero(tiny_model):
    encoder_dir, _ = tiny_model
    encoder = BertEncoder(encoder_dir, "cls", device="cpu")
    batch = encoder.tokenizer(["hello world"], return_tensors="pt")
    with torch.inference_mode():
        expected = encoder.model(**batch).last_hidden_state[:, 0]
    assert torch.allclose(encoder.encode(["hello world"]).vectors, expected, atol=1e-6)


def test_head_trained_for_another_pooling_is_refused(tiny_model):
    encoder_dir, head_dir = tiny_model
    with pytest.raises(ModelLoadError, match="trained for 'cls' pooling, not 'mean'"):
        BertClassifier.load(encoder_dir, head_dir, pooling="mean", device="cpu")


def test_token_ids_through_the_fast_backend_equal_the_wrappers():
    from transformers import AutoTokenizer

    from pipelines.bench.plan import bench_texts
    from workers.forward import token_ids
    from workers.model import default_encoder_path

    tokenizer = AutoTokenizer.from_pretrained(str(default_encoder_path()), local_files_only=True)
    texts = [*bench_texts(2000), "", " ", "x" * 5000, "é" * 3000, "\u200b", "😀" * 200]
    for max_length in (128, 16):
        wrapper = tokenizer(
            texts, truncation=True, max_length=max_length, padding=False, return_attention_mask=False
        )["input_ids"]
        assert token_ids(tokenizer, texts, max_length) == wrapper


def test_the_traced_encoder_gives_the_eager_probabilities(tiny_model):
    encoder_dir, head_dir = tiny_model
    texts = ["short", "a much longer tweet with many more words in it", "mid length text", "x", "🙂 ok"]
    traced = BertClassifier.load(encoder_dir, head_dir, device="cpu", batch_size=2)
    eager = BertClassifier.load(encoder_dir, head_dir, device="cpu", batch_size=2, trace=False)
    assert traced.encoder.traced is not None and eager.encoder.traced is None
    assert np.allclose(traced.classify(texts), eager.classify(texts), atol=1e-6)
    # Under autocast the eager module runs, whatever was traced.
    traced.encoder.autocast_dtype = torch.bfloat16
    assert np.allclose(traced.classify(texts), eager.classify(texts), atol=0.05)


def test_a_trace_that_differs_from_the_eager_module_is_not_used(tiny_model):
    from structlog.testing import capture_logs

    from workers.model import PooledEncoder, traced_pooling

    encoder = BertEncoder(tiny_model[0], "cls", device="cpu", trace=False)

    def depends_on_the_data(hidden, mask, pooler_output=None):
        # A Python branch on the inputs' values: a trace records only the branch it saw.
        return hidden[-1][:, 0] * (2.0 if int(mask.sum()) % 2 else 1.0)

    module = PooledEncoder(encoder.model, depends_on_the_data, all_layers=False)
    with capture_logs() as logs:
        assert traced_pooling(module, torch.device("cpu"), "tiny") is None
    (warning,) = [entry for entry in logs if entry["event"] == "encoder runs eagerly: tracing failed"]
    assert "the trace differs from the eager module" in warning["error"]


def test_loading_a_classifier_prints_no_progress_bar_or_loss_notice_and_leaves_transformers_as_it_was(
    tiny_model, capfd
):
    from transformers.utils import logging as hf_logging

    encoder_dir, head_dir = tiny_model
    bars_before, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.enable_progress_bar()  # as in a fresh process (another test may have turned them off)
    try:
        capfd.readouterr()

        BertClassifier.load(encoder_dir, head_dir, device="cpu", trace=True)

        out, err = capfd.readouterr()
        assert "Loading weights" not in out + err
        assert "loss_type" not in out + err
        assert hf_logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == verbosity
    finally:
        if not bars_before:
            hf_logging.disable_progress_bar()


def test_a_checkpoint_missing_weights_is_still_warned_about(tiny_model, tmp_path: Path, capfd, caplog):
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    from workers.model import load_hf_model

    encoder_dir, _ = tiny_model
    partial = tmp_path / "partial"
    shutil.copytree(encoder_dir, partial)
    weights = load_file(partial / "model.safetensors")
    dropped = next(name for name in weights if "encoder.layer.0.output.dense.weight" in name)
    save_file({k: v for k, v in weights.items() if k != dropped}, partial / "model.safetensors")
    capfd.readouterr()

    load_hf_model(AutoModel, partial)

    out, err = capfd.readouterr()
    assert "layer.0.output.dense.weight" in out + err + caplog.text
