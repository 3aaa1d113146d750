"""The local broker's pure parts, without starting a JVM."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipelines.kafka_tools import broker


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xf8 = 0b111110_00: the first base64 digit is 62, '-' in the URL-safe alphabet.
    dashed = uuid.UUID(bytes=bytes([0xF8]) + bytes(15), version=4)
    draws = iter([dashed, dashed, uuid.UUID(int=7 << 64, version=4)])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(draws))

    cluster_id = broker._cluster_id()

    assert not cluster_id.startswith("-"), cluster_id
    assert len(cluster_id) == 22
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_a_cluster_node_config_replaces_the_templates_keys_and_adds_the_rest() -> None:
    rendered = "# one node\nnode.id=1\nmin.insync.replicas=1\nlog.dirs=/data\n"

    config = broker._with_properties(rendered, (("node.id", "2"), ("default.replication.factor", "3")))

    settings = [line for line in config.splitlines() if line and not line.startswith("#")]
    assert settings == [
        "node.id=2",
        "min.insync.replicas=1",
        "log.dirs=/data",
        "default.replication.factor=3",
    ]


def test_cluster_nodes_vote_together_and_replicate_everything_three_times() -> None:
    nodes = broker.LocalCluster(40000).nodes

    assert [(n, node.port, node.controller_port) for n, node in nodes.items()] == [
        (1, 40000, 40001),
        (2, 40002, 40003),
        (3, 40004, 40005),
    ]
    for n, node in nodes.items():
        properties = dict(node.properties)
        assert properties["node.id"] == str(n)
        assert (
            properties["controller.quorum.voters"] == "1@127.0.0.1:40001,2@127.0.0.1:40003,3@127.0.0.1:40005"
        )
        assert properties["default.replication.factor"] == "3"
        assert properties["min.insync.replicas"] == "2"
        assert node.heap_mb <= 512


class _NoJars(Exception):
    pass


@pytest.mark.parametrize("taken", ["broker", "controller"])
def test_a_port_held_by_a_socket_that_does_not_listen_is_refused_before_the_jvm_starts(
    taken: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An outgoing connection's local end holds its port without listening on it; any port in the
    # kernel's ephemeral range can be one. Nothing answers a connect there, yet Kafka cannot bind.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        local = broker.LocalBroker(port if taken == "broker" else port - 1)
        monkeypatch.setattr(broker.LocalBroker, "ensure_jars", lambda self: (_ for _ in ()).throw(_NoJars()))

        with pytest.raises(broker.BrokerError, match=f"port {port} is in use"):
            local._launch()


def test_a_broker_that_could_not_bind_says_which_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLSTREAM_CACHE", str(tmp_path))
    local = broker.LocalBroker(39304)
    local.log_file.parent.mkdir(parents=True)
    local.log_file.write_text(
        "[2026-12-05 12:34:52,600] ERROR [BrokerServer id=3] Fatal error during broker startup.\n"
        "org.apache.kafka.common.KafkaException: Socket server failed to bind to 127.0.0.1:39304: "
        "Address already in use.\n\tat kafka.network.Acceptor.openServerSocket(SocketServer.scala:615)\n"
    )
    exited = subprocess.Popen(["false"])
    exited.wait()

    with pytest.raises(broker.BrokerError, match=r"127\.0\.0\.1:39304 is already in use") as refused:
        local._await_serving(exited, time.monotonic() + 5)
    assert str(local.log_file) in str(refused.value)


def test_our_broker_alive_but_not_serving_is_named_rather_than_started_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broker given SIGTERM closes its client listener first and its controller port seconds
    # later; until its JVM exits, a start must not launch a second JVM on the same data.
    monkeypatch.setenv("CLSTREAM_CACHE", str(tmp_path))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    local = broker.LocalBroker(port)
    local.state_dir.mkdir(parents=True)
    stopping = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "kafka.Kafka"])
    try:
        local._pid_file.write_text(str(stopping.pid))
        monkeypatch.setattr(broker.LocalBroker, "ensure_jars", lambda self: (_ for _ in ()).throw(_NoJars()))

        with pytest.raises(broker.BrokerError, match=f"pid {stopping.pid}.*not serving"):
            local.start()
    finally:
        stopping.kill()
        stopping.wait()
