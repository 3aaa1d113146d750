"""``RayActorPool``: the ``ActorPool`` on Ray, and the only module of the control plane that
imports Ray.

Each actor is ``ray.remote`` of its kind's plain class (``workers.actor.ClassifierActor``), on one
GPU share when the cluster has GPUs and the model is not pinned to the CPU, else on
``workers.cpus`` CPUs. Reports are outstanding Ray calls collected when ready, so one hung actor
cannot stall the driver's watch of the others. The actors' placement (node id, GPU ids) is read
inside each actor's process by ``_ray_placement`` and carried in its reports.

Secrets are not among an actor's arguments (``actor_arguments``): each actor reads them from
its node's environment. A local Ray started here inherits them from this process's environment
(``init_ray`` puts the driver's there); on a joined cluster (``driver.ray_address``) every node
must have them set, e.g. from a Kubernetes secret.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ray
import structlog
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from pipelines.streaming.pool import ActorGone, ActorKind, ActorSpec
from schemas.settings import Settings
from workers.actor import ClassifierActor
from workers.report import ActorReport, Placement

log = structlog.get_logger("clstream.driver")

#: How long ``report`` waits for an outstanding answer: long enough for a healthy actor's
#: answer to arrive within the tick it was asked on, short enough that hung ones cost little.
_REPORT_WAIT_S = 0.05
#: An answer that is ready is already in the object store: fetching it takes milliseconds.
_FETCH_TIMEOUT_S = 1.0

_ACTOR_CLASSES: dict[ActorKind, type] = {ActorKind.CLASSIFIER: ClassifierActor}


class RayActorPool:
    """Actors as Ray actors. ``open`` joins ``driver.ray_address`` or starts a local Ray (unless
    this process already did), and ``close`` stops only a Ray it started."""

    def __init__(self, settings: Settings, instance_id: str) -> None:
        self._settings = settings
        self._instance_id = instance_id
        self._handles: dict[str, Any] = {}
        #: Each actor's outstanding call: its object ref, and whether it is a drain.
        self._pending: dict[str, tuple[Any, bool]] = {}
        self._own_ray = False
        #: Each actor's readiness (``__ray_ready__``), and the actors known to be placed.
        self._ready: dict[str, Any] = {}
        self._placed: set[str] = set()
        #: ``--encoder``/``--head`` directories in the object store, for actors on other nodes.
        self._model_refs: dict[str, Any] = {}

    def open(self) -> None:
        if not ray.is_initialized():
            init_ray(self._settings)
            self._own_ray = True
        if cluster_address(self._settings):
            self._model_refs = _ship_model_dirs(self._settings)

    def close(self) -> None:
        if self._own_ray:
            ray.shutdown()
            self._own_ray = False

    def describe(self) -> Mapping[str, Any]:
        return dict(ray.cluster_resources())

    def capacity(self, kind: ActorKind) -> int:
        if self._settings.autoscale.elastic:
            return self._settings.autoscale.max_actors  # the cluster adds what they need
        resources = ray.cluster_resources()
        workers = self._settings.workers
        if self._on_gpu(resources):
            return int(resources.get("GPU", 0) / workers.gpu_fraction + 1e-9)
        return int(resources.get("CPU", 0) / workers.cpus + 1e-9)

    def request_capacity(self, kind: ActorKind, count: int) -> None:
        bundle = {"CPU": self._settings.workers.cpus}
        if self._on_gpu(ray.cluster_resources()):
            bundle["GPU"] = self._settings.workers.gpu_fraction
        try:
            from ray.autoscaler.sdk import request_resources

            # Replaces the previous request: the autoscaler keeps room for this many actors.
            request_resources(bundles=[bundle] * count)
        except Exception as exc:  # noqa: BLE001 - a hint to the autoscaler; the pending actors are demand too
            log.warning("could not tell the autoscaler the demand", error=f"{type(exc).__name__}: {exc}")
            return
        log.info("demand sent to the autoscaler", actors=count, bundle=bundle)

    def placed(self, name: str) -> bool:
        if name in self._placed:
            return True
        ready, _ = ray.wait([self._ready[name]], timeout=0)
        if ready:  # created (or failed to be: then its reports say so)
            self._placed.add(name)
        return bool(ready)

    def spawn(self, spec: ActorSpec) -> None:
        workers = self._settings.workers
        options: dict[str, Any] = {"num_cpus": workers.cpus, "max_restarts": 0, "max_concurrency": 4}
        if self._on_gpu(ray.cluster_resources()):
            options["num_gpus"] = workers.gpu_fraction
        actor_class: Any = ray.remote(_ACTOR_CLASSES[spec.kind]).options(**options)
        handle = actor_class.remote(
            *actor_arguments(self._settings, spec, self._instance_id), **self._model_refs
        )
        handle.start.remote()
        self._handles[spec.name] = handle
        # Resolves once Ray has placed the actor and run its constructor.
        self._ready[spec.name] = handle.__ray_ready__.remote()
        log.info(
            "actor spawned",
            actor=spec.name,
            slot=spec.slot,
            resources={k: v for k, v in options.items() if k.startswith("num_")},
        )

    def report(self, name: str) -> ActorReport | None:
        if name not in self._pending:
            self._pending[name] = (self._handles[name].report.remote(), False)
        ref, is_drain = self._pending[name]
        ready, _ = ray.wait([ref], timeout=_REPORT_WAIT_S)
        if not ready:
            return None
        del self._pending[name]
        try:
            report: ActorReport = ray.get(ref, timeout=_FETCH_TIMEOUT_S)
        except ActorUnavailableError:
            # Unreachable for now (its node is slow, or being declared dead): no answer this time.
            # A node that is gone for good turns this into ActorDiedError on a later ask.
            return None
        except (RayActorError, GetTimeoutError) as exc:
            raise ActorGone(name, type(exc).__name__) from exc
        except Exception as exc:
            if not is_drain:
                raise  # a health check that raised is a bug in the actor: let it be seen
            # It died while draining: its batch is uncommitted and will be read again.
            raise ActorGone(name, type(exc).__name__) from exc
        return report

    def drain(self, name: str, timeout_s: float) -> None:
        # Replaces an outstanding health check: the drain's answer is the one the driver awaits.
        self._pending[name] = (self._handles[name].drain.remote(timeout_s), True)

    def await_reports(self, names: Sequence[str], timeout_s: float) -> Mapping[str, ActorReport | ActorGone]:
        for name in names:
            if name not in self._pending:
                self._pending[name] = (self._handles[name].report.remote(), False)
        refs = {name: self._pending[name][0] for name in names}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        outcomes: dict[str, ActorReport | ActorGone] = {}
        for name, ref in refs.items():
            if ref not in ready:
                continue
            del self._pending[name]
            try:
                outcomes[name] = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a dead actor has nothing left to report
                outcomes[name] = ActorGone(name, type(exc).__name__)
        return outcomes

    def kill(self, name: str) -> None:
        self._pending.pop(name, None)
        self._ready.pop(name, None)
        self._placed.discard(name)
        handle = self._handles.pop(name, None)
        if handle is None:
            return
        try:
            ray.kill(handle, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - it may already be gone
            log.debug("kill failed", actor=name, error=type(exc).__name__)

    def kafka_state(self, names: Sequence[str], timeout_s: float) -> list[dict[str, Any]]:
        refs = [self._handles[name].kafka_state.remote() for name in names]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        states = []
        for ref in ready:
            try:
                states.append(ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - a dying actor has no state to give
                states.append({"error": type(exc).__name__})
        return states

    def handle(self, name: str) -> Any:
        """The Ray actor handle of ``name``: for tests that run code inside an actor's process."""
        return self._handles[name]

    def _on_gpu(self, resources: Mapping[str, float]) -> bool:
        policy = self._settings.workers.gpu_policy
        if policy != "auto":
            return policy == "always"
        return resources.get("GPU", 0) > 0 and self._settings.model.device != "cpu"


