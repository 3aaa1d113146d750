import hashlib
from pathlib import Path

import pytest

from schemas.errors import ModelLoadError
from workers.model_files import ModelFiles, read_model_dir, write_model_dir


def _model_dir(root: Path) -> Path:
    (root / "tok").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (root / "config.json").write_text('{"hidden_size": 32}')
    (root / "tok" / "vocab.txt").write_text("[CLS]\n[SEP]\n")
    (root / ".cache").mkdir()
    (root / ".cache" / "lock").write_text("not part of the model")
    return root


def test_a_model_directory_arrives_byte_for_byte_on_the_actors_node(tmp_path):
    source = _model_dir(tmp_path / "driver" / "encoder")
    sent = read_model_dir(source)
    assert [name for name, _ in sent.files] == ["config.json", "model.safetensors", "tok/vocab.txt"]
    assert sent.size == 1024 + 19 + 12 and sent.source == str(source)

    written = write_model_dir(sent, tmp_path / "node" / "cache")
    assert written.parent == tmp_path / "node" / "cache" and written.name == sent.digest[:32]
    for name, data in sent.files:
        assert (written / name).read_bytes() == data
    assert not (written / ".cache").exists()
    assert read_model_dir(written).digest == sent.digest


def test_the_same_model_is_written_once_per_node_and_a_changed_one_beside_it(tmp_path):
    source = _model_dir(tmp_path / "encoder")
    cache = tmp_path / "cache"
    first = write_model_dir(read_model_dir(source), cache)
    marker = (first / "config.json").stat().st_mtime_ns
    assert write_model_dir(read_model_dir(source), cache) == first
    assert (first / "config.json").stat().st_mtime_ns == marker, "reused, not rewritten"

    (source / "config.json").write_text('{"hidden_size": 64}')
    second = write_model_dir(read_model_dir(source), cache)
    assert second != first and sorted(p.name for p in cache.iterdir()) == sorted([first.name, second.name])


def test_a_missing_or_empty_directory_is_refused_on_the_driver(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a directory on the driver's machine"):
        read_model_dir(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="holds no files"):
        read_model_dir(tmp_path / "empty")


def test_a_file_name_that_leaves_the_directory_is_refused(tmp_path):
    evil = ModelFiles(source="evil", digest=hashlib.sha256(b"x").hexdigest(), files=(("../outside", b"x"),))
    with pytest.raises(ModelLoadError, match="leaves the model directory"):
        write_model_dir(evil, tmp_path / "cache")
    assert not (tmp_path / "outside").exists()
