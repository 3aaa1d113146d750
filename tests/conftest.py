"""Shared fixtures. Integration fixtures start a real single-node Kafka broker and a real local Ray
once per session; topics are uuid-named per test so tests never see each other's records."""

from __future__ import annotations

import gc
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pipelines.kafka_tools.broker import LocalCluster
    from tests.integration.ray_nodes import LoopbackRayCluster

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Not 9092: the test broker must never touch a developer's own broker or its data. Every fixed
#: port here is below the kernel's ephemeral range (32768 and up by default) and above Ray's worker
#: ports (10002-19999): a connection's local end or a Ray process never holds one when a test
#: starts or restarts a broker on it.
TEST_BROKER_PORT = int(os.environ.get("CLSTREAM_TEST_BROKER_PORT", "29092"))
#: The three-node cluster's first port (it takes six from there), apart from the single broker's.
TEST_CLUSTER_PORT = int(os.environ.get("CLSTREAM_TEST_CLUSTER_PORT", "29300"))
#: The multi-node Ray cluster's head (GCS) port; Ray picks the others.
TEST_RAY_PORT = int(os.environ.get("CLSTREAM_TEST_RAY_PORT", "29500"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            # kafka-python 3.0.12 leaves the socket of a refused connection open, and the broker
            # outages these tests make are refused connections by the hundred. Unclosed resources
            # fail the unit tests (which run first, tests/unit before tests/integration); here
            # they are kafka-python's, and would fail whichever test the collector ran in.
            item.add_marker(pytest.mark.filterwarnings("ignore::ResourceWarning"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Collect kafka-python's leaked sockets (above) here, ignored as inside the integration tests:
    left for pytest's own collection at exit, they fail a run of integration tests alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """A real Apache Kafka broker (KRaft) on 127.0.0.1; stopped at the end if this session started it."""
    from pipelines.kafka_tools.broker import LocalBroker

    local = LocalBroker(TEST_BROKER_PORT)
    was_running = local.is_running()
    bootstrap = local.start()
    yield bootstrap
    if not was_running:
        local.stop()


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[LocalCluster]:
    """Three real Kafka nodes replicating every topic 3 times (``min.insync.replicas`` 2), which
    tests may kill and restart one at a time; stopped at the end if this session started it."""
    from pipelines.kafka_tools.broker import LocalCluster

    cluster = LocalCluster(TEST_CLUSTER_PORT)
    was_running = cluster.is_running()
    cluster.start()
    yield cluster
    if not was_running:
        cluster.stop()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray with 2 CPUs bound to loopback, shared by the session's integration tests."""
    import ray

    from pipelines.streaming.ray_pool import init_ray
    from schemas.settings import Settings

    init_ray(Settings.load(overrides={"driver": {"ray_num_cpus": 2}}))
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_nodes() -> Iterator[LoopbackRayCluster]:
    """A real two-node Ray cluster on loopback (a head with no room for actors, a worker node
    declaring 2 GPUs, run apart from this process's directory, HOME, TMPDIR and environment),
    token authentication on. Tests may kill and restart the GPU node; it is up between tests."""
    import shutil
    import tempfile

    from tests.integration.ray_nodes import LoopbackRayCluster

    # Short: Ray's unix sockets live under it, and their paths may not exceed 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="clray-", dir="/tmp"))
    cluster = LoopbackRayCluster(root, TEST_RAY_PORT)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small randomly initialised BERT and head: the real model code path, fast on 2 cores."""
    from workers.testing import save_random_head, save_tiny_bert

    root = tmp_path_factory.mktemp("tiny-model")
    encoder = save_tiny_bert(root / "encoder")
    return encoder, save_random_head(root / "head", encoder)


@pytest.fixture
def topic_names() -> Callable[[], dict[str, str]]:
    """Fresh topic and group names for one pipeline."""

    def make() -> dict[str, str]:
        suffix = uuid.uuid4().hex[:10]
        return {
            "input": f"test-in-{suffix}",
            "output": f"test-out-{suffix}",
            "dlq": f"test-dlq-{suffix}",
            "group_id": f"test-group-{suffix}",
        }

    return make


#: (test id, title, counts) reported by tests through the ``report`` fixture, printed at the end of
#: the session whatever pytest's capture mode, so `make test` output carries the numbers.
_SUMMARIES: list[tuple[str, str, dict[str, object]]] = []


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``report(title, **counts)``: a line in the session's closing summary (and on stdout now)."""

    def emit(title: str, **counts: object) -> None:
        _SUMMARIES.append((request.node.nodeid, title, counts))
        print(f"{title}: " + " ".join(f"{k}={v}" for k, v in counts.items()))

    return emit


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _SUMMARIES:
        return
    terminalreporter.section("clstream counts")
    for nodeid, title, counts in _SUMMARIES:
        fields = " ".join(f"{k}={v}" for k, v in counts.items())
        terminalreporter.write_line(f"{title}: {fields}  [{nodeid.rsplit('::', 1)[-1]}]")
