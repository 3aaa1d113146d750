"""What ``clstream soak`` must show, decided by pure functions of numbers the harness measured.

- ``duplicate_bound``: the duplicates an at-least-once run may show, a formula fixed before the
  run: in-flight credit (``max_inflight_batches`` × ``max_batch_records``) × members hit by the
  faults. One SIGKILLed actor is one member hit; a broker outage hits every member. Exactly-once:
  0. It is the README's "at most the batches in flight per crashed actor".
- ``flatness_windows`` and ``memory_flat``: "flat memory" is the peak RSS of the last 10 minutes
  at most 1.1 × the peak of the first 10 minutes after warm-up (issue 13), per process series.
- ``outage_timeouts`` and ``outage_plan``: broker pauses straddling each timeout an outage can outlast.
- ``kills_planned`` and ``pick_victim``: when the next SIGKILL is due, and which actor it hits.
- ``soak_checks`` and the Markdown renderers: the verdict and the report.

No I/O and no clock: ``pipelines/soak/runner.py`` and ``pipelines/soak/outage_sweep.py`` pass the numbers in.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from schemas.settings import Settings, WorkerSettings

Delivery = Literal["at-least-once", "exactly-once"]

#: "Flat": the late peak may exceed the early one by at most this factor (issue 13's definition).
FLAT_TOLERANCE = 1.1
#: The windows the rule compares, for a run long enough to hold them (30 minutes: 5-15 and 20-30).
FLAT_WINDOW_S = 600.0
WARM_UP_S = 300.0


# -- duplicates --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DuplicateBound:
    """The most duplicates a run may show: ``credit × members_hit`` (0 for exactly-once)."""

    delivery: Delivery
    max_inflight_batches: int
    max_batch_records: int
    members_hit: int

    @property
    def credit(self) -> int:
        """Records one member may have delivered but not committed when it is hit."""
        return self.max_inflight_batches * self.max_batch_records

    @property
    def value(self) -> int:
        return 0 if self.delivery == "exactly-once" else self.credit * self.members_hit

    @property
    def formula(self) -> str:
        if self.delivery == "exactly-once":
            return "exactly-once: 0"
        return (
            f"max_inflight_batches {self.max_inflight_batches} × max_batch_records "
            f"{self.max_batch_records} × members hit {self.members_hit} = {self.value:,}"
        )


def duplicate_bound(delivery: Delivery, workers: WorkerSettings, members_hit: int) -> DuplicateBound:
    return DuplicateBound(delivery, workers.max_inflight_batches, workers.max_batch_records, members_hit)


# -- memory ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlatnessWindows:
    """Seconds since the steady load began: warm-up, then the first and the last window compared."""

    warm_up_s: float
    first: tuple[float, float]
    last: tuple[float, float]


def flatness_windows(duration_s: float) -> FlatnessWindows:
    """The rule's windows: a 5-minute warm-up and 10-minute windows when the run holds them (30
    minutes: 5-15 against 20-30); a shorter run keeps the proportions (a sixth, then thirds)."""
    window = min(FLAT_WINDOW_S, duration_s / 3)
    warm_up = min(WARM_UP_S, duration_s / 6)
    return FlatnessWindows(warm_up, (warm_up, warm_up + window), (duration_s - window, duration_s))


@dataclass(frozen=True)
class FlatnessVerdict:
    series: str
    first_peak_bytes: int | None
    last_peak_bytes: int | None
    tolerance: float = FLAT_TOLERANCE

    @property
    def ratio(self) -> float | None:
        if not self.first_peak_bytes or self.last_peak_bytes is None:
            return None
        return self.last_peak_bytes / self.first_peak_bytes

    @property
    def ok(self) -> bool:
        return self.ratio is not None and self.ratio <= self.tolerance

    @property
    def detail(self) -> str:
        if self.first_peak_bytes is None or self.last_peak_bytes is None:
            return "no samples in a window"
        return (
            f"last-window peak {_mb(self.last_peak_bytes)} vs first-window peak "
            f"{_mb(self.first_peak_bytes)} (×{self.ratio:.3f}, at most ×{self.tolerance})"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio, "ok": self.ok}


def memory_flat(
    series: str,
    samples: Iterable[tuple[float, int]],
    windows: FlatnessWindows,
    tolerance: float = FLAT_TOLERANCE,
) -> FlatnessVerdict:
    """Judge one series of ``(seconds since the steady load began, RSS bytes)`` samples."""
    samples = list(samples)

    def peak(window: tuple[float, float]) -> int | None:
        inside = [rss for at, rss in samples if window[0] <= at <= window[1]]
        return max(inside) if inside else None

    return FlatnessVerdict(series, peak(windows.first), peak(windows.last), tolerance)


# -- faults ------------------------------------------------------------------------------------


def kills_planned(duration_s: float, every_s: float) -> int:
    """SIGKILLs at ``every_s``, ``2 × every_s`` ... strictly before the end of the steady load."""
    return max(0, math.ceil(duration_s / every_s) - 1)


@dataclass(frozen=True)
class Candidate:
    """What the victim choice needs to know of one actor."""

    name: str
    slot: int
    running: bool
    consumed: int


def pick_victim(actors: Iterable[Candidate]) -> str | None:
    """The running actor in the highest slot that has consumed something; None if there is none.

    Always the highest slot, so that with two or more slots the actor of slot 0 lives through
    the whole run and its memory series is one process, not a chain of replacements."""
    running = [a for a in actors if a.running and a.consumed > 0]
    return max(running, key=lambda a: (a.slot, a.name)).name if running else None


@dataclass(frozen=True)
class Timeout:
    name: str
    seconds: float


def delivery_timeout_ms(settings: Settings) -> int:
    """The producers' ``delivery_timeout_ms``, as ``workers.kafka_io`` sets it (a unit test checks
    the formula against the producer it builds)."""
    return max(
        int(settings.workers.produce_timeout_s * 1000),
        settings.kafka.request_timeout_ms + settings.workers.producer_linger_ms + 1_000,
    )


def outage_timeouts(settings: Settings) -> list[Timeout]:
    """The timeouts a broker outage can outlast, in seconds: the Kafka clients' four, then the
    driver's two that watch actors through it (an actor that does not answer for the health
    timeout is replaced; lag standing for the stall timeout gets its owners replaced)."""
    timeouts = [
        Timeout("workers.session_timeout_ms", settings.workers.session_timeout_ms / 1000),
        Timeout("kafka.request_timeout_ms", settings.kafka.request_timeout_ms / 1000),
        Timeout("producer delivery_timeout_ms", delivery_timeout_ms(settings) / 1000),
        Timeout("workers.transaction_timeout_ms", settings.workers.transaction_timeout_ms / 1000),
        Timeout("driver.health_timeout_s", settings.driver.health_timeout_s),
    ]
    if settings.driver.stall_timeout_s is not None:
        timeouts.append(Timeout("driver.stall_timeout_s", settings.driver.stall_timeout_s))
    return timeouts


@dataclass(frozen=True)
class Outage:
    seconds: float
    #: How the length stands to each timeout, e.g. "1.5 × kafka.request_timeout_ms (30 s)".
    straddles: tuple[str, ...]
    capped: bool = False


def outage_plan(
    timeouts: Sequence[Timeout],
    factors: Sequence[float] = (0.5, 1.5),
    cap_s: float = 120.0,
    merge_within: float = 0.05,
) -> list[Outage]:
    """Pause lengths ``factor × timeout`` for every pair, capped at ``cap_s``, shortest first.

    Lengths within ``merge_within`` of each other are one outage (the longest of them): with the
    defaults the request and delivery timeouts are 30 and 31 s, and 15 s against 15.5 s tells
    nothing new. Every timeout is listed with the ratio the outage actually has to it."""
    lengths = sorted({min(cap_s, t.seconds * f) for t in timeouts for f in factors})
    groups: list[list[float]] = []
    for length in lengths:
        if groups and length <= groups[-1][0] * (1 + merge_within):
            groups[-1].append(length)
        else:
            groups.append([length])
    plan = []
    for group in groups:
        seconds = round(max(group), 1)
        straddles = tuple(
            f"{seconds / t.seconds:.2g} × {t.name} ({t.seconds:g} s)"
            for t in timeouts
            if any(math.isclose(min(cap_s, t.seconds * f), length) for f in factors for length in group)
        )
        capped = seconds >= cap_s and any(t.seconds * f > cap_s for t in timeouts for f in factors)
        plan.append(Outage(seconds, straddles, capped))
    return plan


# -- the verdict -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyCount:
    """Input ids against their copies in the output and the DLQ (an id may be sent twice)."""

    input_records: int
    output_records: int
    dlq_records: int
    lost: int
    #: Extra copies: an id that came out three times, sent once, counts 2.
    duplicates: int
    #: Copies of ids the input does not have.
    unexpected: int
    #: Output or DLQ values without a readable id (counted, never matched).
    unreadable: int


def count_copies(
    inputs: Counter[str | None], outputs: Counter[str | None], dlq: Counter[str | None]
) -> CopyCount:
    """Compare by id: lost = copies missing, duplicates = copies beyond how often the id was sent."""
    copies = outputs + dlq
    sent = {i: n for i, n in inputs.items() if i is not None}
    return CopyCount(
        input_records=sum(inputs.values()),
        output_records=sum(outputs.values()),
        dlq_records=sum(dlq.values()),
        lost=sum(max(0, n - copies[i]) for i, n in sent.items()),
        duplicates=sum(max(0, n - sent[i]) for i, n in copies.items() if i in sent),
        unexpected=sum(n for i, n in copies.items() if i is not None and i not in sent),
        unreadable=copies[None],
    )


@dataclass(frozen=True)
class ReaderCount:
    """One reader's account of the run: input records, and what it found missing or repeated."""

    reader: str
    input_records: int
    lost: int
    duplicates: int
    #: Other failures this reader judges (verify: unexpected, mismatched; exactly-once: in_both...).
    other_failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def soak_checks(
    readers: Sequence[ReaderCount],
    bound: DuplicateBound,
    memory: Sequence[FlatnessVerdict],
    kills: tuple[int, int],
) -> list[Check]:
    """Every check of one soak run. ``kills`` is (done, planned): a fault not injected fails too."""
    checks = []
    for r in readers:
        lost = Check(
            f"{r.reader}: 0 lost", r.lost == 0 and r.input_records > 0, f"{r.lost:,} of {r.input_records:,}"
        )
        checks.append(lost)
        checks.append(
            Check(
                f"{r.reader}: duplicates within the bound",
                r.duplicates <= bound.value,
                f"{r.duplicates:,} ≤ {bound.formula}",
            )
        )
        if r.other_failures:
            checks.append(Check(f"{r.reader}: nothing else wrong", False, ", ".join(r.other_failures)))
    for verdict in memory:
        checks.append(Check(f"memory flat: {verdict.series}", verdict.ok, verdict.detail))
    done, planned = kills
    checks.append(Check("every planned SIGKILL done", done == planned, f"{done} of {planned}"))
    return checks


