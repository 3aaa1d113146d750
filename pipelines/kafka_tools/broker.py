"""Real Apache Kafka brokers (KRaft) on 127.0.0.1: one node for the demo and the tests
(``LocalBroker``), three replicating nodes for the fault tests (``LocalCluster``).

The broker's jars come from Maven Central through ``deploy/local/pom.xml`` (resolved once into
``$CLSTREAM_CACHE/kafka-<version>/``); its state (data, log, pid) lives in
``$CLSTREAM_CACHE/broker-<port>/``. ``start`` and ``stop`` are idempotent.

With ``scram_users`` the client listener is SASL_PLAINTEXT with SCRAM-SHA-512 only; the users'
credentials are written into the metadata log when the storage is formatted (so a broker's
users are fixed at its first start; ``wipe`` to change them). The first user is also the
broker's own inter-broker identity. ``kill``, ``pause`` and ``resume`` inject faults in tests.

A ``LocalCluster`` is three ``LocalBroker`` nodes, each a broker and a KRaft controller, whose
configuration is the same template with cluster keys replaced (``properties``): replication
factor 3 and ``min.insync.replicas`` 2 for every topic, internal ones included. Two nodes are
a controller quorum, so any one may be killed and restarted while the cluster serves.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from schemas.errors import BrokerError

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "local"
DEFAULT_PORT = 9092
#: KRaft startup on a 2-core machine takes ~5 s; allow for a slow, busy CI machine.
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
#: The single broker's heap: room for the demo's and the benchmarks' topics.
DEFAULT_HEAP_MB = 768


def cache_root() -> Path:
    return Path(os.environ.get("CLSTREAM_CACHE", Path.home() / ".cache" / "clstream"))


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", (DEPLOY_DIR / "pom.xml").read_text())
    if not match:
        raise BrokerError(f"{DEPLOY_DIR / 'pom.xml'} does not pin <kafka.version>")
    return match.group(1)


@dataclass(frozen=True)
class LocalBroker:
    port: int = DEFAULT_PORT
    #: (username, password) pairs; empty: a PLAINTEXT listener without authentication.
    scram_users: tuple[tuple[str, str], ...] = ()
    #: server.properties entries that replace the template's (or are added): a cluster node's id,
    #: quorum and replication settings. Empty: the template's single node.
    properties: tuple[tuple[str, str], ...] = ()
    #: The JVM's maximum heap (-Xmx), in MiB.
    heap_mb: int = DEFAULT_HEAP_MB

    @property
    def protocol(self) -> str:
        return "SASL_PLAINTEXT" if self.scram_users else "PLAINTEXT"

    def client_config(self) -> dict[str, object]:
        """kafka-python keyword arguments to reach this broker (as the first SCRAM user, if any)."""
        config: dict[str, object] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.protocol}
        if self.scram_users:
            name, password = self.scram_users[0]
            config.update(
                sasl_mechanism="SCRAM-SHA-512", sasl_plain_username=name, sasl_plain_password=password
            )
        return config

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def state_dir(self) -> Path:
        return cache_root() / f"broker-{self.port}"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / "broker.log"

    @property
    def jar_dir(self) -> Path:
        return cache_root() / f"kafka-{kafka_version()}"

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_jars(self) -> Path:
        """Resolve the pinned broker and its runtime dependencies with Maven (once)."""
        marker = self.jar_dir / ".complete"
        if marker.exists():
            return self.jar_dir
        for tool in ("mvn", "java"):
            if shutil.which(tool) is None:
                raise BrokerError(f"`{tool}` is not on PATH; the local broker needs Maven and Java 17+")
        staging = self.jar_dir.with_name(self.jar_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            "mvn", "-q", "-B", "-f", str(DEPLOY_DIR / "pom.xml"), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
            raise BrokerError("Maven could not resolve the Kafka broker:\n" + "\n".join(tail))
        (staging / ".complete").write_text(kafka_version() + "\n")
        shutil.rmtree(self.jar_dir, ignore_errors=True)
        staging.rename(self.jar_dir)
        return self.jar_dir

    def pid(self) -> int | None:
        """The pid of our broker process if it is alive."""
        try:
            pid = int((self.state_dir / "broker.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        if not Path("/proc/self/cmdline").exists():
            return pid  # no procfs to ask: trust the pid file
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None  # gone since
        if not args:
            # A zombie, or a process just exec'd whose arguments are not set up yet (a broker
            # launched a moment ago: the pid file is written as soon as Popen returns).
            return pid if _alive(pid) else None
        return pid if b"kafka.Kafka" in args else None  # else the pid was recycled

    def is_running(self) -> bool:
        return self.pid() is not None and _accepts(self.port)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Start the broker unless it already runs; block until it serves requests. Returns bootstrap."""
        if not self.is_running():
            self._await_serving(self._launch(), time.monotonic() + timeout_s)
        return self.bootstrap

    def _launch(self, cluster_id: str | None = None) -> subprocess.Popen:
        """Format the storage if it is new (with ``cluster_id``, or a fresh one), then start the
        broker's JVM without waiting for it. The caller awaits it (``_await_serving``)."""
        pid = self.pid()
        if pid is not None:
            # Ours but not serving: starting, or stopping (a SIGTERM closes the client listener
            # first, the controller port seconds later). A second JVM on the same data would fail.
            raise BrokerError(
                f"the broker on port {self.port} (pid {pid}) is running but not serving: it is starting "
                f"or stopping; wait for it, or run `clstream broker stop --port {self.port}`"
            )
        if _accepts(self.port):
            raise BrokerError(
                f"port {self.port} is taken by another process; pass --port or point clstream at that "
                "broker with --bootstrap-servers"
            )
        for port in (self.port, self.controller_port):
            if not _bindable(port):
                raise BrokerError(
                    f"port {port} is in use (no listener: likely the local end of a connection, as any "
                    f"port in the kernel's ephemeral range {_ephemeral_range()} can be); pass --port "
                    "with a port outside that range"
                )
        jars = self.ensure_jars()
        config = self._render_config()
        data = self.state_dir / "data"
        if not (data / "meta.properties").exists():
            scram = [
                arg
                for name, password in self.scram_users
                for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
            ]
            self._java(
                jars,
                ["kafka.tools.StorageTool", "format", "-t", cluster_id or _cluster_id(), "-c", str(config)]
                + scram,
                check=True,
            )
        log_dir = self.log_file.parent
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "stdout.log", "ab") as out:
            process = self._java(jars, ["kafka.Kafka", str(config)], stdout=out, log_dir=log_dir)
        self._pid_file.write_text(str(process.pid))
        return process

    def _await_serving(self, process: subprocess.Popen, deadline: float) -> None:
        """Block until the launched broker answers metadata requests; stop it if it never does."""
        while time.monotonic() < deadline:
            if process.poll() is not None:
                unbound = _unbound_address(self.log_file)
                why = f": {unbound} is already in use" if unbound else ""
                raise BrokerError(
                    f"the broker exited with status {process.returncode}{why}; see {self.log_file}"
                )
            if _accepts(self.port) and self._serves_metadata():
                return
            time.sleep(0.25)
        self.stop()
        raise BrokerError(
            f"the broker did not serve requests on {self.bootstrap} in time; see {self.log_file}"
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout_s``). Returns whether one was running."""
        return _stop_all([self], timeout_s) == 1

    def set_client_quota(self, client_id: str, producer_byte_rate: int | None) -> None:
        """Throttle (or, with None, stop throttling) what one client id may produce, in bytes/s:
        the broker delays its produce responses. A slow sink that is real, for backpressure tests."""
        change = (
            ["--add-config", f"producer_byte_rate={producer_byte_rate}"]
            if producer_byte_rate is not None
            else ["--delete-config", "producer_byte_rate"]
        )
        self._java(
            self.ensure_jars(),
            ["kafka.admin.ConfigCommand", "--bootstrap-server", self.bootstrap, "--alter",
             *change, "--entity-type", "clients", "--entity-name", client_id],
            check=True,
        )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the broker (a crash: no controlled shutdown, no flush) and wait until it is gone."""
        pid = self.pid()
        if pid is None:
            raise BrokerError(f"no broker of ours runs on port {self.port}")
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
        self._pid_file.unlink(missing_ok=True)

    def pause(self) -> None:
        """SIGSTOP the broker: connections stay open but nothing answers (a hung machine)."""
        pid = self.pid()
        if pid is None:
            raise BrokerError(f"no broker of ours runs on port {self.port}")
        os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused broker."""
        pid = self.pid()
        if pid is None:
            raise BrokerError(f"no broker of ours runs on port {self.port}")
        os.kill(pid, signal.SIGCONT)

    def wipe(self) -> None:
        """Stop the broker and delete its data (topics, offsets)."""
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------------

    @property
    def _pid_file(self) -> Path:
        return self.state_dir / "broker.pid"

    def _render_config(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        template = (DEPLOY_DIR / "server.properties.template").read_text()
        rendered = template.format(
            port=self.port,
            controller_port=self.controller_port,
            log_dirs=self.state_dir / "data",
            protocol=self.protocol,
            sasl_settings=self._sasl_settings(),
        )
        path = self.state_dir / "server.properties"
        path.write_text(_with_properties(rendered, self.properties))
        return path

    def _sasl_settings(self) -> str:
        if not self.scram_users:
            return ""
        for value in (part for user in self.scram_users for part in user):
            if not value or any(c in value for c in '",=[]\\\n'):
                raise BrokerError('SCRAM user names and passwords must be non-empty, without " , = [ ] \\')
        return "\n".join(
            [
                "sasl.enabled.mechanisms=SCRAM-SHA-512",
                "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
                "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{self.scram_users[0][0]}" password="{self.scram_users[0][1]}";',
            ]
        )

    def _java(
        self, jars: Path, args: list[str], check: bool = False, stdout=None, log_dir: Path | None = None
    ):
        log_dir = log_dir or self.state_dir
        cmd = [
            "java", "-Xms256m", f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={log_dir}",
            f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.properties'}",
            "-cp", f"{jars}/*", *args,
        ]  # fmt: skip
        if check:
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise BrokerError(
                    f"`{' '.join(args[:2])}` failed: {(result.stdout + result.stderr).strip()[-800:]}"
                )
            return result
        # A new session: Ctrl-C in the terminal that started it must not kill the broker.
        return subprocess.Popen(
            cmd, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def _serves_metadata(self) -> bool:
        return _ask(self.client_config(), lambda admin: admin.list_topics() is not None) is True


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 characters).

    Never one that starts with '-' (1 in 64 would): kafka-storage's argument parser reads
    ``-t -Xyz...`` as an option and refuses to format. Kafka's ``Uuid.randomUuid()`` redraws the
    same way."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _bindable(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:``port`` now. Kafka's JVM sets SO_REUSEADDR, as here,
    so a connection in TIME_WAIT does not count; a live connection's local end or a listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ephemeral_range() -> str:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return "(unknown here)"
    return f"{low}-{high}"


#: How much of a broker's log to read for why it exited: its last lines hold the fatal error.
_LOG_TAIL_BYTES = 256 * 1024


def _unbound_address(log_file: Path) -> str | None:
    """The address a broker that just exited failed to bind, from the tail of its log; None if none."""
    try:
        with open(log_file, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            tail = log.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = re.findall(r"failed to bind to (\S+?): Address already in use", tail)
    return found[-1] if found else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().split()[2] != "Z"


#: Three nodes: the fewest that keep a controller quorum and two in-sync replicas with one down.
CLUSTER_SIZE = 3
#: Three JVMs share a small CI machine with Ray; a test cluster's topics are small.
CLUSTER_HEAP_MB = 512
#: Every topic, the internal ones included, is replicated to all three nodes and accepts a write
#: (acks=all) while two of them have it: one node may fail without losing a record or stalling.
CLUSTER_PROPERTIES = (
    ("default.replication.factor", "3"),
    ("min.insync.replicas", "2"),
    ("offsets.topic.replication.factor", "3"),
    ("transaction.state.log.replication.factor", "3"),
    ("transaction.state.log.min.isr", "2"),
)


@dataclass(frozen=True)
class LocalCluster:
    """Three KRaft nodes (broker and controller each) on 127.0.0.1, replicating every topic 3 times.

    Node ``n`` (1, 2, 3: its ``node.id``, as leaders and coordinators are named in metadata) is a
    ``LocalBroker`` on port ``port + 2 * (n - 1)``, its controller on the port after. The cluster id
    the nodes are formatted with lives in ``$CLSTREAM_CACHE/cluster-<port>/``. ``start`` and ``stop``
    are idempotent; ``kill`` and ``restart`` inject faults one node at a time.
    """

    port: int = 29300

    @property
    def nodes(self) -> dict[int, LocalBroker]:
        ports = {n: self.port + 2 * (n - 1) for n in range(1, CLUSTER_SIZE + 1)}
        # Every node votes: a quorum is two of three, so the cluster outlives any one node.
        voters = ",".join(f"{n}@127.0.0.1:{LocalBroker(p).controller_port}" for n, p in ports.items())
        return {
            n: LocalBroker(
                p,
                properties=(("node.id", str(n)), ("controller.quorum.voters", voters), *CLUSTER_PROPERTIES),
                heap_mb=CLUSTER_HEAP_MB,
            )
            for n, p in ports.items()
        }

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes.values())

    def client_config(self) -> dict[str, object]:
        """kafka-python keyword arguments to reach the cluster through any live node."""
        return {"bootstrap_servers": self.bootstrap, "security_protocol": "PLAINTEXT"}

    @property
    def state_dir(self) -> Path:
        return cache_root() / f"cluster-{self.port}"

    def is_running(self) -> bool:
        return all(node.is_running() for node in self.nodes.values())

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Start the nodes that do not run; block until all serve and are registered. Returns bootstrap."""
        deadline = time.monotonic() + timeout_s
        # All at once: a node serves only once a quorum of controllers has elected a leader.
        launched = [
            (node, node._launch(self._cluster_id())) for node in self.nodes.values() if not node.is_running()
        ]
        for node, process in launched:
            node._await_serving(process, deadline)
        self._await(lambda: self._live_brokers() == set(self.nodes), deadline, "every node registered")
        return self.bootstrap

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop every node (SIGTERM, then SIGKILL after ``timeout_s``). Returns whether any was running."""
        return _stop_all(list(self.nodes.values()), timeout_s) > 0

    def kill(self, node: int) -> None:
        """SIGKILL node ``node`` (a crash) and wait until it is gone; the other two keep serving."""
        self.nodes[node].kill()

    def restart(self, node: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start node ``node`` again (if it does not run) and return once every partition has all its
        replicas in sync, so that the next fault is one node down, not two."""
        deadline = time.monotonic() + timeout_s
        broker = self.nodes[node]
        if not broker.is_running():
            broker._await_serving(broker._launch(self._cluster_id()), deadline)
        self._await(lambda: self.under_replicated() == [], deadline, f"node {node}'s replicas in sync")

    def under_replicated(self) -> list[tuple[str, int]] | None:
        """(topic, partition) of every partition with a replica out of sync; None: no answer now."""

        def ask(admin: Any) -> list[tuple[str, int]]:
            return [
                (topic["name"], partition["partition_index"])
                for topic in admin.describe_topics()
                for partition in topic["partitions"]
                if len(partition["isr_nodes"]) < len(partition["replica_nodes"])
            ]

        return _ask(self.client_config(), ask)

    # -- fault targets: the node that holds a role now, asked of a fresh client each time --------

    def leader(self, topic: str, partition: int) -> int:
        """The node that leads ``topic``'s ``partition``."""
        with _admin(self.client_config()) as admin:
            (described,) = admin.describe_topics([topic])
        return next(p["leader_id"] for p in described["partitions"] if p["partition_index"] == partition)

    def group_coordinator(self, group_id: str, timeout_s: float = 30.0) -> int:
        """The node that coordinates the consumer group: the one node whose ListGroups lists it. Asked
        again until one answers: a fresh client may not know every node yet, and a node still
        loading the group's partition answers COORDINATOR_LOAD_IN_PROGRESS."""

        def ask(admin: Any) -> int | None:
            listing = [n for n in self.nodes if group_id in {g["group_id"] for g in admin.list_groups([n])}]
            return listing[0] if len(listing) == 1 else None

        deadline = time.monotonic() + timeout_s
        while (node := _ask(self.client_config(), ask)) is None:
            if time.monotonic() >= deadline:
                raise BrokerError(f"no single node of {self.bootstrap} coordinated group {group_id} in time")
            time.sleep(0.25)
        return node

    def transaction_coordinator(self, transactional_id: str) -> int:
        """The node that coordinates a transactional id a producer has initialised (FindCoordinator,
        key type transaction)."""
        with _admin(self.client_config()) as admin:
            described = admin.describe_transactions([transactional_id])
        return int(described[transactional_id].coordinator_id)

    def wipe(self) -> None:
        """Stop every node and delete the cluster's data."""
        self.stop()
        for node in self.nodes.values():
            shutil.rmtree(node.state_dir, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _cluster_id(self) -> str:
        path = self.state_dir / "cluster.id"
        if not path.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(_cluster_id())
        return path.read_text().strip()

    def _live_brokers(self) -> set[int] | None:
        return _ask(
            self.client_config(),
            lambda admin: {b["broker_id"] for b in admin.describe_cluster()["brokers"] if not b["is_fenced"]},
        )

    def _await(self, done: Callable[[], bool], deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.25)
        raise BrokerError(f"the cluster at {self.bootstrap} did not get {what} in time; see its broker logs")


def _with_properties(rendered: str, properties: tuple[tuple[str, str], ...]) -> str:
    """``rendered`` server.properties with each key of ``properties`` set: its line replaced in
    place, or appended when the template has no such key."""
    pending = dict(properties)
    lines = []
    for line in rendered.splitlines():
        key = line.partition("=")[0].strip()
        if key in pending:
            lines += ["# Replaced for this node (LocalBroker.properties):", f"{key}={pending.pop(key)}"]
        else:
            lines.append(line)
    lines += [f"{key}={value}" for key, value in pending.items()]
    return "\n".join(lines) + "\n"


_T = TypeVar("_T")


@contextmanager
def _admin(config: dict[str, object]) -> Iterator[Any]:
    """A fresh kafka-python admin client (so no cached coordinator or leader), closed after."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**config, request_timeout_ms=5000)  # type: ignore[arg-type]
    try:
        yield admin
    finally:
        admin.close()


def _ask(config: dict[str, object], question: Callable[[Any], _T]) -> _T | None:
    """``question(admin)`` on a fresh admin client, or None when the brokers cannot answer now."""
    from kafka.errors import KafkaError

    try:
        with _admin(config) as admin:
            return question(admin)
    except (KafkaError, OSError):
        return None


def _stop_all(brokers: list[LocalBroker], timeout_s: float) -> int:
    """SIGTERM every running broker at once, SIGKILL any still alive after ``timeout_s``. Returns how
    many were running. At once: a cluster's nodes stopped one by one would leave the last waiting
    for a controller quorum that has gone."""
    running = [(broker, pid) for broker in brokers if (pid := broker.pid()) is not None]
    for _, pid in running:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for broker, pid in running:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        broker._pid_file.unlink(missing_ok=True)
    return len(running)


@contextmanager
def run_broker(bootstrap: str | None, port: int, starting: Callable[[], Any] | None = None) -> Iterator[str]:
    """The bootstrap servers of one command's run: ``bootstrap`` when given; otherwise the local
    broker on ``port``, started here (inside ``starting()``, e.g. a progress spinner) and stopped
    on the way out if it was not already running, so a run leaves no JVM behind."""
    if bootstrap is not None:
        yield bootstrap
        return
    broker = LocalBroker(port)
    was_running = broker.is_running()
    with starting() if starting is not None else contextlib.nullcontext():
        address = broker.start()
    try:
        yield address
    finally:
        if not was_running:
            broker.stop()
