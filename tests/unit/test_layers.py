"""Ports sit apart from their adapters: the loop and its ports load without the heavy libraries.

``workers.ports`` (``Source``, ``Sink``, ``TransactionalSink``, ``Classifier`` and the record
envelopes) and ``workers.loop`` (with what it imports: commits, decode, devices, schemas) are
checked in a fresh interpreter, since this test session has long imported torch and kafka-python.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "kafka", "ray", "transformers")


def test_ports_and_loop_import_no_heavy_library():
    code = (
        "import workers.ports, workers.loop; import sys, json; "
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
