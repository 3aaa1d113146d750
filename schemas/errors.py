"""clstream's exceptions. Every message says what was wrong and, where it can, what to do.

ClstreamError
├── ModelLoadError          a model or head could not be loaded
│   └── UnsafeCheckpointError   pickle (.bin/.pt) weights refused; safetensors only
├── BrokerError             the local Kafka broker could not be set up, started or reached
├── DeliveryError           output/DLQ records were not acknowledged; the batch is not committed
│   └── FencedError             a transaction refused: this member's group generation is stale
├── CommitError             offsets not committed (``retriable`` while the group rebalances)
├── DecompressionBombError  an input batch would decompress past workers.max_decompressed_batch_bytes
├── ActorFailedError        a classifier actor stopped with an error (the driver replaces it)
├── MissingSecretError      a secret of the driver's settings is not in the actor's environment
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


class DecompressionBombError(ClstreamError):
    """An input record batch would decompress to more than ``max_bytes``
    (``workers.max_decompressed_batch_bytes``); decompressing stopped there, before any record.

    ``first_offset`` and ``last_offset``: the batch's offsets, where its format says (message
    format v2 says both; v0 and v1 only the last; None from a codec, which knows no offsets)."""

    def __init__(
        self, max_bytes: int, first_offset: int | None = None, last_offset: int | None = None
    ) -> None:
        if first_offset is not None and last_offset is not None:
            batch = f"the record batch at offsets {first_offset}-{last_offset}"
        elif last_offset is not None:
            batch = f"the record batch ending at offset {last_offset}"
        else:
            batch = "a record batch"
        super().__init__(
            f"{batch} decompresses to more than workers.max_decompressed_batch_bytes={max_bytes}; "
            "it was not read, so no dead letter holds its bytes: raise the setting if batches "
            "this large are expected"
        )
        self.max_bytes, self.first_offset, self.last_offset = max_bytes, first_offset, last_offset


class ActorFailedError(ClstreamError):
    pass


class MissingSecretError(ClstreamError):
    """The driver's settings hold a secret that this actor's process environment lacks: secrets
    never travel with an actor's arguments, each actor reads them from its node's environment."""


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
