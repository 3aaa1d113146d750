"""The records on the wire: what comes in (``Tweet``) and what goes out (``LabeledTweet``)."""

from __future__ import annotations

import math
import unicodedata
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

#: Bumped whenever a field of ``LabeledTweet`` changes meaning or goes away.
SCHEMA_VERSION = 1

#: Longest tweet text accepted, in characters. Posts on X are at most 25,000 characters, and the
#: encoder reads only the first ``model.max_length`` tokens (a few hundred characters) anyway; but
#: the tokenizer splits the *whole* text before truncating (~1.2 s for 1 MB on one core), so an
#: unbounded text lets one record stall a batch. 2**17 leaves room for any real post (and for a
#: 100,000-character single word, which the tokenizer maps to one [UNK] cheaply).
MAX_TEXT_CHARS = 2**17


class Label(str, Enum):
    POSITIVE = "POSITIVE"
    NEGATIVE = "NEGATIVE"
    NEUTRAL = "NEUTRAL"


#: The label names in ``Label`` order: a head's rows, a classifier's probability columns and the
#: label indices of the offline tools all follow it.
LABELS: tuple[str, ...] = tuple(label.value for label in Label)

# The spellings a labeled-data file or a checkpoint's ``id2label`` may use (compared casefolded).
_LABEL_SPELLINGS = {
    "positive": Label.POSITIVE.value,
    "pos": Label.POSITIVE.value,
    "negative": Label.NEGATIVE.value,
    "neg": Label.NEGATIVE.value,
    "neutral": Label.NEUTRAL.value,
    "neu": Label.NEUTRAL.value,
}


def label_named(name: str) -> str | None:
    """The ``Label`` value ``name`` spells (positive/negative/neutral or pos/neg/neu, any case,
    surrounding whitespace ignored); None for anything else."""
    return _LABEL_SPELLINGS.get(name.strip().casefold())


def _id_as_text(value: Any) -> Any:
    # Tweet ids are often JSON numbers; keep them as text so 64-bit ids never lose digits downstream.
    # bool is an int subclass in Python, and `true` is not an id.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class Tweet(BaseModel):
    """One input record: a JSON object with at least ``id`` and ``text``; other fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    id: Annotated[str, BeforeValidator(_id_as_text), Field(min_length=1, max_length=256)]
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    created_at: datetime | str | None = None
    lang: str | None = None
    user: str | dict[str, Any] | None = None

    @field_validator("created_at", "lang", "user", mode="wrap")
    @classmethod
    def _optional_metadata(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # Unused metadata of an unexpected shape (e.g. created_at as epoch millis) is dropped:
        # it must never be the reason a tweet is not classified.
        try:
            return handler(value)
        except ValidationError:
            return None

    @field_validator("text")
    @classmethod
    def _text_has_content(cls, text: str) -> str:
        # any() stops at the first visible character, so ordinary tweets pay for one lookup.
        if not any(unicodedata.category(char)[0] not in "CZ" for char in text):
            raise ValueError("text is empty or has only whitespace, control or invisible format characters")
        return text


class LabelScores(BaseModel):
    """Softmax probabilities for the three labels; they sum to 1."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    POSITIVE: float = Field(ge=0.0, le=1.0)
    NEGATIVE: float = Field(ge=0.0, le=1.0)
    NEUTRAL: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> LabelScores:
        total = self.POSITIVE + self.NEGATIVE + self.NEUTRAL
        # float32 softmax rounded through JSON: allow a little slack, not a wrong distribution.
        if not math.isclose(total, 1.0, abs_tol=1e-3):
            raise ValueError(f"scores sum to {total:.6f}, expected 1")
        return self


class LabeledTweet(BaseModel):
    """One output record: the tweet's id, its label and scores, and where it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    id: str
    label: Label
    scores: LabelScores
    model_id: str
    pooling: str
    source_topic: str
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    classified_at: datetime

    @model_validator(mode="after")
    def _label_is_argmax(self) -> LabeledTweet:
        best = max(Label, key=lambda label: getattr(self.scores, label.value))
        if getattr(self.scores, best.value) > getattr(self.scores, self.label.value):
            raise ValueError(f"label {self.label.value} is not the highest-scoring label ({best.value})")
        return self
