"""``ClassifierActor``: a ``ClassifierLoop`` on a background thread, with a small control surface.

A plain class; the driver's Ray adapter (``pipelines/streaming/ray_pool.py``) turns it into a Ray
actor with ``ray.remote(...)`` and pins it to a GPU (or CPUs). Its methods return at once: ``start``
loads the model and joins the group on the loop thread, ``report`` says how it is (an
``ActorReport``), ``drain`` finishes the batch in hand, commits and leaves.

States: starting -> running -> draining -> stopped, or failed (with ``error``) from any of them.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import psutil
import structlog

from schemas.settings import Settings
from workers.logs import configure_logging
from workers.report import ActorReport, LoopCounters, Placement

if TYPE_CHECKING:
    from workers.loop import LoopStats
    from workers.model_files import ModelFiles

log = structlog.get_logger("clstream.actor")


def transactional_id(group_id: str, instance: str, slot: int) -> str:
    """One id per driver instance and actor slot: a dead actor's replacement (same slot) fences it
    and settles its open transaction at once; two drivers on one group (different instances)
    never share an id, so never fence each other's live producers."""
    return f"{group_id}-{instance}-classifier-{slot}"


class ClassifierActor:
    def __init__(
        self,
        settings: Settings,
        name: str,
        slot: int = 0,
        instance: str = "solo",
        placement: Callable[[], Placement] | None = None,
        secret_variables: Sequence[str] = (),
        encoder_files: ModelFiles | None = None,
        head_files: ModelFiles | None = None,
    ) -> None:
        configure_logging(settings.log.level, settings.log.format)
        #: Without the secrets until ``_main`` reads ``secret_variables`` from this process's
        #: environment (``Settings.with_secrets_from``): they never travel with the arguments.
        self.settings = settings
        self._secret_variables = tuple(secret_variables)
        self.name = name
        #: Stable across replacements: a replacement reuses its predecessor's transactional id.
        self.slot = slot
        #: The driver's instance name (``driver.instance_id``, or its random one).
        self.instance = instance
        self.state = "starting"
        self.error: str | None = None
        self.device = "unknown"
        self.started_at = time.time()
        #: Where the pool placed this process; asked once, here, inside the actor's process.
        self.placement = placement() if placement is not None else Placement()
        #: The ``model.encoder``/``model.head`` directories, sent from the driver's disk (on a
        #: cluster); written on this node before the model loads, then let go.
        self._model_files = {"encoder": encoder_files, "head": head_files}
        self._stop = threading.Event()
        self._loop: Any = None
        self._thread = threading.Thread(target=self._main, name=f"clstream-{name}", daemon=True)

    def start(self) -> str:
        self._thread.start()
        return self.name

    def pid(self) -> int:
        return os.getpid()

    def report(self) -> ActorReport:
        """Health and counters; cheap, safe to call while the loop runs."""
        loop = self._loop
        classifier = getattr(loop, "classifier", None)
        real, padded = getattr(classifier, "real_tokens", 0), getattr(classifier, "padded_tokens", 0)
        return ActorReport(
            name=self.name,
            state=self.state,
            error=self.error,
            device=self.device,
            pid=os.getpid(),
            uptime_s=time.time() - self.started_at,
            padding_efficiency=(real / padded) if padded else None,
            real_tokens=real,
            forward_s=float(getattr(getattr(classifier, "stats", None), "forward_s", 0.0)),
            rss_bytes=psutil.Process().memory_info().rss,
            assignment=_assignment(loop),
            unfinished_batches=loop.unfinished_batches() if loop is not None else 0,
            placement=self.placement,
            counters=loop_counters(loop.stats) if loop is not None else None,
        )

    def kafka_state(self) -> dict[str, Any]:
        """The consumer's own view of its partitions (a stall report's evidence); cheap, read-only."""
        loop = self._loop
        diagnostics = getattr(getattr(loop, "source", None), "diagnostics", None)
        return {"name": self.name, **(diagnostics() if diagnostics is not None else {})}

    def drain(self, timeout_s: float = 25.0) -> ActorReport:
        """Stop polling, finish and commit the batch in hand, leave the group. Blocks up to ``timeout_s``."""
        if self.state in ("starting", "running"):
            self.state = "draining"
        self._stop.set()
        if self._loop is not None:
            self._thread.join(timeout=timeout_s)
        # else: still loading the model; it has consumed and committed nothing, so there is
        # nothing to finish, and the driver may stop the process at once.
        return self.report()

    def _main(self) -> None:
        # Every log line of this thread (and the loop's threads, which copy its context) says
        # where the actor runs: the node and GPUs from Ray, the device once the model is loaded.
        structlog.contextvars.bind_contextvars(
            actor=self.name, node=self.placement.node_id, gpu_ids=list(self.placement.gpu_ids)
        )
        try:
            self.settings = self.settings.with_secrets_from(self._secret_variables, os.environ)
            self._loop = self._build()
            structlog.contextvars.bind_contextvars(device=self.device)
            self.state = "running" if not self._stop.is_set() else "draining"
            log.info("actor running")
            self._loop.run(self._stop, drain_timeout_s=self.settings.driver.drain_timeout_s)
            self.state = "stopped"
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which replaces the actor
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            log.error("actor failed", error=self.error, traceback=traceback.format_exc(limit=8))
        finally:
            self._close()

    def _build(self) -> Any:
        import torch

        from workers.batching import batch_limits
        from workers.checkpoints import load_classifier
        from workers.kafka_io import KafkaSink, KafkaSource, KafkaTransactionalSink
        from workers.loop import ClassifierLoop
        from workers.model import resolve_device
        from workers.model_files import write_model_dir

        model = self.settings.model
        files_sent, self._model_files = self._model_files, {}  # their bytes are let go whatever happens
        sent = {field: write_model_dir(files) for field, files in files_sent.items() if files is not None}
        del files_sent
        if sent:
            model = model.model_copy(update=sent)
            log.info("model directories written on this node", **{k: str(v) for k, v in sent.items()})
        if model.device != "cuda" and not torch.cuda.is_available():
            # One torch thread per reserved CPU: more only fights the other actors for cores.
            torch.set_num_threads(max(1, int(self.settings.workers.cpus)))
        batch_size, max_tokens = batch_limits(
            resolve_device(model.device).type,
            self.settings.workers.inference_batch_size,
            self.settings.workers.max_batch_tokens,
        )
        # A local *ForSequenceClassification checkpoint, or an encoder with a head (default: embedded).
        classifier = load_classifier(
            encoder_dir=model.encoder,
            head_dir=model.head,
            pooling=model.pooling,
            max_length=model.max_length,
            device=model.device,
            batch_size=batch_size,
            max_tokens=max_tokens,
            precision=model.precision,
            trace=model.trace,
        )
        self.device = str(getattr(classifier, "device", "cpu"))
        client_id = f"{self.settings.kafka.client_id}-{self.name}"
        sink: Any
        if self.settings.workers.delivery == "exactly-once":
            txn_id = transactional_id(self.settings.topics.group_id, self.instance, self.slot)
            sink = KafkaTransactionalSink(self.settings, client_id, txn_id)
        else:
            sink = KafkaSink(self.settings, client_id=client_id)
        source = KafkaSource(self.settings, client_id=f"{self.settings.kafka.client_id}-{self.name}")
        # The model and the clients live as long as the actor: out of the cyclic collector's way,
        # so its full passes (which hold the GIL, stalling the model) scan only per-batch objects.
        gc.freeze()
        return ClassifierLoop(source, sink, classifier, self.settings)

    def _close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        for closer in (loop.source.close, loop.sink.close):
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 - closing is best effort; offsets are already committed
                log.warning("close failed", error=f"{type(exc).__name__}: {exc}")


def _assignment(loop: Any) -> tuple[int, ...] | None:
    assigned = getattr(getattr(loop, "source", None), "assigned", None)
    return tuple(assigned) if assigned is not None else None


def loop_counters(stats: LoopStats) -> LoopCounters:
    """The loop's ``LoopStats`` as a frozen copy (``snapshot`` copies its dicts and lists); a field
    ``LoopStats`` gains without ``LoopCounters`` fails here, and in ``tests/unit/workers/test_actor_report.py``."""
    snapshot = stats.snapshot()
    return replace(LoopCounters(**snapshot), latency_counts=tuple(snapshot["latency_counts"]))
