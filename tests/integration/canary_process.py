"""A driver that starts its own local Ray, for the test of where Kafka secrets travel.

``python -m tests.integration.canary_process CONFIG_TOML OVERRIDES_JSON OUT_JSON`` loads the
settings as ``clstream run`` does (the TOML file holds the secrets; run it with none in the
environment), opens a ``RayActorPool`` (which starts a local Ray, as a driver without
``driver.ray_address`` does), spawns one classifier actor, waits until it runs or fails, and
writes to ``OUT_JSON``:

- ``state``, ``error``: the actor's, from its report;
- ``places``: every place searched for the secrets, and ``leaks``: those holding one (the
  pickled arguments of the actor's class, the runtime_env inside the actor and in the driver,
  the job config, the GCS job and actor tables, Ray's session logs);
- ``actor_secrets`` and ``driver_secrets``: the SHA-256 of each secret as the actor's settings
  hold it and as the driver's do (never a secret itself).

A process of its own because a process joins one Ray only, and the test session's Ray was
started without the secrets.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import ray
from pydantic import SecretStr

from pipelines.streaming.pool import ActorSpec
from pipelines.streaming.ray_pool import RayActorPool, actor_arguments
from schemas.settings import Settings
from workers.report import ActorReport

INSTANCE = "canary"


def _digests(settings: Settings) -> dict[str, str | None]:
    def digest(secret: SecretStr | None) -> str | None:
        return None if secret is None else hashlib.sha256(secret.get_secret_value().encode()).hexdigest()

    return {
        "sasl_password": digest(settings.kafka.sasl_password),
        "ssl_password": digest(settings.kafka.ssl_password),
    }


def _inside(actor: Any) -> dict[str, Any]:
    """Runs in the actor's process (``__ray_call__``): what it holds and what Ray gave it."""
    return {"digests": _digests(actor.settings), "runtime_env": dict(ray.get_runtime_context().runtime_env)}


def _await_report(pool: RayActorPool, name: str, timeout_s: float) -> ActorReport:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        report = pool.report(name)
        if report is not None and report.state in ("running", "failed", "stopped"):
            return report
        time.sleep(0.2)
    raise TimeoutError(f"{name} neither ran nor failed within {timeout_s:.0f}s")


def main(config: Path, overrides_json: str, out: Path) -> None:
    settings = Settings.load(config_file=config, overrides=json.loads(overrides_json))
    secrets = [
        secret.get_secret_value().encode()
        for secret in (settings.kafka.sasl_password, settings.kafka.ssl_password)
        if secret is not None
    ]
    assert secrets, "the config file holds no secret to look for"
    spec = ActorSpec("classifier-0", slot=0)
    pool = RayActorPool(settings, INSTANCE)
    pool.open()
    try:
        pool.spawn(spec)
        report = _await_report(pool, spec.name, 120)
        inside = ray.get(pool.handle(spec.name).__ray_call__.remote(_inside), timeout=30)
        accessor = ray._private.state.state._connect_and_get_accessor()
        jobs = accessor.get_job_table(skip_submission_job_info_field=False, skip_is_running_tasks_field=True)
        logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
        places = {
            "actor arguments": cloudpickle.dumps(actor_arguments(settings, spec, INSTANCE)),
            "actor runtime_env": json.dumps(inside["runtime_env"]).encode(),
            "driver runtime_env": json.dumps(dict(ray.get_runtime_context().runtime_env)).encode(),
            "job config": ray._private.worker.global_worker.core_worker.get_job_config().SerializeToString(),
            "job table": b"".join(jobs),
            "actor table": b"".join(accessor.get_actor_table(None, None)),
            "ray logs": b"".join(p.read_bytes() for p in sorted(logs.rglob("*")) if p.is_file()),
        }
        result = {
            "state": report.state,
            "error": report.error,
            "places": sorted(places),
            "leaks": sorted(place for place, data in places.items() if any(s in data for s in secrets)),
            "actor_secrets": inside["digests"],
            "driver_secrets": _digests(settings),
        }
    finally:
        pool.kill(spec.name)
        pool.close()
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
