"""Provenance of a training run, as MLflow tags: git commit and dirty flag, the DVC hash of
the prepared data, the `dvc exp run` name, and library versions (`run_tags`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def dvc_out_hash(out_path: str, lock_file: str | os.PathLike[str] = "dvc.lock") -> str:
    """The md5 DVC recorded in dvc.lock for `out_path` (e.g. data/prepared), or "" if unknown."""
    import yaml

    try:
        lock = yaml.safe_load(Path(lock_file).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == out_path:
                return str(out.get("md5", ""))
    return ""


def run_tags(**extra: Any) -> dict[str, str]:
    """Provenance tags: git commit (+ dirty flag), DVC data hash, DVC exp name, versions."""
    import platform

    import torch

    tags = {
        "git.commit": _git("rev-parse", "HEAD") or "unknown",
        "git.dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "dvc.data_hash": dvc_out_hash("data/prepared") or "unknown",
        "torch.version": torch.__version__,
        "python.version": platform.python_version(),
    }
    try:
        import ray

        tags["ray.version"] = ray.__version__
    except ImportError:  # pragma: no cover - ray is a hard dependency, kept optional here
        pass
    if os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run [-n NAME]`
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    tags.update({k: str(v) for k, v in extra.items()})
    return tags
