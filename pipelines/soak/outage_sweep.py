"""``clstream soak --outage-sweep``: broker outages straddling every timeout, in each mode.

For each delivery mode, on fresh topics of the soak's own broker: the load runs at half of the
measured capacity (or ``--rate``); then, for each length of ``soak_rules.outage_plan`` (by
default 0.5 × and 1.5 × the session, request, delivery and transaction timeouts of the Kafka
clients and the driver's health and stall timeouts, capped at ``--max-outage-s``), shortest first:

1. wait for a steady pipeline (every actor running, lag within ten seconds of load);
2. SIGSTOP the broker's JVM for the length, then SIGCONT it (a timer thread, so a driver tick
   that blocks on the silent broker cannot stretch the outage), with the load still sending;
3. time to recover: from SIGCONT to the first tick whose committed offsets passed those seen
   before the pause; caught up: until the lag is back within its level before the pause;
4. hold the load, drain the backlog, and account with ``clstream verify`` and kcat
   (read_committed): 0 lost; duplicates, this outage's share, within the bound (exactly-once 0;
   at-least-once: the in-flight credit × every member, since an outage hits them all).

Actors the driver replaced meanwhile, with how they ended, and stalls the watchdog acted on are
in each row: an outage that kills actors, or leaves fewer running, is reported as it is.
Writes ``outage-sweep.json`` and ``outage-sweep.md`` to ``--out``; exit 1 if any row failed.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from pipelines.kafka_tools.admin import run_topics
from pipelines.kafka_tools.broker import LocalBroker
from pipelines.soak.pipeline import LoadedPipeline, SoakError, reader_counts
from pipelines.soak.rules import (
    Delivery,
    Outage,
    duplicate_bound,
    outage_plan,
    outage_timeouts,
    sweep_markdown,
)
from schemas.errors import ClstreamError
from schemas.settings import Settings

#: A steady pipeline's lag: at most this many seconds of load waiting.
STEADY_LAG_S = 10.0


class _Pause(threading.Thread):
    """SIGSTOP the broker now, SIGCONT it ``seconds`` later; records both times (monotonic)."""

    def __init__(self, broker: LocalBroker, seconds: float) -> None:
        super().__init__(name="clstream-outage", daemon=True)
        self.broker = broker
        self.seconds = seconds
        self.paused_at: float | None = None
        self.resumed_at: float | None = None

    def run(self) -> None:
        self.broker.pause()
        self.paused_at = time.monotonic()
        try:
            time.sleep(self.seconds)  # the outage itself
        finally:
            self.broker.resume()
            self.resumed_at = time.monotonic()


def _outage(
    pipeline: LoadedPipeline,
    broker: LocalBroker,
    outage: Outage,
    delivery: Delivery,
    rate: float,
    duplicates_before: tuple[int, int],
    recovery_timeout_s: float,
    console: Console,
) -> dict[str, Any]:
    driver, workers = pipeline.driver, pipeline.settings.workers
    steady_lag = max(
        workers.max_inflight_batches * workers.max_batch_records * workers.count, int(rate * STEADY_LAG_S)
    )
    notes: list[str] = []
    try:
        pipeline.tick_until(
            lambda v: v.running == workers.count and v.lag.total <= steady_lag, 300, "a steady pipeline"
        )
    except SoakError:
        notes.append("not steady before the pause")
    before = driver.tick()
    ends_before, stalls_before = len(driver.ends), len(driver.stalls)
    pause = _Pause(broker, outage.seconds)
    console.print(f"  {delivery}: broker paused for {outage.seconds:g} s ({'; '.join(outage.straddles)})")
    pause.start()
    first_commit = caught_up = None
    try:
        view = pipeline.tick_until(
            lambda v: pause.resumed_at is not None and v.lag.total_committed > before.lag.total_committed,
            outage.seconds + recovery_timeout_s,
            "the first commit after the outage",
        )
        first_commit = time.monotonic() - pause.resumed_at  # type: ignore[operator]
        view = pipeline.tick_until(
            lambda v: v.lag.total <= max(before.lag.total, steady_lag),
            recovery_timeout_s,
            "the lag to recover",
        )
        caught_up = time.monotonic() - pause.resumed_at  # type: ignore[operator]
    except SoakError as exc:
        notes.append(str(exc).split(":", 1)[0])
    pause.join()
    view = driver.last_view or before
    if view.running < workers.count:
        notes.append(f"{view.running} of {workers.count} actors running after recovery")
    ends = driver.ends[ends_before:]
    row: dict[str, Any] = {
        "delivery": delivery,
        "outage_s": outage.seconds,
        "straddles": list(outage.straddles),
        "capped": outage.capped,
        "first_commit_s": first_commit,
        "caught_up_s": caught_up,
        "replaced": len(ends),
        "replaced_actors": [asdict(e) for e in ends],
        "stalls": len(driver.stalls) - stalls_before,
        "running_after": view.running,
    }
    for end in ends:
        notes.append(f"{end.name} {end.state}: {end.error}" if end.error else f"{end.name} {end.state}")
    bound = duplicate_bound(delivery, workers, members_hit=workers.count)
    try:
        pipeline.settle()
        report, counted = pipeline.readers(delivery)
        readers = reader_counts(report, counted)
        # Both readers' counts are since the mode's start; this outage's share is the difference.
        duplicates = report.duplicates - duplicates_before[0]
        kcat_duplicates = counted.duplicates - duplicates_before[1]
        row.update(
            lost=report.lost,
            duplicates=duplicates,
            duplicates_total=(report.duplicates, counted.duplicates),
            kcat_lost=counted.lost,
            kcat_duplicates=kcat_duplicates,
            readers=[asdict(r) for r in readers],
            other_failures=[f for r in readers for f in r.other_failures],
        )
        notes.extend(row["other_failures"])
        accounted = report.lost == counted.lost == 0 and not row["other_failures"]
        within = max(duplicates, kcat_duplicates) <= bound.value
    except ClstreamError as exc:
        notes.append(f"not accounted: {exc}")
        row.update(
            lost=None,
            duplicates=None,
            kcat_lost=None,
            kcat_duplicates=None,
            duplicates_total=duplicates_before,
        )
        accounted = within = False
    recovered = first_commit is not None and caught_up is not None and view.running == workers.count
    row.update(
        bound=bound.value, bound_formula=bound.formula, notes=notes, ok=accounted and within and recovered
    )
    verdict = "pass" if row["ok"] else "FAIL"
    console.print(
        f"    first commit after {_s(first_commit)}, caught up after {_s(caught_up)}, replaced {len(ends)}, "
        f"lost {row['lost']}, duplicates {row['duplicates']} (bound {bound.value}): {verdict}"
    )
    return row


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def _sweep_mode(
    args: argparse.Namespace,
    broker: LocalBroker,
    delivery: Delivery,
    model: dict[str, Any],
    console: Console,
    make_settings: Callable[..., Settings],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    run_id = uuid.uuid4().hex[:8]
    settings = make_settings(
        **run_topics("sweep", run_id),
        workers__delivery=delivery,
        metrics__port=0,
        # Recovery times are read at the driver's ticks: tick every half second, not every two.
        driver__watch_interval_s=0.5,
        **model,
    )
    timeouts = outage_timeouts(settings)
    plan = outage_plan(timeouts, args.outage_factors, args.max_outage_s)
    console.rule(f"clstream outage sweep: {delivery}")
    console.print(
        "timeouts: " + ", ".join(f"{t.name} {t.seconds:g} s" for t in timeouts) + "\n"
        "outages: " + ", ".join(f"{o.seconds:g} s" for o in plan)
    )
    pipeline = LoadedPipeline(settings, args.partitions)
    rows: list[dict[str, Any]] = []
    mode: dict[str, Any] = {"delivery": delivery, "timeouts": [asdict(t) for t in timeouts]}
    try:
        pipeline.start()
        if args.rate is not None:
            rate = args.rate
        else:
            console.print(f"measuring capacity: saturating the pipeline for {args.capacity_s:g} s ...")
            capacity = pipeline.measure_capacity(args.capacity_s)
            rate = capacity / 2
            mode["capacity_per_s"] = capacity
            console.print(f"capacity {capacity:,.1f} records/s; records flow at half: {rate:,.1f} records/s")
            pipeline.settle()
        mode["rate_per_s"] = rate
        duplicates = (0, 0)
        for outage in plan:
            pipeline.load.pace(rate)
            row = _outage(
                pipeline, broker, outage, delivery, rate, duplicates, args.recovery_timeout_s, console
            )
            rows.append(row)
            duplicates = row["duplicates_total"]
            if row["lost"] is None:
                break  # the pipeline could not be accounted for: later outages would tell nothing
    except Exception as exc:  # noqa: BLE001 - a mode that breaks still reports its rows
        mode["error"] = f"{type(exc).__name__}: {exc}"
        console.print(f"[bold red]the sweep did not finish in {delivery}:[/] {mode['error']}")
        if not isinstance(exc, ClstreamError):
            console.print_exception()
    finally:
        pipeline.close(delete_topics=not args.keep_topics)
    ok = "error" not in mode and len(rows) == len(plan) and all(r["ok"] for r in rows)
    mode.update(
        ok=ok,
        summary=mode.get("error") or f"{sum(r['ok'] for r in rows)} of {len(plan)} outages passed",
    )
    return rows, mode


def run_sweep(
    args: argparse.Namespace,
    broker: LocalBroker | None,
    modes: tuple[Delivery, ...],
    model: dict[str, Any],
    console: Console,
    make_settings: Callable[..., Settings],
) -> int:
    if broker is None:
        raise SoakError(
            "the outage sweep pauses the broker's JVM, so it needs the local broker it starts itself: "
            "leave out --bootstrap-servers (--port picks the port)"
        )
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    results = []
    for delivery in modes:
        mode_rows, mode = _sweep_mode(args, broker, delivery, model, console, make_settings)
        rows += mode_rows
        results.append(mode)
    summary = {
        "command": _command(args, modes),
        "ok": all(m["ok"] for m in results),
        "model": args.model,
        "timeouts": results[0]["timeouts"] if results else [],
        "modes": results,
        "rows": rows,
        "took_s": time.monotonic() - started,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "outage-sweep.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "outage-sweep.md").write_text(sweep_markdown(summary))
    verdict = "[green]PASSED[/]" if summary["ok"] else "[bold red]FAILED[/]"
    console.print(f"outage sweep: {verdict}; wrote {out / 'outage-sweep'}.{{json,md}}")
    return 0 if summary["ok"] else 1


def _command(args: argparse.Namespace, modes: tuple[Delivery, ...]) -> str:
    delivery = "both" if len(modes) > 1 else modes[0]
    factors = ",".join(f"{f:g}" for f in args.outage_factors)
    command = (
        f"clstream soak --outage-sweep --delivery {delivery} --model {args.model} "
        f"--outage-factors {factors} --max-outage-s {args.max_outage_s:g}"
    )
    return command + (f" --rate {args.rate:g}" if args.rate is not None else "")
