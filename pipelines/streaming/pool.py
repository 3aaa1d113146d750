"""The ``ActorPool`` port: how the driver starts, watches, drains and stops its actors.

The driver (``pipelines/streaming/driver.py``) names each actor and decides what happens to it;
a pool carries that out on some cluster. ``RayActorPool`` (``pipelines/streaming/ray_pool.py``)
is the real one and the only place the control plane touches Ray; ``FakeActorPool``
(``pipelines/streaming/testing.py``) scripts answers, deaths and hangs for unit tests of the
driver's tick. This module imports nothing heavy.

Actors are named by the driver (unique for the driver's lifetime); a name the pool does not
know, or no longer knows after ``kill``, is a bug in the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from workers.report import ActorReport


class ActorKind(Enum):
    """What an actor does; a pool knows what to run and what resources to reserve for each."""

    #: ``workers.actor.ClassifierActor``: one consumer-group member classifying the input topic.
    CLASSIFIER = "classifier"


@dataclass(frozen=True)
class ActorSpec:
    name: str
    #: Stable across replacements: a replacement reuses its predecessor's transactional id.
    slot: int
    kind: ActorKind = ActorKind.CLASSIFIER


class ActorGone(Exception):
    """The actor's process is gone (crashed, killed, or its node lost): it will never answer."""

    def __init__(self, name: str, error: str) -> None:
        super().__init__(f"{name}: {error}")
        self.name = name
        #: The class name of what the pool saw (e.g. Ray's ``RayActorError``).
        self.error = error


class ActorPool(Protocol):
    """Starts and stops actors and relays their reports. Called from the driver's thread only."""

    def open(self) -> None:
        """Connect to the cluster (or start a local one); before any other call."""

    def close(self) -> None:
        """Release the cluster connection; stops a local cluster that ``open`` started."""

    def describe(self) -> Mapping[str, Any]:
        """The cluster's resources, for the driver's start-up log line."""

    def capacity(self, kind: ActorKind) -> int:
        """How many actors of ``kind`` the cluster can host in total (not counting running ones).
        On a cluster that grows on demand (``autoscale.elastic``), as many as may be asked for."""

    def request_capacity(self, kind: ActorKind, count: int) -> None:
        """Tell the cluster's autoscaler that ``count`` actors of ``kind`` are wanted in total, so a
        cluster that grows on demand adds the nodes they need. Never blocks; never raises."""

    def placed(self, name: str) -> bool:
        """Whether the cluster has found the actor a place (its process exists, or existed). An
        actor not placed waits for resources: it is not unresponsive, and replacing it would not help."""

    def spawn(self, spec: ActorSpec) -> None:
        """Create the actor and start it. Returns at once: it loads its model in the background."""

    def report(self, name: str) -> ActorReport | None:
        """The actor's report if one arrived since the last call, else None. Never blocks (waits at
        most ~50 ms): the request stays outstanding, one at a time per actor, and the next call
        collects its answer. After ``drain``, the report it answers is the drain's final one.
        Raises ``ActorGone`` when the actor has died."""

    def drain(self, name: str, timeout_s: float) -> None:
        """Ask the actor to finish and commit its batch in hand and leave the group, within
        ``timeout_s``. Returns at once; ``report`` or ``await_reports`` collects the outcome."""

    def await_reports(self, names: Sequence[str], timeout_s: float) -> Mapping[str, ActorReport | ActorGone]:
        """Block up to ``timeout_s`` for the outstanding reports of ``names`` (a drain's, after
        ``drain``). A name missing from the result did not answer in time."""

    def kill(self, name: str) -> None:
        """Stop the actor's process now, without a goodbye; it is forgotten. Never raises."""

    def kafka_state(self, names: Sequence[str], timeout_s: float) -> list[dict[str, Any]]:
        """Each named actor's own view of its consumer (a stall report's evidence); what does not
        answer within ``timeout_s`` is left out."""
