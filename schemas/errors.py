"""clstream's exceptions. Every message says what was wrong and, where it can, what to do.

ClstreamError
├── ModelLoadError          a model or head could not be loaded
│   └── UnsafeCheckpointError   pickle (.bin/.pt) weights refused; safetensors only
├── BrokerError             the local Kafka broker could not be set up, started or reached
├── DeliveryError           output/DLQ records were not acknowledged; the batch is not committed
│   └── FencedError             a transaction refused: this member's group generation is stale
├── CommitError             offsets not committed (``retriable`` while the group rebalances)
├── ActorFailedError        a classifier actor stopped with an error (the driver replaces it)
└── FatalWorkerError        this actor cannot go on safely; it stops and the driver replaces it
    ├── ProducerFencedError     a newer producer owns this transactional id: this one is a zombie
    └── DeviceError             the model's device failed (out of memory, CUDA error), not a record
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


class FatalWorkerError(ClstreamError):
    """The actor must stop: going on could break a guarantee or would fail every batch alike.
    Its batch in hand stays uncommitted (read again by the next owner); the driver replaces it."""


class ProducerFencedError(FatalWorkerError):
    """A newer producer took this transactional id (this actor's replacement, or another driver's
    actor with the same id): this one is a zombie and must never re-initialize, which would fence
    the live one in turn."""


class DeviceError(FatalWorkerError):
    """The model failed for a reason that is not the records' (out of device memory, a CUDA
    error) even on the smallest batch: no record is dead-lettered for it."""
