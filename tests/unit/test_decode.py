import pytest

from schemas.records import Tweet
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
