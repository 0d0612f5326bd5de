"""A real multi-node Ray cluster on this machine for the tests, stopped by PID only (never the Ray CLI's stop
command, which ends every Ray process on the machine).

Each node is one `ray start --block` process: it starts the node's daemons (GCS, raylet, dashboard, ...) as its
children and, on SIGTERM, drains the node and stops exactly those. So the suite ends only what it started: a
Ray cluster of the user's own on the same machine keeps running. Anything of a node still alive after its
SIGTERM (looked up as descendants of that PID) is killed by PID.

Ray's gRPC servers bind to every interface and `ray start` swaps 127.0.0.1 for the machine's address, so the
nodes, their drivers and job submissions run inside a network namespace of their own with only a loopback
interface: no Ray traffic can leave 127.0.0.1 (where `ip netns` is unavailable, they run without it).

Object storage: there is no cloud bucket here. moto's S3 server, on 127.0.0.1 in the same namespace, stands in
for one; the nodes get AWS_ENDPOINT_URL pointing at it, which both pyarrow (Ray's checkpoints) and s3fs (shards,
TensorBoard, samples) honour. Nothing else is mocked.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent


def session_token() -> Path:
    """One token for every test cluster of this pytest process, in a file only its user can read (as
    docs/cluster.md asks of a real cluster's); removed at exit."""
    import atexit
    import secrets
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="dgt-token-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "token"
    path.touch(mode=0o600)
    path.write_text(secrets.token_hex(32))
    return path


TOKEN_FILE = session_token()
RAY = str(BIN / "ray")
# The nodes run with this environment's bin/ first on PATH, as after `source .venv/bin/activate`: a job's
# `python` is then the one with distgan's dependencies. Token authentication is on, as on a real cluster: every
# driver, job submission and node started with ENV carries the session's token.
# RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0: a node that gets SIGTERM stops at once instead of draining for minutes;
# RAY_health_check_*: a killed node (its checks fail at once) is declared dead after 10 failed checks 1 s apart,
# not Ray's 5 checks 3 s apart (tests/test_elastic.py); with 3 checks a live node of this busy 2-core machine was
# once declared dead
ENV = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(TOKEN_FILE), "RAY_USAGE_STATS_ENABLED": "0",
       "PYTHONUNBUFFERED": "1",
       "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_health_check_period_ms": "1000",
       "RAY_health_check_failure_threshold": "10",
       "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_namespace(tag: str):
    """(command prefix, cleanup) for a fresh network namespace with only 'lo' up; ([], None) if unavailable."""
    name = f"distgan-{tag}-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True)
    if made.returncode != 0:
        return [], None
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    return ["ip", "netns", "exec", name], lambda: subprocess.run(["ip", "netns", "del", name], capture_output=True)


def stop_by_pid(pid: int, grace: float = 60) -> None:
    """SIGTERM to pid, then SIGKILL to whatever of it and its descendants is left after `grace` seconds."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    root.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs([root], timeout=grace)
    _, alive = psutil.wait_procs(family, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


class RayNode:
    """One `ray start --block` process."""

    def __init__(self, prefix: list[str], args: list[str], log_path: Path):
        self.log_path = log_path
        self.proc = subprocess.Popen([*prefix, RAY, "start", "--block", *args], env=ENV,
                                     stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while "Ray runtime started" not in log_path.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start failed:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> set[int]:
        """This node's processes: the `ray start` process and its descendants (the daemons and workers)."""
        try:
            root = psutil.Process(self.pid)
            return {root.pid, *(p.pid for p in root.children(recursive=True))}
        except psutil.NoSuchProcess:
            return set()

    def kill(self) -> None:
        """SIGKILL to every process of this node, as a lost machine: nothing drains, nothing says goodbye."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        stop_by_pid(self.pid)
        self.proc.wait(timeout=30)


class TestCluster:
    """A head and `workers` more nodes, `cpus` CPUs each, on 127.0.0.1, optionally with an S3 stand-in."""

    __test__ = False  # not a pytest test class

    def __init__(self, temp: Path, cpus: int = 2, workers: int = 1, s3: bool = True, tag: str = "ray"):
        self.temp, self.cpus = temp, cpus
        self.prefix, self._cleanup = loopback_namespace(tag)
        if self.prefix:
            port, dashboard, s3_port = 6379, 8265, 5000  # free inside the fresh namespace
        else:
            port, dashboard, s3_port = free_port(), free_port(), free_port()
        self.address, self.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
        self.env = {**ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}"}  # the nodes' workers inherit it
        self.moto = None
        self.nodes: list[RayNode] = []
        try:
            if s3:
                self.moto = subprocess.Popen([*self.prefix, str(BIN / "moto_server"), "-H", "127.0.0.1", "-p",
                                              str(s3_port)], env=self.env, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
            ENV.update(AWS_ENDPOINT_URL=self.env["AWS_ENDPOINT_URL"])
            self.nodes.append(RayNode(self.prefix, [
                "--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                "--include-dashboard=true", f"--temp-dir={temp}", *self.common()], temp / "head.log"))
            for _ in range(workers):
                self.add_node()
        except BaseException:
            self.stop()
            raise

    def common(self) -> list[str]:
        return ["--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}", "--disable-usage-stats"]

    def add_node(self) -> RayNode:
        node = RayNode(self.prefix, [f"--address={self.address}", *self.common()],
                       self.temp / f"node-{len(self.nodes)}.log")
        self.nodes.append(node)
        return node

    def pids(self) -> set[int]:
        return set().union(*(node.pids() for node in self.nodes)) | ({self.moto.pid} if self.moto else set())

    def run(self, args: list[str], env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
        """A command inside the cluster's network (ray job, python -c ...)."""
        return subprocess.run([*self.prefix, *args], env=env or ENV, capture_output=True, text=True, **kwargs)

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, the head last
            if node.proc.poll() is None:
                node.stop()
        if self.moto is not None:
            stop_by_pid(self.moto.pid, grace=30)
        if self._cleanup:
            self._cleanup()
