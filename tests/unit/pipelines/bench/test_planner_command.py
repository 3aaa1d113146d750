"""``python -m pipelines.bench.planner``: every call size and device reported, with its plan's price."""

from __future__ import annotations

import re

from pipelines.bench.planner import CALLS, main


def test_the_planner_command_prices_every_call_size_and_a_larger_call_pads_less(capsys):
    assert main(["--tweets", "600", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    pattern = re.compile(
        r"(cpu|cuda) defaults .*calls of (\d+): [\d.]+ µs a tweet; padding ([\d.]+), (\d+) passes, "
        r"price ([\d.]+) slots a real token"
    )
    rows = {(m[1], int(m[2])): (float(m[3]), int(m[4]), float(m[5])) for m in map(pattern.match, lines) if m}
    assert set(rows) == {(device, call) for device in ("cpu", "cuda") for call in CALLS}
    for device in ("cpu", "cuda"):
        padding = [rows[device, call][0] for call in CALLS]
        price = [rows[device, call][2] for call in CALLS]
        assert all(0 < p <= 1 for p in padding)
        # Planning more texts at once never costs more: each call's plan is optimal for it.
        assert price == sorted(price, reverse=True), (device, price)
        assert price[-1] >= 1 / padding[-1]
    assert any(line.startswith("pad_group over those plans") for line in lines)
