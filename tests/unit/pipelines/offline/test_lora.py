"""LoRA: training adapters + a [CLS] head, saving them as safetensors, merging them at load time."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pipelines.commands import finetune as finetune_command
from pipelines.offline import finetune
from pipelines.offline.finetune import FinetuneConfig, epoch_batches
from pipelines.offline.lora import LoraClsModel, LoraSpec
from pipelines.offline.resume import CHECKPOINT_DIR, STATE_FILE
from schemas.errors import ModelLoadError, UnsafeCheckpointError
from schemas.records import LABELS
from workers.adapter import ADAPTER_FILE, ADAPTER_FORMAT, load_adapter
from workers.checkpoints import load_classifier
from workers.head import HeadMetadata
from workers.model import BertClassifier
from workers.testing import save_tiny_bert

from .test_finetune import synthetic

# LoRA on a tiny random BERT needs a large step to learn the words in 20 steps.
CONFIG = FinetuneConfig(epochs=4, lr=3e-2, batch_size=16, max_length=16, seed=0, save_every=0)
TEXTS = ["good great lovely happy", "bad awful terrible sad", "the table is on"]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("lora") / "encoder")


SPEC = LoraSpec(rank=4, alpha=8)


def _model(encoder: Path, spec: LoraSpec = SPEC) -> LoraClsModel:
    torch.manual_seed(0)
    metadata = HeadMetadata(LABELS, "cls", 32, "tiny", "")
    return LoraClsModel(encoder, spec, metadata)


@pytest.fixture(scope="module")
def trained_adapter(
    tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LoraClsModel, Path]:
    """A model whose LoRA updates are non-zero (B starts at zero), saved as a head directory."""
    model = _model(tiny_encoder)
    with torch.no_grad():
        for name, parameter in model.encoder.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    directory = tmp_path_factory.mktemp("lora") / "head"
    model.save_pretrained(directory)
    return model.eval(), directory


def test_only_lora_matrices_and_the_head_train(tiny_encoder: Path):
    model = _model(tiny_encoder)
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable[-2:] == ["head.linear.bias", "head.linear.weight"]
    # 2 layers x 6 linear layers (q, k, v, attention output, intermediate, output) x (A, B)
    assert len(trainable) == 2 + 2 * 6 * 2
    assert all("lora_A" in name or "lora_B" in name for name in trainable[:-2])


def test_lora_training_on_a_tiny_synthetic_set_lowers_the_loss_and_raises_accuracy(
    tiny_encoder: Path, tmp_path: Path
):
    model = _model(tiny_encoder)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_encoder), local_files_only=True)
    state = finetune.finetune(
        model,
        tokenizer,
        synthetic(22),
        synthetic(4, offset=100),
        tmp_path,
        CONFIG,
        run_info={},
        progress=False,
    )
    losses = [loss for _, loss in state.history["step_loss"]]
    assert len(losses) == 4 * 5
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5
    accuracies = [epoch["val_accuracy"] for epoch in state.history["epochs"]]
    assert accuracies[0] <= 0.5 and accuracies[-1] == 1.0
    # The best epoch went to tmp_path as a head directory: head files and the adapter, no tokenizer.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        ADAPTER_FILE,
        "head.json",
        "head.safetensors",
    ]
    classifier = load_classifier(tiny_encoder, tmp_path, device="cpu")
    assert classifier.classify(TEXTS).argmax(axis=1).tolist() == [0, 1, 2]


def test_adapter_file_is_safetensors_with_one_a_and_one_b_per_adapted_layer(trained_adapter):
    _, directory = trained_adapter
    with safe_open(str(directory / ADAPTER_FILE), framework="pt") as handle:
        assert handle.metadata() == {"format": ADAPTER_FORMAT, "rank": "4", "alpha": "8.0"}
        keys = sorted(handle.keys())
        shape = handle.get_slice("encoder.layer.0.intermediate.dense.lora_B").get_shape()
    assert len(keys) == 2 * 6 * 2
    assert "encoder.layer.1.attention.self.query.lora_A" in keys
    assert shape == [64, 4]  # the tiny BERT's intermediate size x rank


def test_loaded_default_merges_the_adapter_into_the_encoder_weights(tiny_encoder: Path, trained_adapter):
    model, directory = trained_adapter
    merged = load_classifier(tiny_encoder, directory, device="cpu")
    again = load_classifier(tiny_encoder, directory, device="cpu")
    assert isinstance(merged, BertClassifier)
    from transformers import AutoModel

    plain = AutoModel.from_pretrained(str(tiny_encoder), local_files_only=True, use_safetensors=True)
    query = "encoder.layer.0.attention.self.query.weight"
    merged_weights = dict(merged.encoder.model.named_parameters())
    assert not torch.allclose(merged_weights[query], dict(plain.named_parameters())[query])
    # No LoRA layer is left in the merged encoder: inference costs what the plain encoder costs.
    assert not any("lora" in name for name in merged_weights)
    assert merged.model_id.startswith("tiny+lora@") and "+head-cls@" in merged.model_id

    batch = merged.encoder.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(model(**batch).logits, dim=-1).numpy()
    probabilities = merged.classify(TEXTS)
    assert probabilities.shape == (3, 3)
    assert probabilities.dtype.name == "float32"
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-6
    assert abs(probabilities - expected).max() < 1e-5  # merged weights == adapter applied on the fly
    assert (merged.classify(TEXTS) == probabilities).all()
    assert (again.classify(TEXTS) == probabilities).all()  # a second load is the same model


def test_an_adapter_offered_only_as_pickle_is_refused(trained_adapter, tmp_path: Path, tiny_encoder: Path):
    _, directory = trained_adapter
    for name in ("head.json", "head.safetensors"):
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsafeCheckpointError, match="safetensors only"):
        load_classifier(tiny_encoder, tmp_path, device="cpu")


def test_an_adapter_for_another_encoder_is_refused_before_any_weight_changes(trained_adapter, tmp_path: Path):
    _, directory = trained_adapter
    wider = save_tiny_bert(tmp_path / "wider", hidden_size=48)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(wider), local_files_only=True, use_safetensors=True)
    before = {name: p.clone() for name, p in model.named_parameters()}
    from workers.adapter import merge_adapter

    adapter = load_adapter(directory)
    assert adapter is not None
    with pytest.raises(ModelLoadError, match="trained on another encoder"):
        merge_adapter(model, adapter)
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())


def test_a_head_without_an_adapter_has_none(tiny_model):
    _, head = tiny_model
    assert load_adapter(head) is None


def test_length_buckets_cover_every_text_once_and_group_similar_lengths():
    texts = [("x" * (i % 37)) for i in range(200)]
    config = FinetuneConfig(batch_size=10, bucket_batches=5, seed=3)
    batches = epoch_batches(texts, config, epoch=0)
    assert sorted(i for batch in batches for i in batch.tolist()) == list(range(200))
    assert [b.tolist() for b in batches] == [b.tolist() for b in epoch_batches(texts, config, epoch=0)]
    assert [b.tolist() for b in batches] != [b.tolist() for b in epoch_batches(texts, config, epoch=1)]
    spread = [max(len(texts[i]) for i in b) - min(len(texts[i]) for i in b) for b in batches]
    plain = epoch_batches(texts, FinetuneConfig(batch_size=10, seed=3), epoch=0)
    plain_spread = [max(len(texts[i]) for i in b) - min(len(texts[i]) for i in b) for b in plain]
    assert sum(spread) < 0.5 * sum(plain_spread)


def test_lora_command_writes_a_head_directory_with_metadata(tiny_encoder: Path, tmp_path: Path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t.text, "label": t.label}) + "\n" for t in synthetic(40)))
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    finetune_command.add_arguments(parser)
    args = parser.parse_args(
        ["--lora", "--lora-rank", "2", "--data", str(data), "--encoder", str(tiny_encoder)]
        + ["--out", str(out), "--epochs", "1", "--lr", "1e-2", "--max-length", "16", "--no-progress"]
    )
    assert finetune_command.run(args) == 0
    meta = json.loads((out / "head.json").read_text())
    assert meta["pooling"] == "cls" and meta["labels"] == list(LABELS) and meta["hidden_size"] == 32
    assert meta["trained_on"]["lora"]["rank"] == 2 and meta["trained_on"]["config"]["lr"] == 1e-2
    assert meta["metrics"]["test"]["n"] == 12  # 10% of 120 texts
    adapter = load_adapter(out)
    assert adapter is not None and adapter.rank == 2


def test_lora_command_stopped_early_resumes_to_the_end(tiny_encoder: Path, tmp_path: Path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t.text, "label": t.label}) + "\n" for t in synthetic(40)))
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    finetune_command.add_arguments(parser)
    argv = ["--lora", "--lora-rank", "2", "--data", str(data), "--encoder", str(tiny_encoder)]
    argv += ["--out", str(out), "--epochs", "2", "--batch-size", "16", "--max-length", "16", "--no-progress"]
    assert finetune_command.run(parser.parse_args([*argv, "--max-steps", "3"])) == 0
    assert "stopped at step 3 (epoch 1); continue with --resume" in capsys.readouterr().out
    assert not (out / "head.json").exists()  # no epoch finished yet: only the resume checkpoint
    assert finetune_command.run(parser.parse_args([*argv, "--resume"])) == 0
    state = json.loads((out / CHECKPOINT_DIR / STATE_FILE).read_text())
    assert (state["global_step"], state["epoch"]) == (2 * 6, 2)  # 96 training texts / 16 x 2 epochs
    assert json.loads((out / "head.json").read_text())["metrics"]["test"]["n"] == 12
