"""The install story is consistent: both locks pin the same torch, exactly; the Makefile's
`TORCH=cpu|cuda` set-up runs what the README says; the venv holds the build it was set up
with, and only one torch. No network: `make -n` only prints commands."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(===|==)([A-Za-z0-9.+!_-]+)$")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (operator, version) for every requirement line; fails on anything else."""
    out: dict[str, tuple[str, str]] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"{path.name}:{n}: not an exact pin: {raw!r}"
        name = norm(m.group(1))
        assert name not in out, f"{path.name}:{n}: {name} pinned twice"
        out[name] = (m.group(2), m.group(3))
    return out


LOCK = pins(REPO / "requirements.lock")
CUDA = pins(REPO / "requirements-cuda.lock")
TORCH_VERSION = LOCK["torch"][1]


def test_locks_are_exact_and_agree_on_torch():
    assert LOCK["torch"] == ("==", TORCH_VERSION) and "+" not in TORCH_VERSION
    assert all(op == "==" for op, _ in LOCK.values())
    # "===" on torch: a +cpu wheel pip can also see must not satisfy the CUDA lock.
    assert CUDA["torch"] == ("===", TORCH_VERSION)
    assert all(op == "==" for name, (op, _) in CUDA.items() if name != "torch")
    # The CUDA lock adds the NVIDIA runtime and nothing the main lock already pins.
    assert set(CUDA) & set(LOCK) == {"torch"}
    assert all(n == "torch" or n.startswith(("nvidia-", "cuda-")) or n == "triton" for n in CUDA)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"torch=={TORCH_VERSION}"' in pyproject


def test_readme_and_lock_header_say_how_each_build_is_installed():
    readme = (REPO / "README.md").read_text()
    for needle in ("requirements.lock", "requirements-cuda.lock", "make setup TORCH=cuda",
                   "driver >= 580", "CUDA 13.0", f"torch=={TORCH_VERSION}+cpu",
                   "--index-url https://download.pytorch.org/whl/cpu", "/opt/wheels"):
        assert needle in readme, needle
    header = (REPO / "requirements.lock").read_text().split("\naiohappyeyeballs", 1)[0]
    for needle in ("requirements-cuda.lock", "+cpu", "/opt/wheels", "CUDA 13.0"):
        assert needle in header, needle
    cuda_header = (REPO / "requirements-cuda.lock").read_text()
    assert ">= 580" in cuda_header and "requirements.lock" in cuda_header


def make_n(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # An empty VENV: the plan must not depend on this checkout's .venv/.torch. Under
    # `make test TORCH=...` the outer make's variables arrive in MAKEFLAGS: drop them.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    cmd = ["make", "-n", "-C", str(REPO), "setup", f"VENV={tmp_path / 'venv'}", *args]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, env=env)


def test_make_setup_cpu_installs_the_cpu_build_first(tmp_path):
    plan = make_n(tmp_path).stdout  # TORCH defaults to cpu in a venv without a choice
    assert f'"torch=={TORCH_VERSION}+cpu"' in plan
    assert "--index-url https://download.pytorch.org/whl/cpu" in plan
    assert "-r requirements.lock" in plan and "requirements-cuda.lock" not in plan
    assert plan.index("+cpu") < plan.index("-r requirements.lock")


def test_make_setup_cuda_adds_the_cuda_lock(tmp_path):
    plan = make_n(tmp_path, "TORCH=cuda").stdout
    assert "-r requirements.lock -r requirements-cuda.lock" in plan
    assert "+cpu" not in plan and "download.pytorch.org" not in plan


def test_make_refuses_an_unknown_torch_build(tmp_path):
    r = make_n(tmp_path, "TORCH=rocm", check=False)
    assert r.returncode != 0 and "TORCH must be cpu or cuda" in r.stderr


def test_the_venv_holds_one_torch_of_the_locked_version_and_chosen_build():
    torches = [d for d in md.distributions() if norm(d.metadata["Name"] or "") == "torch"]
    assert len(torches) == 1, [d.version for d in torches]
    public, _, local = torches[0].version.partition("+")
    assert public == TORCH_VERSION
    marker = Path(sys.prefix) / ".torch"  # written by `make setup` into the venv
    if not marker.is_file():
        pytest.skip(f"{sys.prefix} was not set up by `make setup`")
    build = marker.read_text().strip()
    assert build in ("cpu", "cuda")
    if build == "cpu":
        assert local == "cpu"
        import torch

        assert torch.version.cuda is None
    else:
        assert local == "", "TORCH=cuda must install PyPI's CUDA build, not a local +label"
