import json

import pytest

from schemas.records import MAX_TEXT_CHARS, Tweet
from tests.poison import CATALOGUE
from workers.decode import Rejection, decode_tweet
from workers.records import RawRecord


def _decode(value):
    return decode_tweet(RawRecord("in", 0, 7, b"k", value))


@pytest.mark.parametrize(
    ("value", "error_class", "says"),
    [
        (None, "Tombstone", "null"),
        (b"", "EmptyValue", "empty"),
        (b"\xff\xfe{}", "NonUtf8", "not valid UTF-8"),
        (b'{"id": "1", "text": "trunc', "InvalidJson", "not valid JSON"),
        (b'{"id": "1", "text": "ok"} trailing', "InvalidJson", "trailing characters"),
        (b"[1, 2]", "SchemaMismatch", "not an object"),
        (b'"just a string"', "SchemaMismatch", "not an object"),
        (b'{"id": "1"}', "SchemaMismatch", "text: Field required"),
        (b'{"id": "1", "text": null}', "SchemaMismatch", "text: Input should be a valid string"),
        (b'{"id": "1", "text": 42}', "SchemaMismatch", "text: Input should be a valid string"),
        (b'{"id": "1", "text": "   "}', "EmptyText", "empty"),
        (b'{"text": "no id"}', "SchemaMismatch", "id: Field required"),
    ],
)
def test_bad_records_are_rejected_with_a_reason(value, error_class, says):
    outcome = _decode(value)
    assert isinstance(outcome, Rejection)
    assert outcome.error_class == error_class
    assert says in outcome.message
    assert outcome.stage == "decode"


def test_rejection_message_never_contains_the_payload():
    secret = "canary-payload-5f2c"
    for value in (
        f'{{"id": "1", "text": {{"x": "{secret}"}}}}'.encode(),
        f'{{"id": "{secret}", "text": 1}}'.encode(),
    ):
        outcome = _decode(value)
        assert isinstance(outcome, Rejection)
        assert secret not in outcome.message


def test_valid_record_decodes_to_a_tweet():
    outcome = _decode('{"id": 5, "text": "héllo 😀", "lang": "fr"}'.encode())
    assert outcome == Tweet(id="5", text="héllo 😀", lang="fr")


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda case: case.name)
def test_poison_catalogue_verdicts(case):
    outcome = decode_tweet(RawRecord("in", 0, 7, case.key, case.value, list(case.headers)))
    if case.verdict is None:
        assert isinstance(outcome, Tweet), outcome
    else:
        assert isinstance(outcome, Rejection)
        assert outcome.error_class == case.verdict
        # The reason never quotes the payload (the 1 MB text would otherwise be in every header).
        assert len(outcome.message) < 300


def test_text_up_to_the_limit_is_accepted_and_one_more_character_is_too_long():
    at_limit = _decode(json.dumps({"id": "1", "text": "x" * MAX_TEXT_CHARS}).encode())
    assert isinstance(at_limit, Tweet)
    over = _decode(json.dumps({"id": "1", "text": "x" * (MAX_TEXT_CHARS + 1)}).encode())
    assert isinstance(over, Rejection)
    assert (over.error_class, over.message) == (
        "TextTooLong",
        f"text: String should have at most {MAX_TEXT_CHARS} characters",
    )


def test_metadata_of_an_unexpected_type_is_dropped_not_rejected():
    outcome = _decode(b'{"id": "1", "text": "hi", "created_at": 1700000000000, "lang": 5, "user": [1]}')
    assert outcome == Tweet(id="1", text="hi")


def test_escaped_surrogate_pair_decodes_to_one_character():
    outcome = _decode(b'{"id": "1", "text": "\\ud83d\\ude00"}')
    assert isinstance(outcome, Tweet) and outcome.text == "\U0001f600"
