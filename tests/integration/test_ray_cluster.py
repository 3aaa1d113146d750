"""`clstream run` on a real multi-node Ray cluster (``ray_nodes``: a head with no room for
actors, a worker node declaring 2 GPUs, started apart from the driver's disk layout, HOME, TMPDIR
and environment): where actors run, the model reaching them through Ray, a node lost mid-stream
and a cluster that has to grow before actors can run, in both delivery modes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.kafka_tools.admin import ensure_topics
from pipelines.kafka_tools.records_io import produce_values
from pipelines.kafka_tools.verify import VerifyReport, verify_topics
from schemas.settings import Settings, WorkerSettings
from tests.integration.ray_nodes import RAY
from tests.integration.support import topic_size, wait_until

PARTITIONS = 4
BATCH = 256


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _produce(settings: Settings, first: int, count: int) -> None:
    ensure_topics(settings.kafka, {settings.topics.input: PARTITIONS})
    pairs = (
        (
            f"n-{i}".encode(),
            json.dumps({"id": f"n-{i}", "text": f"tweet {i} is {'good' if i % 2 else 'bad'}"}).encode(),
        )
        for i in range(first, first + count)
    )
    produce_values(settings.kafka, settings.topics.input, pairs)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
            text = response.read().decode()
    except OSError:
        return {}
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _restarts(port: int) -> float:
    return sum(_restarts_by_slot(port).values())


def _lag(port: int) -> float | None:
    lags = [v for (name, _), v in _scrape(port).items() if name == "clstream_consumer_lag"]
    return sum(lags) if len(lags) == PARTITIONS else None


def _actors_in(port: int, state: str) -> float:
    return _scrape(port).get(("clstream_actors", (("state", state),)), 0.0)


@contextlib.contextmanager
def _clstream_run(
    ray_nodes,
    broker: str,
    names: dict[str, str],
    cwd: Path,
    metrics_port: int,
    delivery: str,
    *flags: str,
    **env: str,
) -> Iterator[subprocess.Popen[bytes]]:
    """`clstream run` joining the multi-node cluster, as a user starts it; SIGTERMed on the way out
    (it must drain and exit 0 within 60 s)."""
    cmd = [
        sys.executable, "-m", "pipelines.commands.cli", "run",
        "--bootstrap-servers", broker,
        "--input-topic", names["input"], "--output-topic", names["output"], "--dlq-topic", names["dlq"],
        "--group-id", names["group_id"], "--partitions", str(PARTITIONS), "--delivery", delivery,
        *flags,
    ]  # fmt: skip
    full_env = {
        **os.environ,
        **ray_nodes.client_env(),
        "CLSTREAM_DRIVER__RAY_ADDRESS": ray_nodes.address,
        "CLSTREAM_DRIVER__WATCH_INTERVAL_S": "0.5",
        "CLSTREAM_METRICS__PORT": str(metrics_port),
        "CLSTREAM_WORKERS__SESSION_TIMEOUT_MS": "6000",
        "CLSTREAM_WORKERS__MAX_BATCH_RECORDS": str(BATCH),
        "CLSTREAM_WORKERS__TRANSACTION_TIMEOUT_MS": "20000",
        "CLSTREAM_WORKERS__PRODUCE_TIMEOUT_S": "15",
        "CLSTREAM_LOG__FORMAT": "json",
        **env,
    }
    log_path = cwd / f"run-{delivery}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    try:
        yield process
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        assert code == 0, log_path.read_text(errors="replace")[-4000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _driver_cwd(tmp_path: Path, tiny_model) -> Path:
    """A working directory holding the model: the run names it by *relative* paths, which exist
    only here, on the driver's disk."""
    encoder, head = tiny_model
    cwd = tmp_path / "driver"
    shutil.copytree(encoder, cwd / "model" / "encoder")
    shutil.copytree(head, cwd / "model" / "head")
    return cwd


def _settings(broker: str, names: dict[str, str]) -> Settings:
    return Settings.load(overrides={"kafka": {"bootstrap_servers": broker}, "topics": names})


def _verify(settings: Settings, delivery: str, records: int, bound: int) -> VerifyReport:
    topics = settings.topics
    deadline = time.monotonic() + 60  # a killed actor's open transaction is fenced or times out
    while True:
        verdict = verify_topics(settings.kafka, topics.input, topics.output, topics.dlq, delivery)  # type: ignore[arg-type]
        if verdict.lost == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert verdict.input_records == records
    assert verdict.lost == 0, verdict.table()
    assert verdict.unexpected == verdict.mismatched == 0, verdict.table()
    assert verdict.duplicates <= bound, verdict.table()
    return verdict


