"""The host a benchmark ran on, for its JSON: hosts of this VM kind differ in CPU generation, and
the GEMM rate does not follow the training speed across them (README "Results"), so every result
file names its CPU; and the command that wrote a result file, with its arguments."""

from __future__ import annotations

import contextlib
import platform
import shlex
from pathlib import Path


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


ROOT = Path(__file__).resolve().parents[1]


def command_line(script: str, argv: list[str], netns: bool = False) -> str:
    """The command that makes a result file again: `script` with the arguments it was given
    (`argv`, i.e. sys.argv[1:]); a path inside the repo is shown relative to it (committed
    results hold no absolute path); `netns`: inside `unshare -n`, as the script's docstring
    runs it."""
    words = [str(Path(a).resolve().relative_to(ROOT))
             if a.startswith("/") and Path(a).resolve().is_relative_to(ROOT) else a for a in argv]
    cmd = shlex.join([".venv/bin/python", f"benchmarks/{script}", *words])
    return f"unshare -n sh -c {shlex.quote('ip link set lo up; ' + cmd)}" if netns else cmd
