"""Bytes -> ``Tweet``, or a ``Rejection`` saying precisely why not. Never raises on input.

Error classes (the ``clstream.error.class`` DLQ header): ``Tombstone``, ``EmptyValue``, ``NonUtf8``
(including UTF-8-encoded lone surrogates), ``InvalidJson`` (including ``\\ud800`` escapes of lone
surrogates and nesting past the parser's recursion limit), ``SchemaMismatch``, ``EmptyText``
(nothing visible), ``TextTooLong`` (over ``schemas.records.MAX_TEXT_CHARS``), ``Unreadable`` (the
consumer could not read the record at all; see ``RawRecord.unreadable``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from schemas.records import Tweet
from workers.records import RawRecord


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record cannot be classified. ``message`` describes the problem, never the payload."""

    error_class: str
    message: str
    stage: str = "decode"


def decode_tweet(record: RawRecord) -> Tweet | Rejection:
    if record.unreadable is not None:
        return Rejection(
            "Unreadable",
            f"the consumer could not read the record at this offset ({record.unreadable}); "
            "it was skipped: read it with another client, or from a replica, by the source coordinates",
            stage="read",
        )
    value = record.value
    if value is None:
        return Rejection("Tombstone", "record value is null (a tombstone); there is no tweet to classify")
    if not value:
        return Rejection("EmptyValue", "record value is empty (0 bytes)")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("NonUtf8", f"record value is not valid UTF-8: {exc.reason} at byte {exc.start}")
    try:
        return Tweet.model_validate_json(text)
    except ValidationError as exc:
        return _rejection_from(exc)


def _rejection_from(exc: ValidationError) -> Rejection:
    errors = exc.errors(include_input=False, include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        return Rejection("InvalidJson", f"record value is not valid JSON: {errors[0]['msg']}")
    if errors and errors[0]["type"] == "model_type":
        return Rejection("SchemaMismatch", "record value is JSON but not an object with 'id' and 'text'")
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "record"
        parts.append(f"{where}: {error['msg']}")
    message = "; ".join(parts)
    if len(errors) == 1 and errors[0]["loc"] == ("text",):
        if errors[0]["type"] == "value_error":
            return Rejection("EmptyText", message)
        if errors[0]["type"] == "string_too_long":
            return Rejection("TextTooLong", message)
    return Rejection("SchemaMismatch", message)
