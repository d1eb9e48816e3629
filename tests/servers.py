"""Real servers for tests: an MLflow tracking server and headless Chromium, on 127.0.0.1 only.

Each helper bounds its waits in time and stops what it started by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`mlflow server` with a sqlite backend and served artifacts under `root`; yields its URI."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", timeout=90)
        yield uri, proc
    finally:
        stop(proc)
        log.close()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_cmd(profile: Path, *args: str) -> list[str]:
    """Headless Chromium with every background connection off (this machine has no network)."""
    return [chromium() or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            f"--user-data-dir={profile}", "--window-size=1400,900", *args]


def render(url: str, profile: Path, screenshot: Path, budget_ms: int = 20000) -> str:
    """Take a screenshot of `url` and return its rendered DOM (two bounded Chromium runs)."""
    for extra, capture in ((f"--screenshot={screenshot}", False), ("--dump-dom", True)):
        proc = subprocess.Popen(
            chromium_cmd(profile, f"--virtual-time-budget={budget_ms}", extra, url),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=120)
        finally:
            stop(proc)
        if capture:
            return out.decode(errors="replace")
    return ""


def kill_marked(marker: str) -> int:
    """SIGKILL every process whose environment holds `marker` (`KEY=value`); return the count.

    `ray start` daemonises its processes (GCS, raylet, dashboard, agents, workers), so they are
    neither our children nor in our process group; they all inherit the environment, though,
    so a unique variable finds exactly the processes this test started, by PID.
    """
    wanted, me, killed = marker.encode(), os.getpid(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if wanted not in fh.read().split(b"\0"):
                    continue
            os.kill(int(entry), signal.SIGKILL)
            killed += 1
        except (OSError, ProcessLookupError):
            continue
    return killed


@contextlib.contextmanager
def ray_cluster(tmp: Path, nodes: int = 2, cpus_per_node: int = 1) -> Iterator[dict[str, str]]:
    """A real multi-node Ray cluster on 127.0.0.1 with token auth (run inside `unshare -n`).

    Yields the environment to talk to it (HOME holds the auth token) plus `ADDRESS` (GCS) and
    `DASHBOARD` (job submission URL). Every process it started is killed on exit.
    """
    import tempfile
    import uuid

    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    marker = f"GANF_TEST_CLUSTER={uuid.uuid4().hex}"
    # The nodes run job entrypoints (`python stages/train.py`) through a shell: the venv's
    # python must come first on their PATH, as on a real cluster's nodes.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "HOME": str(home), "RAY_AUTH_MODE": "token",
           "RAY_USAGE_STATS_ENABLED": "0", marker.split("=")[0]: marker.split("=")[1]}
    # One temp dir per node, as on separate machines (a shared one lets a node's runtime-env
    # agent garbage-collect the job's working dir under the other node). Short paths: Ray's
    # unix sockets live there.
    temps = [tempfile.mkdtemp(prefix="rgc", dir="/tmp") for _ in range(nodes)]
    port, dash = free_port(), free_port()
    ray = str(BIN / "ray")

    def run(*args: str) -> None:
        subprocess.run([ray, *args], env=env, check=True, capture_output=True, timeout=120)

    try:
        run("get-auth-token", "--generate")
        run("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--num-cpus", str(cpus_per_node), "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dash), "--temp-dir", temps[0], "--disable-usage-stats")
        for temp in temps[1:]:
            run("start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                "--num-cpus", str(cpus_per_node), "--temp-dir", temp)
        yield {**env, "ADDRESS": f"127.0.0.1:{port}", "DASHBOARD": f"http://127.0.0.1:{dash}"}
    finally:
        kill_marked(marker)
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)
