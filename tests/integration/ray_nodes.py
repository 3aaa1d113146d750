"""A real multi-node Ray cluster on loopback, for tests: a head without resources for actors and a
worker node that declares GPUs, which tests may kill and start again.

A loopback cluster shares one disk and one environment with the test, which hides what a real
cluster breaks. So the worker node runs from a directory of its own, with its own HOME and TMPDIR
and none of the test's environment (only PATH to the venv, and what Ray itself needs): anything
an actor finds only on the driver's disk, or in the driver's environment, fails there as it
would on another machine. Ray's token authentication is on, as on a real cluster.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

#: The venv's ``ray`` (the same installation on every node, as in one container image).
RAY = str(Path(sys.executable).with_name("ray"))


class LoopbackRayCluster:
    """``start`` brings up the head and the GPU node; ``kill_gpu_node``/``start_gpu_node`` take the
    worker node away (SIGKILL of its raylet and every process under it) and bring it back."""

    def __init__(self, root: Path, port: int, gpus: int = 2, cpus: int = 2) -> None:
        self.root = root
        self.port = port
        self.gpus = gpus
        self.cpus = cpus
        self.token = secrets.token_hex(32)
        self._node: subprocess.Popen[bytes] | None = None
        self._head_started = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_port(self) -> int:
        return self.port + 1

    @property
    def jobs_address(self) -> str:
        """Where `ray job submit --address` reaches the head's job server."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """What a driver on this machine needs to join: the token, and loopback clusters allowed."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
        }

    def _node_env(self, name: str) -> tuple[dict[str, str], Path]:
        home = self.root / name
        for sub in ("home", "tmp", "cwd"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        env = {
            "HOME": str(home / "home"),
            "TMPDIR": str(home / "tmp"),
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            **self.client_env(),
        }
        if "PYTHONPATH" in os.environ:  # a checkout run from a worktree: the code the nodes run
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        return env, home / "cwd"

    def start(self) -> None:
        env, cwd = self._node_env("head")
        # A lost node is declared dead after ~3 missed health checks 1 s apart (Ray's default: 5
        # every 3 s), so the node-loss tests spend their time on clstream, not on waiting.
        env |= {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        argv = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port)]
        # The dashboard serves Ray Jobs (`ray job submit`), on loopback.
        argv += ["--num-cpus", "0", "--num-gpus", "0", "--include-dashboard", "true"]
        argv += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port)]
        # Each node's agent (it runs the job's driver) serves on 52365 unless told otherwise, and
        # two nodes on one machine would collide there.
        argv += ["--dashboard-agent-listen-port", str(self.port + 2)]
        argv += ["--ray-client-server-port", str(self.port + 4)]  # not 10001, any other head's
        argv += ["--disable-usage-stats", "--temp-dir", str(self.root / "head" / "ray")]
        head = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
        if head.returncode != 0:
            raise RuntimeError(f"ray start --head failed ({head.returncode}):\n{head.stdout}\n{head.stderr}")
        self._head_started = True
        self.start_gpu_node()

    def start_gpu_node(self) -> None:
        """Join a node with ``gpus`` GPUs declared (Ray hands out their ids; there is no CUDA)."""
        assert self._node is None, "the GPU node is already up"
        env, cwd = self._node_env("gpu-node")
        log = open(self.root / "gpu-node.log", "ab")  # noqa: SIM115 - kept open while the node runs
        argv = [RAY, "start", "--address", self.address, "--node-ip-address", "127.0.0.1", "--block"]
        argv += ["--num-cpus", str(self.cpus), "--num-gpus", str(self.gpus), "--disable-usage-stats"]
        argv += ["--dashboard-agent-listen-port", str(self.port + 3)]
        self._node = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.wait_for_gpus(self.gpus)

    def ensure_gpu_node(self) -> None:
        """Bring the GPU node back if a test left it down."""
        if self._node is None:
            self.start_gpu_node()

    def kill_gpu_node(self) -> None:
        """SIGKILL the worker node's processes (raylet, its actors' workers, ``ray start``) at once."""
        assert self._node is not None
        root = psutil.Process(self._node.pid)
        processes = [root, *root.children(recursive=True)]
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(processes, timeout=10)
        self._node.wait(timeout=10)
        self._node = None

    def gpu_node_tmp(self) -> Path:
        return self.root / "gpu-node" / "tmp"

    def total_gpus(self) -> float:
        """GPUs of the live nodes, as the cluster reports them (``ray status``)."""
        out = self.ray_status()
        for line in out.splitlines():
            parts = line.strip().split()
            if len(parts) == 2 and parts[1] == "GPU" and "/" in parts[0]:
                return float(parts[0].split("/")[1])
        return 0.0

    def ray_status(self) -> str:
        env, cwd = self._node_env("head")
        return subprocess.run(
            [RAY, "status", "--address", self.address],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout

    def wait_for_gpus(self, gpus: float, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.total_gpus() != gpus:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the cluster did not reach {gpus} GPUs in {timeout_s:.0f} s:\n{self.ray_status()}"
                )
            time.sleep(1)

    def stop(self) -> None:
        if self._node is not None:
            self.kill_gpu_node()
        if self._head_started:
            head = str(self.root / "head" / "ray")
            # Only this cluster's processes (its temp dir is in their command lines): `ray stop`
            # would stop every Ray on the machine, the session's local one included.
            victims = []
            for process in psutil.process_iter(["cmdline"]):
                if any(head in part for part in process.info["cmdline"] or ()):
                    victims.append(process)
            for process in victims:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signal.SIGKILL)
            psutil.wait_procs(victims, timeout=10)
            self._head_started = False
