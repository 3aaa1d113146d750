"""The flags every pipeline command shares, and the one function that turns them into ``Settings``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from schemas.settings import Settings

# flag dest -> path in the settings tree
_SETTINGS_FLAGS: dict[str, tuple[str, str]] = {
    "bootstrap_servers": ("kafka", "bootstrap_servers"),
    "input_topic": ("topics", "input"),
    "output_topic": ("topics", "output"),
    "dlq_topic": ("topics", "dlq"),
    "group_id": ("topics", "group_id"),
    "workers": ("workers", "count"),
    "encoder": ("model", "encoder"),
    "head": ("model", "head"),
    "pooling": ("model", "pooling"),
    "device": ("model", "device"),
    "log_level": ("log", "level"),
    "metrics_port": ("metrics", "port"),
    "delivery": ("workers", "delivery"),
}


def add_settings_flags(
    parser: argparse.ArgumentParser, pipeline: bool = True, runs_own: bool = False
) -> None:
    """The settings flags of a command. ``pipeline=False``: the connection and logging only.
    ``runs_own=True`` (``clstream bench``): without the flags the command sets per run itself (its
    topics, group, delivery mode and metrics port); given, they would override every run alike."""
    parser.add_argument(
        "--config", type=Path, help="TOML settings file (flags > CLSTREAM_* env > file > defaults)"
    )
    parser.add_argument("--bootstrap-servers", help="comma-separated host:port list")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    if not pipeline:
        return
    if not runs_own:
        parser.add_argument("--input-topic")
        parser.add_argument("--output-topic")
        parser.add_argument("--dlq-topic")
        parser.add_argument("--group-id")
    parser.add_argument("--workers", type=int, help="number of classifier actors")
    parser.add_argument("--encoder", type=Path, help="local Hugging Face encoder directory (safetensors)")
    parser.add_argument("--head", type=Path, help="head directory (head.safetensors + head.json)")
    parser.add_argument("--pooling", choices=["cls", "mean", "last4", "pooler"])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    if runs_own:
        return
    parser.add_argument("--metrics-port", type=int, help="driver's Prometheus port (0: a free one)")
    parser.add_argument(
        "--delivery",
        choices=["at-least-once", "exactly-once"],
        help="exactly-once: output, DLQ and offsets in one Kafka transaction per batch",
    )


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides: dict[str, dict[str, Any]] = {}
    for dest, (section, name) in _SETTINGS_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides.setdefault(section, {})[name] = value
    for dotted, value in extra.items():
        section, name = dotted.split("__")
        overrides.setdefault(section, {}).setdefault(name, value)
    return Settings.load(getattr(args, "config", None), overrides)
