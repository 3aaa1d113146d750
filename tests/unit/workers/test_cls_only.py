"""The last layer computed for [CLS] only (``workers.cls_only``): same vectors, or the stock forward."""

from pathlib import Path

import torch
from structlog.testing import capture_logs

from workers.model import BertClassifier, BertEncoder


def _stock_cls(encoder: BertEncoder, texts: list[str]) -> torch.Tensor:
    batch = encoder.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        return encoder.model(**batch).last_hidden_state[:, 0]


def test_the_default_classifier_computes_cls_only_and_gets_the_stock_vectors():
    from pipelines.bench.plan import bench_texts

    classifier = BertClassifier.load(device="cpu")  # the shipped encoder with its LoRA adapter merged
    encoder = classifier.encoder
    texts = [*bench_texts(300), "x", "a " * 600]  # lengths from 3 to 128 (truncated), padded passes
    assert encoder.cls_only_last_layer and encoder.traced is not None
    assert max(map(len, encoder.token_ids(texts))) == 128
    vectors = encoder.encode(texts, batch_size=64, max_tokens=1024).vectors
    assert torch.allclose(vectors, _stock_cls(encoder, texts), atol=1e-5)


def test_pooler_pooling_applies_the_pooler_to_the_cls_only_row(tiny_model):
    encoder = BertEncoder(tiny_model[0], "pooler", device="cpu")
    texts = ["short", "a much longer tweet with many more words in it", "x"]
    batch = encoder.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = encoder.model(**batch).pooler_output
    assert encoder.cls_only_last_layer
    assert torch.allclose(encoder.encode(texts).vectors, expected, atol=1e-6)


def test_mean_pooling_reads_every_token_and_runs_the_stock_forward(tiny_model):
    assert not BertEncoder(tiny_model[0], "mean", device="cpu").cls_only_last_layer


def test_an_encoder_of_another_layout_runs_its_stock_forward(tmp_path: Path):
    from transformers import DistilBertConfig, DistilBertModel

    from workers.testing import save_tiny_bert

    torch.manual_seed(0)
    directory = save_tiny_bert(tmp_path / "bert")  # for the tokenizer files
    for weights in directory.glob("*.safetensors"):
        weights.unlink()
    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    DistilBertModel(config).save_pretrained(directory, safe_serialization=True)

    encoder = BertEncoder(directory, "cls", device="cpu")

    assert not encoder.cls_only_last_layer
    texts = ["short", "a much longer tweet with many more words in it"]
    assert torch.allclose(encoder.encode(texts).vectors, _stock_cls(encoder, texts), atol=1e-6)


def test_a_cls_only_path_that_differs_from_the_stock_forward_is_not_used(tiny_model, monkeypatch):
    import workers.model
    from workers.cls_only import cls_only_forward

    def off_by_one(model):
        module = cls_only_forward(model)
        assert module is not None
        original = module.forward
        module.forward = lambda ids, mask: original(ids, mask) + 1.0  # type: ignore[method-assign]
        return module

    monkeypatch.setattr(workers.model, "cls_only_forward", off_by_one)
    with capture_logs() as logs:
        encoder = BertEncoder(tiny_model[0], "cls", device="cpu")

    assert not encoder.cls_only_last_layer
    (warning,) = [entry for entry in logs if "failed its check" in entry["event"]]
    assert "differs from the stock forward" in warning["error"]
    texts = ["short", "a much longer tweet"]
    assert torch.allclose(encoder.encode(texts).vectors, _stock_cls(encoder, texts), atol=1e-6)


def test_under_bf16_autocast_the_cls_only_path_stays_close_to_fp32(tiny_model):
    encoder = BertEncoder(tiny_model[0], "cls", device="cpu")
    texts = ["short", "a much longer tweet with many more words in it", "x"]
    fp32 = encoder.encode(texts).vectors
    encoder.autocast_dtype = torch.bfloat16  # the eager module runs, as on CUDA
    assert torch.allclose(encoder.encode(texts).vectors, fp32, atol=0.05)
