"""Provenance of a training run, as MLflow tags: git commit and dirty flag, the DVC hash of
the prepared data, the `dvc exp run` name, and library versions (`run_tags`, `version_tags`);
and the rule that decides which registered generator is the `champion` (`champion_blocker`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from pipeline.config import PARAMS_FILE, Params, parse_params

CHAMPION_BRANCH = "main"  # the branch whose default-profile runs give the registry its champion


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


def exp_name() -> str:
    """The DVC experiment being run, or "": `dvc exp run` sets $DVC_EXP_NAME for every
    experiment, named (`-n NAME`) or not, in the workspace and in a temp dir alike."""
    return os.environ.get("DVC_EXP_NAME", "")


def version_tags() -> dict[str, str]:
    """Tags of a registered model version: where it came from."""
    tags = {"git.commit": _git("rev-parse", "HEAD") or "unknown",
            "git.dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower()}
    if exp_name():
        tags["dvc.exp_name"] = exp_name()
    return tags


def champion_blocker(params: Params, params_file: str = PARAMS_FILE) -> str | None:
    """Why this training's generator may NOT take the registry alias `champion`; None if it may.

    The rule, all of:
      1. not inside `dvc exp run` ($DVC_EXP_NAME unset);
      2. the working directory is a git checkout on branch `main` (`CHAMPION_BRANCH`);
      3. `params` equal `params_file` as committed at HEAD, once both are validated (defaults
         filled in): `-S` overrides, uncommitted edits and other profiles never qualify.
    Uncommitted code changes do not block it; the version's `git.dirty` tag records them.
    A `ray job submit` working copy has no git, so a cluster job never takes the alias.
    """
    import yaml

    if exp_name():
        return f"trained inside `dvc exp run` ({exp_name()})"
    branch = _git("symbolic-ref", "--short", "-q", "HEAD")
    if branch != CHAMPION_BRANCH:
        return (f"git branch is {branch or 'unknown (detached or not a checkout)'}, "
                f"not {CHAMPION_BRANCH}")
    committed = _git("show", f"HEAD:./{params_file}")
    try:
        same = bool(committed) and parse_params(yaml.safe_load(committed)) == params
    except Exception:  # noqa: BLE001 - an invalid committed file simply does not qualify
        same = False
    if not same:
        return f"params differ from {params_file} as committed at HEAD"
    return None


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
    if exp_name():
        tags["dvc.exp_name"] = exp_name()
    tags.update({k: str(v) for k, v in extra.items()})
    return tags