def _verify_and_report(
    report, title: str, settings: Settings, delivery: str, records: int, bound: int, **extra: object
) -> None:
    """``_verify``, then the row of the session's counts: records, lost, duplicates, bound, ``extra``."""
    verdict = _verify(settings, delivery, records, bound)
    report(
        title,
        delivery=delivery,
        records=records,
        lost=verdict.lost,
        duplicates=verdict.duplicates,
        bound=bound,
        **extra,
    )


def test_actors_run_on_the_gpu_node_with_the_model_sent_through_ray_and_status_says_where(
    ray_nodes, broker, topic_names, tiny_model, tmp_path, report
):
    names = topic_names()
    settings = _settings(broker, names)
    cwd = _driver_cwd(tmp_path, tiny_model)
    port = _free_port()
    _produce(settings, 0, 400)
    with _clstream_run(
        ray_nodes, broker, names, cwd, port, "at-least-once",
        "--workers", "2", "--encoder", "model/encoder", "--head", "model/head",
    ):  # fmt: skip
        wait_until(lambda: topic_size(settings.kafka, names["output"]) >= 400, 180, "400 labeled records")
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.commands.cli",
                "status",
                "--url",
                f"http://127.0.0.1:{port}/metrics",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    # The model went through Ray's object store and was written under the GPU node's TMPDIR.
    written = list((ray_nodes.gpu_node_tmp() / "clstream-models").iterdir())
    assert len([p for p in written if not p.name.startswith(".")]) == 2, written  # encoder and head
    assert "GPU 0" in status and "GPU 1" in status, status
    assert status.count("device cpu (no CUDA)") == 2, status
    verdict = _verify(settings, "at-least-once", 400, 0)
    report(
        "two-node cluster",
        records=400,
        actors_on_gpu_node=2,
        lost=verdict.lost,
        duplicates=verdict.duplicates,
    )


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_actors_wait_for_a_gpu_node_then_survive_its_loss(
    ray_nodes, broker, topic_names, tiny_model, tmp_path, report, delivery
):
    """Elastic capacity and node loss in one run: the cluster starts without its GPU node, so
    the autoscaler's actors wait for resources (shown, never replaced) and Ray's autoscaler is
    told the demand; the node joins and they run; the node is SIGKILLed mid-stream and their
    replacements wait again until it returns; every record ends labeled."""
    names = topic_names()
    settings = _settings(broker, names)
    cwd = _driver_cwd(tmp_path, tiny_model)
    port = _free_port()
    first, second = 1_000, 3_000
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.callback(ray_nodes.ensure_gpu_node)  # up again for the next test, whatever happens
        ray_nodes.kill_gpu_node()
        ray_nodes.wait_for_gpus(0)
        _produce(settings, 0, first)
        run = _clstream_run(
            ray_nodes, broker, names, cwd, port, delivery,
            "--encoder", "model/encoder", "--head", "model/head",
            CLSTREAM_WORKERS__GPU_POLICY="always",
            CLSTREAM_DRIVER__HEALTH_TIMEOUT_S="5",
            CLSTREAM_AUTOSCALE__ENABLED="true",
            CLSTREAM_AUTOSCALE__ELASTIC="true",
            CLSTREAM_AUTOSCALE__MIN_ACTORS="1",
            CLSTREAM_AUTOSCALE__MAX_ACTORS="2",
            CLSTREAM_AUTOSCALE__UPSCALE_DELAY_S="0",
            CLSTREAM_AUTOSCALE__DOWNSCALE_DELAY_S="600",
            CLSTREAM_AUTOSCALE__INITIAL_ACTOR_RATE="1",
        )  # fmt: skip
        stack.enter_context(run)
        # No GPU anywhere: the backlog asks for 2 actors beyond the cluster's capacity (0).
        wait_until(
            lambda: _actors_in(port, "waiting_for_resources") == 2, 120, "2 actors waiting for resources"
        )
        demand = wait_until(
            lambda: (
                "GPU"
                in ray_nodes.ray_status().split("From request_resources:")[-1].split("Pending Demands")[0]
                and ray_nodes.ray_status()
            ),
            60,
            "the GPU demand to reach Ray's autoscaler",
        )
        # Waiting is not a crash loop: past the grace of a member that never answered (4 x the
        # health timeout of 5 s), nobody is unresponsive or replaced, and both still wait.
        time.sleep(4 * 5 + 3)
        assert _actors_in(port, "waiting_for_resources") == 2
        assert _restarts(port) == 0

        ray_nodes.start_gpu_node()  # the autoscaler's new node, in effect
        wait_until(lambda: _actors_in(port, "running") == 2, 120, "2 actors running on the new node")
        wait_until(
            lambda: topic_size(settings.kafka, names["output"]) >= first, 120, "the first records labeled"
        )

        _produce(settings, first, second - first)  # a backlog for the lost node to leave behind
        time.sleep(0.5)
        ray_nodes.kill_gpu_node()
        lost_at = time.monotonic()
        wait_until(
            lambda: _actors_in(port, "waiting_for_resources") == 2,
            120,
            "the replacements waiting for resources",
        )
        waited_s = time.monotonic() - lost_at
        ray_nodes.start_gpu_node()
        wait_until(lambda: _actors_in(port, "running") == 2, 120, "2 actors running on the returned node")
        wait_until(lambda: _lag(port) == 0, 180, "the backlog worked off")
    bound = {"at-least-once": 2 * WorkerSettings().max_inflight_batches * BATCH, "exactly-once": 0}[delivery]
    _verify_and_report(
        report,
        "GPU node absent, then lost",
        settings,
        delivery,
        second,
        bound,
        noticed_loss_s=round(waited_s, 1),
        took_s=round(time.monotonic() - started, 1),
        demand_recorded="GPU" in demand,
    )


