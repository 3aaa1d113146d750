"""``clstream status``: the live picture of a running pipeline, read from its driver's metrics.

It scrapes the driver's Prometheus endpoint (``metrics.host:metrics.port``) and draws one
terminal table, or redraws it every ``--interval`` seconds with ``--watch``. Reading metrics
keeps it independent of Ray: it works from any machine that can reach the endpoint.
"""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from schemas.errors import ClstreamError
from schemas.settings import Settings

#: Characters of a Ray node id shown (56 hex digits in full): enough to tell a cluster's nodes apart.
_NODE_ID_SHOWN = 8


@dataclass(frozen=True)
class ActorInfo:
    """One actor's ``clstream_actor_info`` labels: where it runs and on what."""

    state: str
    node: str = ""
    #: Ray's GPU ids for the actor, comma-separated; empty when Ray assigned none.
    gpu_ids: str = ""
    #: torch's device (``cpu``, ``cuda:0``), ``unknown`` until the model is loaded.
    device: str = "unknown"


def actor_line(name: str, info: ActorInfo) -> str:
    """``classifier-0 · running · node 3f2a9c01… · GPU 0 · device cuda:0``; the GPU part only when
    Ray assigned GPUs, and ``(no CUDA)`` after a CPU device that Ray gave GPUs to (torch sees no
    CUDA there: a driver or CUDA_VISIBLE_DEVICES problem, and the model runs on the CPU)."""
    parts = [name, info.state]
    if info.node:
        parts.append(f"node {info.node[:_NODE_ID_SHOWN]}" + ("…" if len(info.node) > _NODE_ID_SHOWN else ""))
    if info.gpu_ids:
        parts.append(f"GPU {info.gpu_ids}" if "," not in info.gpu_ids else f"GPUs {info.gpu_ids}")
    no_cuda = bool(info.gpu_ids) and info.device != "unknown" and not info.device.startswith("cuda")
    parts.append(f"device {info.device}" + (" (no CUDA)" if no_cuda else ""))
    return " · ".join(parts)


@dataclass
class PipelineStatus:
    """The parts of one scrape that the table shows."""

    lag_by_partition: dict[str, float] = field(default_factory=dict)
    actors_by_state: dict[str, float] = field(default_factory=dict)
    desired: float = 0.0
    totals: dict[str, float] = field(default_factory=dict)
    per_actor: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    actors: dict[str, ActorInfo] = field(default_factory=dict)
    latency_buckets: list[tuple[float, float]] = field(default_factory=list)
    driver_rss: float = 0.0

    def latency_quantile(self, q: float) -> float | None:
        """The ``q`` quantile's bucket bound (the smallest ``le`` holding that share), or None."""
        if not self.latency_buckets or self.latency_buckets[-1][1] == 0:
            return None
        wanted = q * self.latency_buckets[-1][1]
        return next(bound for bound, cumulative in self.latency_buckets if cumulative >= wanted)


def parse_metrics(text: str) -> PipelineStatus:
    status = PipelineStatus()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "clstream_consumer_lag":
                status.lag_by_partition[labels["partition"]] = value
            elif name == "clstream_actors":
                status.actors_by_state[labels["state"]] = value
            elif name == "clstream_actors_desired":
                status.desired = value
            elif name in (
                "clstream_records_consumed_total",
                "clstream_records_produced_total",
                "clstream_records_dead_lettered_total",
            ):
                status.totals[name.removeprefix("clstream_records_").removesuffix("_total")] = value
            elif name == "clstream_end_to_end_latency_seconds_bucket":
                status.latency_buckets.append((float(labels["le"]), value))
            elif name == "clstream_driver_resident_bytes":
                status.driver_rss = value
            elif name == "clstream_actor_info":
                status.actors[labels["actor"]] = ActorInfo(
                    labels["state"], labels["node"], labels["gpu_ids"], labels["device"]
                )
            elif "actor" in labels:
                status.per_actor[labels["actor"]][name.removeprefix("clstream_").removesuffix("_total")] = (
                    value
                )
    status.latency_buckets.sort()
    return status


