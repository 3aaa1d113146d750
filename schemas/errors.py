"""clstream's exceptions. Every message says what was wrong and, where it can, what to do.

ClstreamError
├── ModelLoadError          a model or head could not be loaded
│   └── UnsafeCheckpointError   pickle (.bin/.pt) weights refused; safetensors only
├── BrokerError             the local Kafka broker could not be set up, started or reached
├── DeliveryError           output/DLQ records were not acknowledged; the batch is not committed
│   └── FencedError             a transaction refused: this member's group generation is stale
├── CommitError             offsets not committed (``retriable`` while the group rebalances)
└── ActorFailedError        a classifier actor stopped with an error (the driver replaces it)
"""

from __future__ import annotations


class ClstreamError(Exception):
    """Base class of every error clstream raises on purpose."""


class ModelLoadError(ClstreamError):
    pass


class UnsafeCheckpointError(ModelLoadError):
    pass


class BrokerError(ClstreamError):
    pass


class DeliveryError(ClstreamError):
    pass


class FencedError(DeliveryError):
    """A transaction was refused because this member's group generation is stale: its partitions
    may belong to another member now. Not retried; the batch is read again from the last commit."""


class CommitError(ClstreamError):
    def __init__(self, message: str, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class ActorFailedError(ClstreamError):
    pass
