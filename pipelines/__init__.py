"""The control plane, the operator commands, the offline tools, the benchmark and the soak, one
subpackage each (see docs/architecture.md)."""

import os as _os

# Ray's C++ failure-signal handler catches SIGTERM, then aborts the process a few seconds later
# (its watchdog alarm), killing the driver in the middle of a drain. The driver handles SIGTERM
# itself. Ray reads this when it is imported, so it is set before anything here imports ray.
_os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