def scrape(url: str, timeout_s: float = 5.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - a URL the user gave
            return response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise ClstreamError(
            f"no metrics at {url} ({exc}); is `clstream run` running with metrics enabled on that port?"
        ) from exc


def render(status: PipelineStatus, rates: dict[str, float]) -> Group:
    summary = Table(title="clstream pipeline", show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column()
    running = status.actors_by_state.get("running", 0)
    states = ", ".join(f"{k} {v:.0f}" for k, v in sorted(status.actors_by_state.items())) or "none"
    summary.add_row("actors", f"{running:.0f} running (desired {status.desired:.0f}); {states}")
    summary.add_row("lag", f"{sum(status.lag_by_partition.values()):.0f} records")
    for key in ("consumed", "produced", "dead_lettered"):
        summary.add_row(key, f"{status.totals.get(key, 0):.0f}  ({rates.get(key, 0.0):.1f}/s)")
    p50, p99 = status.latency_quantile(0.5), status.latency_quantile(0.99)
    summary.add_row("latency", "no records yet" if p50 is None else f"p50 <= {p50:g}s, p99 <= {p99:g}s")
    summary.add_row("driver memory", f"{status.driver_rss / 2**20:.0f} MiB")

    lag = Table(title="lag by partition")
    lag.add_column("partition", justify="right")
    lag.add_column("lag", justify="right")
    for partition, value in sorted(status.lag_by_partition.items(), key=lambda kv: int(kv[0])):
        lag.add_row(partition, f"{value:.0f}")

    actors = Table(title="actors")
    columns = (
        ("inflight_tokens", "in-flight tokens"),
        ("inflight_batches", "batches"),
        ("partitions_paused", "paused"),
        ("pauses", "pauses"),
        ("batch_records_mean", "batch size"),
        ("padding_efficiency", "padding eff."),
        ("actor_resident_bytes", "memory MiB"),
    )
    actors.add_column("actor")
    for _, title in columns:
        actors.add_column(title, justify="right")
    for name, values in sorted(status.per_actor.items()):
        cells = []
        for key, _ in columns:
            cell = values.get(key)
            if cell is None:
                cells.append("-")
            elif key == "actor_resident_bytes":
                cells.append(f"{cell / 2**20:.0f}")
            elif key == "partitions_paused":
                cells.append("yes" if cell else "no")
            elif key == "padding_efficiency":
                cells.append(f"{cell:.2f}")
            else:
                cells.append(f"{cell:.0f}")
        actors.add_row(name, *cells)

    placed = Table(title="where actors run", show_header=False, box=None)
    placed.add_column(overflow="fold")
    for name, info in sorted(status.actors.items()):
        placed.add_row(Text(actor_line(name, info)))
    return Group(summary, lag, actors, placed)


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="show a running pipeline's actors, lag, rates and backpressure"
    )
    parser.add_argument("--url", default=None, help="metrics URL (default: from settings, /metrics)")
    parser.add_argument("--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between redraws (default 2)")
    parser.add_argument("--config", type=Path, help="TOML settings file (for metrics.host and metrics.port)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    metrics = Settings.load(config_file=args.config).metrics
    url = args.url or f"http://{metrics.host}:{metrics.port}/metrics"
    console = Console()
    previous: tuple[float, dict[str, float]] | None = None

    def frame() -> Group:
        nonlocal previous
        status = parse_metrics(scrape(url))
        now = time.monotonic()
        rates: dict[str, float] = {}
        if previous is not None and now > previous[0]:
            rates = {k: (v - previous[1].get(k, 0.0)) / (now - previous[0]) for k, v in status.totals.items()}
        previous = (now, dict(status.totals))
        return render(status, rates)

    if not args.watch:
        console.print(frame())
        return 0
    with Live(frame(), console=console, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(args.interval)
                live.update(frame())
        except KeyboardInterrupt:
            pass
    return 0