def actor_arguments(settings: Settings, spec: ActorSpec, instance_id: str) -> tuple[Any, ...]:
    """The arguments of an actor's class, as Ray pickles them into the actor's creation task:
    the settings without their secrets, and the names of the environment variables the actor
    reads them from on its node (a secret in a creation task is in Ray's object transfers and
    in the GCS for as long as the actor may be restarted)."""
    shipped, secret_variables = settings.without_secrets()
    return (shipped, spec.name, spec.slot, instance_id, _ray_placement, secret_variables)


def _ship_model_dirs(settings: Settings) -> dict[str, Any]:
    """The model directories named in the settings, read here and put in Ray's object store: on a
    cluster they exist only on the driver's disk. Keyed by the actor's argument names."""
    from workers.model_files import read_model_dir

    refs = {}
    for argument, path in (("encoder_files", settings.model.encoder), ("head_files", settings.model.head)):
        if path is not None:
            files = read_model_dir(path.resolve())
            refs[argument] = ray.put(files)
            log.info("model directory shipped to the actors", directory=str(path), bytes=files.size)
    return refs


def _ray_placement() -> Placement:
    """Where Ray put the calling actor; runs inside the actor's process (passed to its class)."""
    return Placement(
        node_id=ray.get_runtime_context().get_node_id(),
        gpu_ids=tuple(str(gpu) for gpu in ray.get_gpu_ids()),
    )


def cluster_address(settings: Settings) -> str | None:
    """The Ray cluster the driver joins: ``driver.ray_address``, else ``$RAY_ADDRESS`` (a Ray Job's
    driver finds its cluster there, as does a user who exported it: an address someone chose,
    unlike the newest Ray on the machine that ``ray.init()`` would join). None: a local Ray."""
    return settings.driver.ray_address or os.environ.get("RAY_ADDRESS") or None


def init_ray(settings: Settings) -> None:
    """Connect to ``driver.ray_address`` (else ``$RAY_ADDRESS``), or start a local Ray bound to loopback whose workers
    inherit the settings' secrets through this process's environment (which this sets)."""
    driver = settings.driver
    address = cluster_address(settings)
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    # The actors read the Kafka secrets from their process environment, never from their
    # arguments; a local Ray's workers inherit this process's, so the secrets this driver was
    # given (by the environment or the TOML file) go there. A joined cluster's nodes need their own.
    os.environ.update(settings.secret_environment())
    # Ray resolves 127.0.0.1 to the machine's routable address unless it believes it runs on a
    # single-node-only platform. This switch keeps every Ray port of a local run on loopback: the
    # env var for Ray's child processes, the constant for this one (read when ray was imported).
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        # A new Ray of its own: with no address, ray.init joins $RAY_ADDRESS or the newest Ray
        # started on this machine (ray_current_cluster), whoever started it.
        address="local",
        num_cpus=driver.ray_num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        object_store_memory=driver.ray_object_store_bytes,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        configure_logging=True,
    )
