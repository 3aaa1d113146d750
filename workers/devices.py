"""Failures of the model's device, told apart from failures of the records, without importing torch.

The loop must not load torch (``workers.ports``), yet a classifier on a GPU reports an
out-of-memory or CUDA error as torch's own exception. These functions look torch up among the
modules already imported: an exception of one of torch's classes can only exist once torch is
imported, so the check is by type and never the reason torch gets loaded. Without torch in the
process no exception is a device failure and there is no device memory to release.
"""

from __future__ import annotations

import sys


def device_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes of device failures: out of device memory, a CUDA or other
    accelerator error (a text is truncated to ``max_length`` tokens, so no single record can
    need more than a healthy device has). Python's own ``MemoryError`` is not among them: it
    comes from a host allocation, which a pathological record can cause, and such a record goes
    to the DLQ like any other. Empty while torch is not imported."""
    torch = sys.modules.get("torch")
    if torch is None:
        return ()
    return (
        torch.OutOfMemoryError,
        *((torch.AcceleratorError,) if hasattr(torch, "AcceleratorError") else ()),
    )


def is_device_failure(exc: BaseException) -> bool:
    """True when ``exc`` is the device's failure, not the records': split or retry, never dead-letter."""
    return isinstance(exc, device_error_types())


def release_device_memory() -> None:
    """Give cached blocks back to the device before a retry (a no-op without torch or CUDA)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
