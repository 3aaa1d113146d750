"""``clstream soak``: a long run at half of measured capacity with an actor SIGKILLed every ~2 minutes.

One run per delivery mode (``--delivery both``: at-least-once, then exactly-once), each on fresh
topics of a local broker on port 29700 (or ``--bootstrap-servers``):

1. capacity: unless ``--rate`` is given, the load saturates the pipeline for ``--capacity-s``
   and the committed rate is its capacity; the backlog is then drained. The output says so.
2. steady load: ``--minutes`` at half the capacity (or ``--rate``). Every ``--kill-every-s`` one
   actor is SIGKILLed (always the highest slot, so slot 0 lives through the run); the RSS of
   the driver (this process) and of every actor is sampled every ``--sample-every-s``; one
   progress line a minute (produced, committed, lag, kills, RSS).
3. accounting: the load is held, the backlog drained, the driver drained; ``clstream verify``'s
   reader and kcat, both read_committed, account for every record.
4. verdict (``pipelines/soak/rules.py``): 0 lost for both readers; duplicates within the bound
   printed before the run (exactly-once: 0); memory flat for the driver and each actor slot;
   every planned SIGKILL done. ``soak-<mode>.json``, ``.md`` and ``.png`` go to ``--out``; the
   exit status is 1 if any check failed.

``--outage-sweep`` runs ``pipelines/soak/outage_sweep.py`` instead. ``docs/soak.md`` has the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from pipelines.kafka_tools.admin import run_topics
from pipelines.kafka_tools.broker import LocalBroker
from pipelines.soak.load import rss_bytes
from pipelines.soak.pipeline import ActorEnd, LoadedPipeline, reader_counts
from pipelines.soak.rules import (
    Candidate,
    Check,
    Delivery,
    duplicate_bound,
    flatness_windows,
    kills_planned,
    memory_flat,
    pick_victim,
    soak_checks,
    soak_markdown,
)
from schemas.errors import ClstreamError
from schemas.settings import Settings

#: Not 9092 nor the test brokers' 29092/29192: a soak never touches other brokers or their data.
#: Below the ephemeral port range, so no connection's local end holds it.
SOAK_BROKER_PORT = 29700
MODES: tuple[Delivery, ...] = ("at-least-once", "exactly-once")


@dataclass(frozen=True)
class RssSample:
    at_s: float  # since the steady load began
    series: str  # "driver" or "actor slot N"
    pid: int
    rss_bytes: int


@dataclass(frozen=True)
class FlowSample:
    at_s: float
    produced: int
    committed: int
    lag: int


@dataclass(frozen=True)
class Kill:
    at_s: float
    actor: str
    slot: int
    pid: int


@dataclass
class SoakRecord:
    """Everything one run observed, filled in as it goes (a failed run still reports it)."""

    rss: list[RssSample] = field(default_factory=list)
    flow: list[FlowSample] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    capacity_per_s: float | None = None
    rate_per_s: float = 0.0
    produced: int = 0
    error: str | None = None


# -- the steady phase ------------------------------------------------------------------------------


class SteadyLoad:
    """The soak's steady phase: paced load, SIGKILLs on schedule, RSS samples, progress lines."""

    def __init__(
        self, pipeline: LoadedPipeline, args: argparse.Namespace, record: SoakRecord, console: Console
    ) -> None:
        self.pipeline = pipeline
        self.driver = pipeline.driver
        self.record = record
        self.console = console
        self.duration_s = args.minutes * 60
        self.kill_every_s = args.kill_every_s
        self.sample_every_s = args.sample_every_s
        self.planned = kills_planned(self.duration_s, self.kill_every_s)
        self._killed: set[int] = set()
        self._started = 0.0
        self._next_sample = 0.0
        self._next_progress = 60.0

    def run(self, rate_per_s: float) -> None:
        self._started = time.monotonic()
        self.pipeline.load.pace(rate_per_s)
        # Past the end only if ticks stop coming (a tick waits at most on a lag request).
        self.pipeline.tick_until(self._step, self.duration_s + 300, "the end of the steady load")

    def _step(self, view: Any) -> bool:
        now = time.monotonic() - self._started
        if now >= self._next_sample:
            self._sample(now, view)
            self._next_sample += self.sample_every_s
        if len(self.record.kills) < min(self.planned, int(now // self.kill_every_s)):
            self._kill(now)
        if now >= self._next_progress:
            self._progress(now, view)
            self._next_progress += 60
        return now >= self.duration_s

    def _sample(self, now: float, view: Any) -> None:
        rss = self.record.rss
        driver_rss = rss_bytes(os.getpid())
        if driver_rss is not None:
            rss.append(RssSample(now, "driver", os.getpid(), driver_rss))
        for member in list(self.driver.members.values()):
            pid = member.pid or 0
            value = rss_bytes(pid) if pid and pid not in self._killed else None
            if value is not None:
                rss.append(RssSample(now, f"actor slot {member.slot}", pid, value))
        self.record.flow.append(
            FlowSample(now, self.pipeline.load.sent, view.lag.total_committed, view.lag.total)
        )

    def _kill(self, now: float) -> None:
        victim = pick_victim(
            Candidate(m.name, m.slot, self._killable(m), m.counters.consumed)
            for m in self.driver.members.values()
        )
        if victim is None:
            return  # none running yet (a replacement still loading): the next tick tries again
        member = self.driver.members[victim]
        pid = member.pid
        if pid is None:
            return  # not answered yet: the next tick tries again
        self._killed.add(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return  # it died on its own; the driver replaces it, and the kill is still due
        self.record.kills.append(Kill(now, victim, member.slot, pid))
        self.console.print(f"{_clock(now)}  SIGKILL {victim} (slot {member.slot}, pid {pid})")

    def _killable(self, member: Any) -> bool:
        # A killed actor stays a member, running, until the driver's next observation of it.
        return member.state == "running" and member.pid not in self._killed

    def _progress(self, now: float, view: Any) -> None:
        latest: dict[str, int] = {}
        for sample in self.record.rss:
            latest[sample.series] = sample.rss_bytes  # samples are in time order: the last wins
        actors = ", ".join(
            f"{name.removeprefix('actor ')} {rss / 1024**2:.0f}"
            for name, rss in sorted(latest.items())
            if name != "driver"
        )
        self.console.print(
            f"{_clock(now)}  produced {self.pipeline.load.sent:,}  committed {view.lag.total_committed:,}  "
            f"lag {view.lag.total:,}  kills {len(self.record.kills)}/{self.planned}  "
            f"replaced {view.replaced_total}  RSS MB: driver {latest.get('driver', 0) / 1024**2:.0f}, {actors}"
        )


def _clock(seconds: float) -> str:
    return f"[{int(seconds // 60):>3}:{int(seconds % 60):02d}]"


# -- one run -------------------------------------------------------------------------------------


def soak_one(
    args: argparse.Namespace,
    delivery: Delivery,
    model: dict[str, Any],
    console: Console,
    make_settings: Callable[..., Settings],
) -> dict[str, Any]:
    """One soak run in one delivery mode; returns its summary (``summary["ok"]``)."""
    run_id = uuid.uuid4().hex[:8]
    settings = make_settings(
        **run_topics("soak", run_id),
        workers__delivery=delivery,
        metrics__port=0,  # never collides with a running driver
        **model,
    )
    duration_s = args.minutes * 60
    planned = kills_planned(duration_s, args.kill_every_s)
    bound = duplicate_bound(delivery, settings.workers, members_hit=planned)
    console.rule(f"clstream soak: {delivery}")
    console.print(
        f"{args.minutes:g} min steady load, model {args.model}, {settings.workers.count} actors, "
        f"{args.partitions} partitions, a SIGKILL every {args.kill_every_s:g} s ({planned} planned)\n"
        f"duplicate bound, fixed before the run: {bound.formula}\n"
        f"topics soak-{run_id}.*; results to {args.out}"
    )
    record = SoakRecord()
    pipeline = LoadedPipeline(settings, args.partitions)
    started = time.monotonic()
    readers = None
    try:
        pipeline.start()
        if args.rate is not None:
            record.rate_per_s = args.rate
        else:
            console.print(f"measuring capacity: saturating the pipeline for {args.capacity_s:g} s ...")
            record.capacity_per_s = pipeline.measure_capacity(args.capacity_s)
            record.rate_per_s = record.capacity_per_s / 2
            console.print(
                f"capacity {record.capacity_per_s:,.1f} records/s; the soak offers half of it: "
                f"{record.rate_per_s:,.1f} records/s (draining the capacity backlog first)"
            )
            pipeline.settle()
        SteadyLoad(pipeline, args, record, console).run(record.rate_per_s)
        console.print("steady load done: holding the load and draining the backlog ...")
        record.produced = pipeline.settle()
        pipeline.drain()
        console.print(f"{record.produced:,} records produced; reading them back (clstream verify, kcat) ...")
        readers = pipeline.readers(delivery)
    except Exception as exc:  # noqa: BLE001 - a run that breaks still reports what it saw
        record.error = f"{type(exc).__name__}: {exc}"
        console.print(f"[bold red]the soak did not finish:[/] {record.error}")
        if not isinstance(exc, ClstreamError):
            console.print_exception()
    finally:
        pipeline.close(delete_topics=not args.keep_topics)
    summary = _summary(args, delivery, settings, record, pipeline.driver.ends, readers, started)
    _write(summary, record, Path(args.out), console)
    return summary


def _summary(
    args: argparse.Namespace,
    delivery: Delivery,
    settings: Settings,
    record: SoakRecord,
    ends: list[ActorEnd],
    readers: Any,
    started: float,
) -> dict[str, Any]:
    duration_s = args.minutes * 60
    windows = flatness_windows(duration_s)
    series = sorted({s.series for s in record.rss}, key=lambda s: (s != "driver", s))
    memory = [
        memory_flat(name, ((s.at_s, s.rss_bytes) for s in record.rss if s.series == name), windows)
        for name in series
    ]
    planned = kills_planned(duration_s, args.kill_every_s)
    bound = duplicate_bound(delivery, settings.workers, members_hit=len(record.kills))
    counts = reader_counts(*readers) if readers is not None else []
    checks = soak_checks(counts, bound, memory, (len(record.kills), planned))
    if record.error is not None or readers is None:
        checks.insert(0, Check("the run finished", False, record.error or "no accounting"))
    return {
        "command": _command(args, delivery),
        "delivery": delivery,
        "ok": all(c.ok for c in checks),
        "model": args.model,
        "minutes": args.minutes,
        "rate_per_s": record.rate_per_s,
        "rate_source": "--rate" if record.capacity_per_s is None else "half of the measured capacity",
        "capacity_per_s": record.capacity_per_s,
        "capacity_s": None if record.capacity_per_s is None else args.capacity_s,
        "actors": settings.workers.count,
        "partitions": args.partitions,
        "kill_every_s": args.kill_every_s,
        "kills_planned": planned,
        "kills_done": len(record.kills),
        "replaced": len(ends),
        "replaced_actors": [asdict(e) for e in ends],
        "produced": record.produced,
        "duplicate_bound": {**asdict(bound), "value": bound.value, "formula": bound.formula},
        "windows": asdict(windows),
        "checks": [asdict(c) for c in checks],
        "readers": [asdict(r) for r in counts],
        "verify": readers[0].to_json() if readers is not None else None,
        "kcat": asdict(readers[1]) if readers is not None else None,
        "memory": [m.to_json() for m in memory],
        "kills": [asdict(k) for k in record.kills],
        "took_s": time.monotonic() - started,
        "error": record.error,
        "settings": settings.to_log_fields(),
        "samples": {"rss": [asdict(s) for s in record.rss], "flow": [asdict(f) for f in record.flow]},
    }


def _command(args: argparse.Namespace, delivery: Delivery) -> str:
    parts = [
        "clstream soak", f"--minutes {args.minutes:g}", f"--delivery {delivery}",
        f"--kill-every-s {args.kill_every_s:g}", f"--model {args.model}",
    ]  # fmt: skip
    if args.rate is not None:
        parts.append(f"--rate {args.rate:g}")
    if args.workers is not None:
        parts.append(f"--workers {args.workers}")
    return " ".join(parts)


def _write(summary: dict[str, Any], record: SoakRecord, out: Path, console: Console) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"soak-{summary['delivery']}"
    if record.rss or record.flow:
        _plot(summary, record, out / f"{stem}.png")
        summary["plot"] = f"{stem}.png"
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(soak_markdown(summary))
    for check in summary["checks"]:
        mark = "[green]pass[/]" if check["ok"] else "[bold red]FAIL[/]"
        console.print(f"  {mark}  {check['name']}: {check['detail']}")
    verdict = "[green]PASSED[/]" if summary["ok"] else "[bold red]FAILED[/]"
    console.print(f"soak {summary['delivery']}: {verdict}; wrote {out / stem}.{{json,md,png}}")


def _plot(summary: dict[str, Any], record: SoakRecord, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (memory, flow) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    series = sorted({s.series for s in record.rss}, key=lambda s: (s != "driver", s))
    for i, name in enumerate(series):
        colour = "black" if name == "driver" else colours[i % len(colours)]
        for j, pid in enumerate(dict.fromkeys(s.pid for s in record.rss if s.series == name)):
            points = [(s.at_s / 60, s.rss_bytes / 1024**2) for s in record.rss if s.pid == pid]
            memory.plot(*zip(*points, strict=True), color=colour, label=name if j == 0 else None)
    windows = summary["windows"]
    for window in (windows["first"], windows["last"]):
        memory.axvspan(window[0] / 60, window[1] / 60, color="grey", alpha=0.12)
    memory.set_ylabel("RSS (MB)")
    memory.set_title(
        f"clstream soak, {summary['delivery']}, {summary['model']} model: "
        f"{'PASSED' if summary['ok'] else 'FAILED'} (shaded: the windows the flatness rule compares)"
    )
    memory.legend(loc="lower right", fontsize="small")
    if len(record.flow) > 1:
        at = [f.at_s / 60 for f in record.flow[1:]]
        pairs = list(zip(record.flow, record.flow[1:], strict=False))
        flow.plot(at, [(b.produced - a.produced) / (b.at_s - a.at_s) for a, b in pairs], label="produced/s")
        flow.plot(
            at, [(b.committed - a.committed) / (b.at_s - a.at_s) for a, b in pairs], label="committed/s"
        )
        lag = flow.twinx()
        lag.plot(
            [f.at_s / 60 for f in record.flow], [f.lag for f in record.flow], color="grey", linestyle=":"
        )
        lag.set_ylabel("lag (records, dotted)")
    flow.set_ylabel("records/s")
    flow.set_xlabel("minutes of steady load")
    flow.legend(loc="upper left", fontsize="small")
    for kill in record.kills:
        for axis in (memory, flow):
            axis.axvline(kill.at_s / 60, color="red", linestyle="--", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- set-up shared with the sweep ------------------------------------------------------------------


@contextmanager
def local_broker(args: argparse.Namespace, console: Console) -> Iterator[LocalBroker | None]:
    """The soak's own broker (started, and stopped at the end if this started it), or None when
    ``--bootstrap-servers`` points elsewhere. Sets ``args.bootstrap_servers``."""
    if args.bootstrap_servers is not None:
        yield None
        return
    broker = LocalBroker(args.port)
    was_running = broker.is_running()
    with console.status(f"starting the local Kafka broker on 127.0.0.1:{args.port} ..."):
        args.bootstrap_servers = broker.start()
    try:
        yield broker
    finally:
        if not was_running:
            broker.stop()


@contextmanager
def soak_model(name: str) -> Iterator[dict[str, Any]]:
    """Settings overrides for ``--model``: tiny is a random 2-layer BERT (``workers.testing``) that
    costs almost nothing, so the soak measures the data plane; default is the shipped model."""
    if name == "default":
        yield {}
        return
    from workers.testing import save_random_head, save_tiny_bert

    root = Path(tempfile.mkdtemp(prefix="clstream-soak-model-"))
    try:
        encoder = save_tiny_bert(root / "encoder")
        yield {"model__encoder": encoder, "model__head": save_random_head(root / "head", encoder)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- command line ------------------------------------------------------------------------------------


def run_soak(args: argparse.Namespace, make_settings: Callable[..., Settings]) -> int:
    """``clstream soak``; ``make_settings(**overrides)`` gives the settings of the command line with
    the run's own topics and model."""
    from workers.logs import configure_logging

    console = Console(soft_wrap=True)  # a log file's lines are not cut at 80 columns
    configure_logging(args.log_level or "WARNING", "console")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    modes = MODES if args.soak_delivery == "both" else (args.soak_delivery,)
    with local_broker(args, console) as broker, soak_model(args.model) as model:
        if args.outage_sweep:
            from pipelines.soak.outage_sweep import run_sweep

            return run_sweep(args, broker, modes, model, console, make_settings)
        summaries = [soak_one(args, mode, model, console, make_settings) for mode in modes]
    return 0 if all(s["ok"] for s in summaries) else 1
