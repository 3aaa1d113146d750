"""``clstream soak`` end to end, shortened: the real broker and Ray, the tiny model, one SIGKILL.

The 30-minute runs and the outage sweep are ``make soak`` (docs/soak.md), never CI."""

from __future__ import annotations

import json

from pipelines.commands.cli import main
from tests.integration.support import topics_and_groups, wait_until


def test_a_short_exactly_once_soak_with_one_kill_loses_and_repeats_nothing(
    broker, ray_cluster, tmp_path, monkeypatch
):
    # A killed member's partitions move after 6 s, not the default 30 (the broker's minimum).
    monkeypatch.setenv("CLSTREAM_WORKERS__SESSION_TIMEOUT_MS", "6000")
    monkeypatch.setenv("CLSTREAM_DRIVER__WATCH_INTERVAL_S", "0.5")
    out = tmp_path / "soak"
    before = topics_and_groups(broker, "soak-")
    code = main(
        [
            "soak", "--minutes", "0.6", "--kill-every-s", "20", "--delivery", "exactly-once",
            "--model", "tiny", "--capacity-s", "4", "--sample-every-s", "2",
            "--bootstrap-servers", broker, "--out", str(out),
        ]
    )  # fmt: skip
    summary = json.loads((out / "soak-exactly-once.json").read_text())
    failed = [f"{c['name']}: {c['detail']}" for c in summary["checks"] if not c["ok"]]
    assert code == 0 and summary["ok"], failed
    assert (summary["kills_planned"], summary["kills_done"]) == (1, 1)
    assert summary["replaced"] >= 1 and summary["capacity_per_s"] > 0
    assert summary["rate_per_s"] == summary["capacity_per_s"] / 2
    assert [(r["reader"], r["lost"], r["duplicates"]) for r in summary["readers"]] == [
        ("clstream verify", 0, 0),
        ("kcat (read_committed)", 0, 0),
    ]
    assert {r["input_records"] for r in summary["readers"]} == {summary["produced"]}
    assert {m["series"] for m in summary["memory"]} == {"driver", "actor slot 0", "actor slot 1"}
    assert (out / "soak-exactly-once.md").read_text().startswith("# clstream soak, exactly-once: PASSED")
    assert (out / "soak-exactly-once.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The run's topics and consumer groups are deleted at the end (no --keep-topics).
    wait_until(lambda: topics_and_groups(broker, "soak-") <= before, 30, "the run's topics and groups to go")
