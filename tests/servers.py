"""Real servers for tests: an MLflow tracking server and headless Chromium, on 127.0.0.1 only.

Each helper bounds its waits in time and stops what it started by PID.
"""

from __future__ import annotations

import contextlib
import json
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
from typing import Any

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


class Page:
    """One headless Chromium tab driven over the DevTools protocol (see `devtools_page`).

    Every call is bounded in time; `wait_for` polls in REAL time, which the MLflow UI's charts
    need (with `--virtual-time-budget` they stay loading spinners).
    """

    def __init__(self, loop: Any, ws: Any) -> None:
        self._loop, self._ws, self._id = loop, ws, 0

    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        return self._loop.run_until_complete(self._send(method, params, timeout))

    async def _send(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        import asyncio

        self._id += 1
        await self._ws.send_json({"id": self._id, "method": method, "params": params})
        async with asyncio.timeout(timeout):
            while True:
                reply = await self._ws.receive_json()
                if reply.get("id") == self._id:  # skip events and older replies
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 60.0, poll: float = 0.5) -> Any:
        """Poll `expression` until it is truthy; its value. TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):  # the page may be mid-navigation
                value = self.evaluate(expression)
                if value:
                    return value
            time.sleep(poll)
        raise TimeoutError(f"page never satisfied {expression[:120]!r} in {timeout:.0f} s "
                           f"(last value {value!r})")

    def viewport(self, width: int, height: int) -> None:
        """Set the page's viewport exactly (the window size also counts the browser's frame)."""
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def screenshot(self, path: Path) -> None:
        """PNG of the viewport (what a user sees without scrolling)."""
        import base64

        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


@contextlib.contextmanager
def devtools_page(profile: Path, width: int = 1400, height: int = 900,
                  timeout: float = 30.0) -> Iterator[Page]:
    """Headless Chromium with `--remote-debugging-port` on 127.0.0.1; yields its tab as a `Page`.

    The port is chosen by Chromium (port 0) and read from `DevToolsActivePort` in the profile,
    so parallel runs never race for one. Chromium is stopped by PID (its process group) on exit.
    """
    import asyncio

    import aiohttp

    profile.mkdir(parents=True, exist_ok=True)
    (profile / "DevToolsActivePort").unlink(missing_ok=True)
    cmd = chromium_cmd(profile, "--remote-debugging-address=127.0.0.1",
                       "--remote-debugging-port=0", "--hide-scrollbars", "about:blank")
    cmd = [c if not c.startswith("--window-size=") else f"--window-size={width},{height}"
           for c in cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    loop = asyncio.new_event_loop()
    session = ws = None
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"chromium exited or gave no DevTools port in {timeout:.0f} s")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

        async def connect() -> tuple[Any, Any]:
            client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
            return client, await client.ws_connect(ws_url, max_msg_size=0)

        session, ws = loop.run_until_complete(connect())
        page = Page(loop, ws)
        page.send("Page.enable")
        page.viewport(width, height)
        yield page
    finally:
        if session is not None:
            loop.run_until_complete(session.close())
        loop.close()
        stop(proc)


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
    from pipeline.train.launcher import _free_loopback_port  # never one of Ray's default ports

    port, dash = _free_loopback_port(), _free_loopback_port()
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