def _running(port: int) -> dict[str, str]:
    """Ray's GPU ids of each running actor, by actor name (from ``clstream_actor_info``; a
    replacement gets a new name)."""
    found: dict[str, str] = {}
    for (name, labels), _ in _scrape(port).items():
        fields = dict(labels)
        if name == "clstream_actor_info" and fields.get("state") == "running":
            found[fields["actor"]] = fields["gpu_ids"]
    return found


def _two_running(port: int, other_than: dict[str, str] | None = None) -> dict[str, str] | None:
    """Two actors running, one of them new when ``other_than`` names the ones seen before."""
    running = _running(port)
    if len(running) != 2 or (other_than is not None and len(running.keys() - other_than.keys()) != 1):
        return None
    return running


def _restarts_by_slot(port: int) -> dict[str, float]:
    return {
        dict(labels)["slot"]: value
        for (name, labels), value in _scrape(port).items()
        if name == "clstream_actor_restarts_total" and value
    }


def _actor_pids() -> list[int]:
    """Processes of classifier actors on this machine (Ray titles them ``ray::ClassifierActor``)."""
    found = subprocess.run(["pgrep", "-f", "ray::ClassifierActor"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_an_actor_sharing_a_gpu_is_killed_and_only_it_is_replaced_onto_its_share(
    ray_nodes, broker, topic_names, tiny_model, tmp_path, report, delivery
):
    """Two members share one declared GPU (``gpu_fraction`` 0.5), the way several CPU feeders
    keep one device busy (docs/data-plane.md). One is SIGKILLed mid-stream: its neighbour keeps
    consuming on the same GPU and is never replaced, the driver replaces the dead member onto the
    share it freed, and every record ends labeled within the mode's bound (one credit of the dead
    member in at-least-once mode, none in exactly-once)."""
    names = topic_names()
    settings = _settings(broker, names)
    cwd = _driver_cwd(tmp_path, tiny_model)
    port = _free_port()
    first, total = 1_000, 11_000
    started = time.monotonic()
    _produce(settings, 0, first)
    with _clstream_run(
        ray_nodes, broker, names, cwd, port, delivery,
        "--workers", "2", "--encoder", "model/encoder", "--head", "model/head",
        CLSTREAM_WORKERS__GPU_POLICY="always",
        CLSTREAM_WORKERS__GPU_FRACTION="0.5",
        CLSTREAM_DRIVER__HEALTH_TIMEOUT_S="5",
    ):  # fmt: skip
        shared = wait_until(lambda: _two_running(port), 180, "2 actors running")
        assert len(set(shared.values())) == 1 and "," not in next(iter(shared.values())), shared
        wait_until(
            lambda: topic_size(settings.kafka, names["output"]) >= first, 120, "the first records labeled"
        )
        _produce(settings, first, total - first)  # a backlog for the killed member to leave behind
        pids = _actor_pids()
        assert len(pids) == 2, pids
        os.kill(pids[0], signal.SIGKILL)
        killed_at = time.monotonic()
        after = wait_until(lambda: _two_running(port, other_than=shared), 180, "the replacement running")
        replaced_s = time.monotonic() - killed_at
        wait_until(lambda: _lag(port) == 0, 180, "the backlog worked off")
        restarts = _restarts_by_slot(port)
    # Only the killed member was replaced, once; its neighbour ran on throughout, and the
    # replacement took the freed half of the same GPU.
    assert list(restarts.values()) == [1.0], restarts
    assert len(shared.keys() & after.keys()) == 1, (shared, after)
    assert set(after.values()) == set(shared.values()), (shared, after)
    bound = {"at-least-once": WorkerSettings().max_inflight_batches * BATCH, "exactly-once": 0}[delivery]
    _verify_and_report(
        report,
        "actor sharing a GPU SIGKILLed",
        settings,
        delivery,
        total,
        bound,
        gpu=next(iter(shared.values())),
        replaced_s=round(replaced_s, 1),
        took_s=round(time.monotonic() - started, 1),
    )


def _ray_job(ray_nodes, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAY, "job", command, "--address", ray_nodes.jobs_address, *args],
        env={**os.environ, **ray_nodes.client_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _job_status(ray_nodes, job_id: str) -> str:
    """The job's status as `ray job status` prints it (its end states in words of their own)."""
    answer = _ray_job(ray_nodes, "status", job_id)
    out = answer.stdout + answer.stderr
    for words, status in (("was stopped", "STOPPED"), ("' succeeded", "SUCCEEDED"), ("' failed", "FAILED")):
        if words in out:
            return status
    found = re.search(r"Status for job '[^']+': (\w+)", out)
    return found.group(1) if found else out


def test_clstream_run_as_a_ray_job_labels_records_and_ray_job_stop_drains_it(
    ray_nodes, broker, topic_names, tiny_model, report
):
    """`ray job submit -- clstream run ...` against the cluster's job server (token auth on): the
    job's driver finds the cluster in the RAY_ADDRESS the job server gives it; `ray job stop`
    sends SIGTERM, and the driver drains and exits 0 within RAY_JOB_STOP_WAIT_TIME_S."""
    names = topic_names()
    settings = _settings(broker, names)
    encoder, head = tiny_model
    _produce(settings, 0, 400)
    job_id = f"clstream-{names['group_id']}"
    runtime_env = {
        "env_vars": {
            "CLSTREAM_WORKERS__SESSION_TIMEOUT_MS": "6000",
            "CLSTREAM_METRICS__PORT": "0",
            "CLSTREAM_LOG__FORMAT": "json",
            # Ray's job server SIGKILLs a stopped job 3 s after its SIGTERM by default: give the
            # drain (driver.drain_timeout_s, 25 s) the time it needs.
            "RAY_JOB_STOP_WAIT_TIME_S": "60",
        }
    }
    submitted = _ray_job(
        ray_nodes, "submit", "--submission-id", job_id, "--no-wait",
        "--runtime-env-json", json.dumps(runtime_env), "--",
        "clstream", "run", "--bootstrap-servers", broker,
        "--input-topic", names["input"], "--output-topic", names["output"], "--dlq-topic", names["dlq"],
        "--group-id", names["group_id"], "--partitions", str(PARTITIONS), "--workers", "2",
        "--encoder", str(encoder), "--head", str(head),
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    try:
        wait_until(lambda: topic_size(settings.kafka, names["output"]) >= 400, 180, "400 labeled records")
        assert _job_status(ray_nodes, job_id) == "RUNNING"
        started = time.monotonic()
        stopped = _ray_job(ray_nodes, "stop", job_id)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        status = wait_until(
            lambda: (s := _job_status(ray_nodes, job_id)) in ("STOPPED", "SUCCEEDED", "FAILED") and s,
            90,
            "the job to end",
        )
        took = time.monotonic() - started
    finally:
        _ray_job(ray_nodes, "stop", job_id)
    logs = _ray_job(ray_nodes, "logs", job_id).stdout
    assert status == "STOPPED", logs[-3000:]
    assert "signal received, draining" in logs and "stopped cleanly" in logs, logs[-3000:]
    verdict = _verify(settings, "at-least-once", 400, 0)
    report(
        "ray job", records=400, lost=verdict.lost, duplicates=verdict.duplicates, stop_took_s=round(took, 1)
    )
