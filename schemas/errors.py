"""clstream's exceptions. Every message says what was wrong and, where it can, what to do.

ClstreamError
├── ModelLoadError          a model or head could not be loaded
│   └── UnsafeCheckpointError   pickle (.bin/.pt) weights refused; safetensors only
├── BrokerError             the local Kafka broker could not be set up, started or reached
├── DeliveryError           output/DLQ records were not acknowledged; the batch is not committed
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


class CommitError(ClstreamError):
    def __init__(self, message: str, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class ActorFailedError(ClstreamError):
    pass
