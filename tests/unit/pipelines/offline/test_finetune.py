"""Fine-tuning on a tiny random BERT: the loss falls, the output loads, a resumed run continues."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pipelines.commands import finetune as finetune_command
from pipelines.offline import finetune
from pipelines.offline.datasets import LabeledText
from pipelines.offline.finetune import FinetuneConfig
from pipelines.offline.full_finetune import build_model
from pipelines.offline.resume import TrainerState, load_optimizer, save_optimizer
from schemas.errors import ClstreamError
from workers.checkpoints import SequenceClassifierModel, load_classifier

WORDS = {
    "POSITIVE": "good great lovely happy",
    "NEGATIVE": "bad awful terrible sad",
    "NEUTRAL": "the table is on",
}
# A tiny random model needs a far larger step than BERT's 2e-5 to learn anything in 20 steps.
CONFIG = FinetuneConfig(epochs=4, lr=1e-2, batch_size=16, max_length=16, seed=0, save_every=0)


def synthetic(n_per_label: int, offset: int = 0) -> list[LabeledText]:
    """Distinct texts whose label is given away by their words."""
    return [
        LabeledText(f"{WORDS[label]} number {offset + i}", label, None)
        for i in range(n_per_label)
        for label in WORDS
    ]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.testing import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("finetune") / "encoder")


def _train(encoder: Path, out: Path, **kwargs) -> TrainerState:
    torch.manual_seed(0)  # the new classification layer's initialisation
    model, tokenizer = build_model(encoder)
    return finetune.finetune(
        model,
        tokenizer,
        synthetic(22),
        synthetic(4, offset=100),
        out,
        kwargs.pop("config", CONFIG),
        run_info={"test": 1},
        progress=False,
        **kwargs,
    )


def test_loss_falls_and_the_best_epoch_is_saved_as_a_sequence_classifier(tiny_encoder: Path, tmp_path: Path):
    state = _train(tiny_encoder, tmp_path)
    losses = [loss for _, loss in state.history["step_loss"]]
    assert len(losses) == 4 * 5  # 66 texts in batches of 16: 5 steps per epoch
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5
    assert state.best_epoch >= 1 and state.best_val_macro_f1 == max(
        epoch["val_macro_f1"] for epoch in state.history["epochs"]
    )
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["id2label"] == {"0": "POSITIVE", "1": "NEGATIVE", "2": "NEUTRAL"}
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]
    classifier = load_classifier(tmp_path, device="cpu")
    assert isinstance(classifier, SequenceClassifierModel)
    assert classifier.classify(["good great lovely happy", "bad awful terrible sad"]).shape == (2, 3)


def test_resumed_run_continues_from_the_saved_step(tiny_encoder: Path, tmp_path: Path):
    two_epochs = replace(CONFIG, epochs=2)
    stopped = _train(tiny_encoder, tmp_path, config=two_epochs, max_steps=7)
    assert (stopped.global_step, stopped.epoch, stopped.step_in_epoch) == (7, 1, 2)

    model, tokenizer = build_model(tmp_path / "checkpoint")
    resumed = finetune.finetune(
        model,
        tokenizer,
        synthetic(22),
        synthetic(4, offset=100),
        tmp_path,
        two_epochs,
        run_info={"test": 1},
        resume=True,
        progress=False,
    )
    assert [step for step, _ in resumed.history["step_loss"]] == list(range(1, 11))
    assert [epoch["epoch"] for epoch in resumed.history["epochs"]] == [1, 2]
    assert resumed.scheduler["last_epoch"] == 10
    saved = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())
    assert saved["global_step"] == 10


def test_resume_with_other_settings_is_refused(tiny_encoder: Path, tmp_path: Path):
    _train(tiny_encoder, tmp_path, max_steps=2)
    model, tokenizer = build_model(tmp_path / "checkpoint")
    with pytest.raises(ClstreamError, match="written by a run with other data or settings"):
        finetune.finetune(
            model,
            tokenizer,
            synthetic(22),
            synthetic(4, offset=100),
            tmp_path,
            replace(CONFIG, lr=1e-4),
            run_info={"test": 2},
            resume=True,
            progress=False,
        )


def test_optimizer_state_round_trips_through_safetensors(tmp_path: Path):
    parameters = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2))]
    optimizer = torch.optim.AdamW(parameters, lr=0.1, betas=(0.8, 0.9))
    for _ in range(3):
        torch.stack([p.square().sum() for p in parameters]).sum().backward()
        optimizer.step()
    save_optimizer(optimizer, tmp_path / "optimizer.safetensors")

    fresh = torch.optim.AdamW(parameters, lr=0.5)
    load_optimizer(fresh, tmp_path / "optimizer.safetensors")
    before, after = optimizer.state_dict(), fresh.state_dict()
    assert after["param_groups"][0]["lr"] == 0.1 and tuple(after["param_groups"][0]["betas"]) == (0.8, 0.9)
    for index in (0, 1):
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(before["state"][index][name], after["state"][index][name])


def test_finetune_command_writes_metadata_and_a_loadable_model(tiny_encoder: Path, tmp_path: Path):
    data = tmp_path / "tweets.jsonl"
    data.write_text(
        "".join(json.dumps({"text": item.text, "label": item.label.lower()}) + "\n" for item in synthetic(20))
    )
    parser = argparse.ArgumentParser()
    finetune_command.add_arguments(parser)
    args = parser.parse_args(
        ["--data", str(data), "--encoder", str(tiny_encoder), "--out", str(tmp_path / "out")]
        + ["--epochs", "1", "--lr", "3e-3", "--batch-size", "16", "--max-length", "16"]
        + ["--save-every", "0", "--device", "cpu", "--no-progress"]
    )
    assert finetune_command.run(args) == 0
    metadata = json.loads((tmp_path / "out" / "clstream.json").read_text())
    assert metadata["trained_on"]["sizes"] == {
        "train": 48,
        "validation": 6,
        "test": 6,
        "train_used": 48,
        "validation_used": 6,
    }
    assert set(metadata["metrics"]["test"]) >= {"accuracy", "macro_f1", "confusion"}
    assert load_classifier(tmp_path / "out", device="cpu").labels == ("POSITIVE", "NEGATIVE", "NEUTRAL")
    with pytest.raises(ClstreamError, match="already holds a fine-tuning run: pass --resume"):
        finetune_command.run(args)


def test_an_added_source_trains_and_validates_under_its_own_topic_and_never_enters_the_test_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from pipelines.offline import datasets, sources
    from pipelines.offline.finetune_data import FinetuneOptions, prepare_finetune_data

    own = tmp_path / "tweets.jsonl"
    own.write_text(
        "".join(json.dumps({"text": item.text, "label": item.label.lower()}) + "\n" for item in synthetic(20))
    )
    added = tmp_path / "uci-sentences.csv"
    rows = [
        f"s{i},sentence number {i} is {'great' if i % 2 else 'awful'},{'POSITIVE' if i % 2 else 'NEGATIVE'},x"
        for i in range(40)
    ]
    added.write_text("id,text,label,origin\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(sources, "fetch", lambda name: added)
    options = FinetuneOptions(
        out=tmp_path / "out",
        encoder_dir=tmp_path,
        source=datasets.DataSource(own),
        extra_sources=("uci-sentences",),
    )
    monkeypatch.setattr("pipelines.offline.finetune_data.weights_sha256", lambda path: "sha")
    data = prepare_finetune_data(options)
    from_source = [item for item in data.train + data.validation if item.topic == "uci-sentences"]
    assert len(from_source) == 40 and sum(1 for i in data.validation if i.topic == "uci-sentences") == 4
    assert not any(item.topic == "uci-sentences" for item in data.test)
    assert len(data.test) == 6  # the file's own 10%, as without the source
    (described,) = data.trained_on["extra_sources"]
    assert (described["name"], described["train"], described["validation"]) == ("uci-sentences", 36, 4)
    assert data.run_info["extra_sources"] == data.trained_on["extra_sources"]
