"""The host a benchmark ran on, for its JSON: hosts of this VM kind differ in CPU generation, and
the GEMM rate does not follow the training speed across them (README "Results"), so every result
file names its CPU (`machine`); and the command that wrote a result file, with its arguments
(`command_line`)."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shlex
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The host CPU as /proc/cpuinfo names it, with its family and model numbers."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return platform.processor() or "unknown"
    return f"{fields['model name']}, family {fields.get('cpu family')} model {fields.get('model')}"


def machine(**extra: Any) -> dict[str, Any]:
    """A result file's `machine`: when (UTC), the platform, the CPU, its core count and torch's
    version, then `extra` (a benchmark's own: its thread count, Ray's version)."""
    import torch

    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, **extra}


ROOT = Path(__file__).resolve().parents[1]


def repo_relative(path: str | Path) -> str:
    """`path` relative to the repo when inside it: committed results hold no absolute path."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved)


def command_line(script: str, argv: list[str], netns: bool = False) -> str:
    """The command that makes a result file again: `script` with the arguments it was given
    (`argv`, i.e. sys.argv[1:]); an absolute path is shown relative to the repo when inside it
    (`repo_relative`); `netns`: inside `unshare -n`, as the script's docstring runs it."""
    words = [repo_relative(a) if a.startswith("/") else a for a in argv]
    cmd = shlex.join([".venv/bin/python", f"benchmarks/{script}", *words])
    return f"unshare -n sh -c {shlex.quote('ip link set lo up; ' + cmd)}" if netns else cmd
