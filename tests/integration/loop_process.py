"""One consumer loop in a process of its own, for tests that measure that process's memory.

``python -m tests.integration.loop_process SETTINGS_JSON RECORDS TIMEOUT_S OUT_JSON`` builds a
``KafkaSource``, the sink of the settings' delivery mode and a ``ClassifierLoop`` with the
``KeywordClassifier``, runs the loop until it has committed ``RECORDS`` records (or ``TIMEOUT_S``
passed), and writes to ``OUT_JSON``: the loop's stats, ``baseline_kib`` (the process's peak RSS
once everything is built, before the first poll) and ``peak_kib`` (its peak RSS at the end). The
test's own memory (building a large batch, say) never counts: the peak is read from
``/proc/self/status`` (``VmHWM``, this process's own address space), not ``ru_maxrss``, which on
Linux starts a spawned process at its parent's peak.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from schemas.settings import Settings
from tests.integration.support import keyword_loop


def main(settings_json: str, records: int, timeout_s: float, out: Path) -> None:
    settings = Settings.load(overrides=json.loads(settings_json))
    loop = keyword_loop(settings, "loop-process")
    baseline_kib = _peak_rss_kib()
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while loop.stats.consumed < records and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.1)
    stop.set()
    thread.join(30)
    loop.source.close()
    loop.sink.close()
    result = {
        "stats": loop.stats.snapshot(),
        "baseline_kib": baseline_kib,
        "peak_kib": _peak_rss_kib(),
    }
    out.write_text(json.dumps(result))


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status: peak RSS is measured on Linux only")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]))
