"""structlog set-up shared by the driver and the actors, and the redaction every log record passes.

Logs carry counts, ids of partitions and error classes, never message payloads or secrets. Our own
log calls are written that way; other libraries' are not: kafka-python logs its whole client
config at DEBUG (``sasl_plain_password`` included) and every record it sends
(``Sending (key=%r value=%r ...)``). So ``configure_logging`` installs a log-record factory that
redacts, at the moment any stdlib log record is created and whichever handler later writes it:

- in dict arguments, the values of keys that name a secret (password, secret, token, key file
  passwords...) become ``***``;
- bytes arguments (record keys, values, header values) become ``<N bytes>``;
- in the message text, ``password=...``-like pairs lose their value and bytes literals (from the
  reprs of kafka-python's protocol objects, e.g. ``FetchResponse(... records=b'...')``) are cut.

Noisy libraries are held at WARNING unless the level asked for is DEBUG, where their DEBUG
output is what the user wants to see, redacted as above.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog

_NOISY = ("kafka", "urllib3", "filelock", "transformers", "huggingface_hub")

REDACTED = "***"
#: Config keys whose values are secrets (kafka-python's and ours).
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|credential|ssl_password|sasl_oauth", re.IGNORECASE)
#: ``password='x'``, ``"sasl_plain_password": "x"``, ``password=x`` in a free-text message.
_SECRET_IN_TEXT = re.compile(
    r"""(?P<name>['"]?\w*(?:password|secret|token)\w*['"]?\s*[:=]\s*)(?P<value>'[^']*'|"[^"]*"|[^\s,}\)]+)""",
    re.IGNORECASE,
)


def redact_value(value: Any) -> Any:
    """A log argument with secrets and payload bytes removed; other values unchanged."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else redact_value(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, tuple):
        fields = getattr(value, "_fields", None)
        if fields is None:
            return tuple(redact_value(v) for v in value)
        if "value" in fields or "key" in fields:  # a ConsumerRecord and the like: name, not content
            return f"<{type(value).__name__}>"
    return value


def redact_text(text: str) -> str:
    return _SECRET_IN_TEXT.sub(lambda m: f"{m.group('name')}{REDACTED}", text)


#: A Python bytes literal as repr() writes it, e.g. inside a logged ``FetchResponse(records=b'...')``.
_BYTES_REPR = re.compile(r"""(?<![\w'"])b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def redact_message(text: str) -> str:
    """A formatted message without secret pairs and without bytes literals (payloads)."""
    text = _BYTES_REPR.sub(lambda m: f"<{len(m.group(0)) - 3} chars of bytes>", text)
    return redact_text(text)


def _redacting_factory(base: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = base(*args, **kwargs)
        if record.args:
            if isinstance(record.args, Mapping):
                record.args = redact_value(record.args)
            else:
                record.args = tuple(redact_value(arg) for arg in record.args)
            try:
                # Objects (kafka-python's protocol requests and responses) print the payload bytes
                # they hold: format now, while the text can still be scrubbed.
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a bad format string is the logging module's to report
                return record
            record.msg, record.args = redact_message(message), ()
        elif isinstance(record.msg, str):
            record.msg = redact_message(record.msg)
        return record

    factory.clstream_redacting = True  # type: ignore[attr-defined]
    return factory


def install_redaction() -> None:
    """Make every stdlib log record created from now on redacted (idempotent, process-wide)."""
    current = logging.getLogRecordFactory()
    if not getattr(current, "clstream_redacting", False):
        logging.setLogRecordFactory(_redacting_factory(current))


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # Whatever sys.stderr is when the line is written, not when logging was configured: a stream
    # swapped and closed since (pytest's capture, a redirect) must not break the next log call.
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    install_redaction()
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger().setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
