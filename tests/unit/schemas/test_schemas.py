import subprocess
import sys
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas import Label, LabeledTweet, Tweet


def test_tweet_ignores_unknown_fields_and_keeps_numeric_ids_exact():
    tweet = Tweet.model_validate_json(b'{"id": 1234567890123456789012, "text": "hi", "retweets": 3}')
    assert tweet.id == "1234567890123456789012"
    assert tweet.text == "hi"


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "\u200b\u200d", "\x00\x07"])
def test_tweet_rejects_text_without_visible_characters(text):
    with pytest.raises(ValidationError, match="text is empty"):
        Tweet(id="1", text=text)


@pytest.mark.parametrize("payload", ['{"id": true, "text": "x"}', '{"id": "1", "text": 5}', '{"text": "x"}'])
def test_tweet_rejects_wrong_types(payload):
    with pytest.raises(ValidationError):
        Tweet.model_validate_json(payload)


def _labeled(**overrides):
    fields = {
        "id": "1",
        "label": "POSITIVE",
        "scores": {"POSITIVE": 0.7, "NEGATIVE": 0.2, "NEUTRAL": 0.1},
        "model_id": "m",
        "pooling": "cls",
        "source_topic": "t",
        "source_partition": 0,
        "source_offset": 5,
        "classified_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    return LabeledTweet(**{**fields, **overrides})


def test_labeled_tweet_round_trips_through_json():
    labeled = _labeled()
    assert LabeledTweet.model_validate_json(labeled.model_dump_json()) == labeled
    assert labeled.label is Label.POSITIVE
    assert labeled.schema_version == 1


def test_labeled_tweet_scores_must_sum_to_one():
    with pytest.raises(ValidationError, match="sum to 1.2"):
        _labeled(scores={"POSITIVE": 0.7, "NEGATIVE": 0.4, "NEUTRAL": 0.1})


def test_labeled_tweet_label_must_be_the_argmax():
    with pytest.raises(ValidationError, match="not the highest-scoring"):
        _labeled(label="NEUTRAL")


def test_schemas_imports_no_torch_ray_or_kafka():
    code = "import sys, schemas; print(sorted(m for m in ('torch','ray','kafka','transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
