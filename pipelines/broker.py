"""A real single-node Apache Kafka broker (KRaft) on 127.0.0.1, for the demo and the tests.

The broker's jars come from Maven Central through ``deploy/local/pom.xml`` (resolved once into
``$CLSTREAM_CACHE/kafka-<version>/``); its state (data, log, pid) lives in
``$CLSTREAM_CACHE/broker-<port>/``. ``start`` and ``stop`` are idempotent.

With ``scram_users`` the client listener is SASL_PLAINTEXT with SCRAM-SHA-512 only; the users'
credentials are written into the metadata log when the storage is formatted (so a broker's
users are fixed at its first start; ``wipe`` to change them). The first user is also the
broker's own inter-broker identity. ``kill``, ``pause`` and ``resume`` inject faults in tests.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import BrokerError

DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy" / "local"
DEFAULT_PORT = 9092
#: KRaft startup on a 2-core machine takes ~5 s; allow for a slow, busy CI machine.
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


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
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"kafka.Kafka" not in cmdline.read_bytes():
            return None  # the pid was recycled by an unrelated process
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None and _accepts(self.port)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Start the broker unless it already runs; block until it serves requests. Returns bootstrap."""
        if self.is_running():
            return self.bootstrap
        if self.pid() is None and _accepts(self.port):
            raise BrokerError(
                f"port {self.port} is taken by another process; pass --port or point clstream at that "
                "broker with --bootstrap-servers"
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
                ["kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config), *scram],
                check=True,
            )
        log_dir = self.log_file.parent
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "stdout.log", "ab") as out:
            process = self._java(jars, ["kafka.Kafka", str(config)], stdout=out, log_dir=log_dir)
        (self.state_dir / "broker.pid").write_text(str(process.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrokerError(f"the broker exited with status {process.returncode}; see {self.log_file}")
            if _accepts(self.port) and self._serves_metadata():
                return self.bootstrap
            time.sleep(0.25)
        self.stop()
        raise BrokerError(
            f"the broker did not accept connections on {self.bootstrap} within {timeout_s:.0f}s"
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout_s``). Returns whether one was running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        (self.state_dir / "broker.pid").unlink(missing_ok=True)
        return True

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
        (self.state_dir / "broker.pid").unlink(missing_ok=True)

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
        path.write_text(rendered)
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
            "java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
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
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(**self.client_config(), request_timeout_ms=5000)  # type: ignore[arg-type]
        except (KafkaError, OSError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()


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
