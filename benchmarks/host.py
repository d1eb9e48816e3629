"""The host a benchmark ran on, for its JSON: hosts of this VM kind differ in CPU generation, and
the GEMM rate does not follow the training speed across them (README "Results"), so every result
file names its CPU."""

from __future__ import annotations

import contextlib
import platform
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