def _mb(value: float) -> str:
    return f"{value / 1024**2:,.0f} MB"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def soak_markdown(summary: dict[str, Any]) -> str:
    """The Markdown report of one soak run, from its JSON summary."""
    s = summary
    lines = [
        f"# clstream soak, {s['delivery']}: {'PASSED' if s['ok'] else 'FAILED'}",
        "",
        f"Command: `{s['command']}`",
        "",
        *_table(
            ["", ""],
            [
                (
                    "steady load",
                    f"{s['minutes']:g} min at {s['rate_per_s']:,.1f} records/s ({s['rate_source']})",
                ),
                ("measured capacity", _opt(s.get("capacity_per_s"), "{:,.1f} records/s")),
                ("model", s["model"]),
                ("actors × partitions", f"{s['actors']} × {s['partitions']}"),
                ("SIGKILLs", f"{s['kills_done']} of {s['kills_planned']} (every {s['kill_every_s']:g} s)"),
                ("actors replaced", s["replaced"]),
                ("records produced", f"{s['produced']:,}"),
                ("duplicate bound", s["duplicate_bound"]["formula"]),
                (
                    "flatness windows (s)",
                    f"first {_span(s['windows']['first'])}, last {_span(s['windows']['last'])}",
                ),
                ("took", f"{s['took_s']:,.0f} s"),
            ],
        ),
        "",
        "## Checks",
        "",
        *_table(["check", "result", "detail"], ((c["name"], _ok(c["ok"]), c["detail"]) for c in s["checks"])),
        "",
        "## Readers (read_committed)",
        "",
        *_table(
            ["reader", "input records", "lost", "duplicates"],
            (
                (r["reader"], f"{r['input_records']:,}", f"{r['lost']:,}", f"{r['duplicates']:,}")
                for r in s["readers"]
            ),
        ),
        "",
        "## SIGKILLs",
        "",
        *_table(
            ["at (s)", "actor", "slot", "pid"],
            ((f"{k['at_s']:.0f}", k["actor"], k["slot"], k["pid"]) for k in s["kills"]),
        ),
        "",
    ]
    if s.get("plot"):
        lines += [f"![RSS, throughput and kills]({s['plot']})", ""]
    return "\n".join(lines)


