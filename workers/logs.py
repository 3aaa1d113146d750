"""structlog set-up shared by the driver and the actors.

Logs carry counts, ids of partitions and error classes, never message payloads or secrets.
kafka-python logs its client config (with SASL passwords) at DEBUG, so its loggers are held at
WARNING whatever the level asked for.
"""

from __future__ import annotations

import logging
import sys

import structlog

_NOISY = ("kafka", "urllib3", "filelock", "transformers", "huggingface_hub")


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