def sweep_markdown(summary: dict[str, Any]) -> str:
    """The Markdown report of an outage sweep, from its JSON summary."""
    s = summary
    lines = [
        f"# clstream outage sweep: {'PASSED' if s['ok'] else 'FAILED'}",
        "",
        f"Command: `{s['command']}`",
        "",
        "The broker's JVM is paused (SIGSTOP) for each length, then resumed (SIGCONT), with records "
        "flowing. After each outage the load is held, the backlog drained and `clstream verify` and "
        "kcat read everything so far (read_committed): lost counts since the mode's start, duplicates "
        "this outage's share. Times run from SIGCONT to the first driver tick that saw it (a tick "
        "every 0.5 s).",
        "",
        *_table(["timeout", "seconds"], ((t["name"], f"{t['seconds']:g}") for t in s["timeouts"])),
        "",
        *_table(
            [
                "mode",
                "outage (s)",
                "straddles",
                "first commit after resume (s)",
                "caught up (s)",
                "actors replaced",
                "stalls",
                "lost (verify/kcat)",
                "duplicates (verify/kcat; bound)",
                "result",
                "notes",
            ],
            (
                (
                    r["delivery"],
                    f"{r['outage_s']:g}" + (" (capped)" if r.get("capped") else ""),
                    "; ".join(r["straddles"]),
                    _opt(r["first_commit_s"], "{:.1f}", "none"),
                    _opt(r["caught_up_s"], "{:.1f}", "no"),
                    r["replaced"],
                    r["stalls"],
                    f"{r['lost']}/{r.get('kcat_lost')}",
                    f"{r['duplicates']}/{r.get('kcat_duplicates')}; {r['bound']}",
                    _ok(r["ok"]),
                    "; ".join(r["notes"]),
                )
                for r in s["rows"]
            ),
        ),
        "",
    ]
    for mode in s.get("modes", []):
        lines += [f"- {mode['delivery']}: {mode['summary']}"]
    return "\n".join(lines) + "\n"


def _ok(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def _opt(value: float | None, fmt: str, missing: str = "-") -> str:
    return missing if value is None else fmt.format(value)


def _span(window: Sequence[float]) -> str:
    return f"{window[0]:.0f}-{window[1]:.0f}"
