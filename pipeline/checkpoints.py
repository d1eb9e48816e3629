"""Checkpoint files: plain dicts of tensors and config, written atomically with every tensor on
the CPU, read back weights-only with a format check. Every `.pt` this project writes goes
through here (GAN, FeatureNet, detector checkpoints).

    save_state("models/detector.pt", {"format": FORMAT, "state_dict": model.state_dict(), ...})
    ckpt = load_state("models/detector.pt", FORMAT, "detector", hint="run the detect stage")

CPU tensors make a file written on a GPU machine load anywhere, with or without
`map_location`. `torch.load(weights_only=True)` unpickles only tensors and plain Python values,
so a checkpoint never runs code; the `format` key says which kind of checkpoint a file is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.io import atomic_path


def to_cpu(obj: Any) -> Any:
    """`obj` with every tensor inside (nested dicts, lists, tuples) detached and on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(v) for v in obj)
    return obj


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """`torch.save(to_cpu(state))` to a temp file beside `path`, then rename: never a partial
    file, never a CUDA tensor. Saved through a file object, so the archive's inner name is
    torch's fixed default, not the temp file's random name: equal states give equal bytes."""
    with atomic_path(path, ".pt") as tmp, open(tmp, "wb") as f:
        torch.save(to_cpu(state), f)


def load_state(path: str | os.PathLike[str], expected_format: str, what: str,
               hint: str | None = None) -> dict[str, Any]:
    """The checkpoint dict at `path` (tensors on the CPU), after checking its `format` key.

    Every problem is a one-line `UserError` naming the file: `<path>: <what> not found`,
    `not a readable checkpoint`, or `not a <expected_format> checkpoint`; `hint` (how to make
    the file, e.g. "run the train stage") is appended in parentheses to the first and last.
    """
    path = Path(path)
    suffix = f" ({hint})" if hint else ""
    if not path.is_file():
        raise UserError(f"{path}: {what} not found{suffix}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != expected_format:
        raise UserError(f"{path}: not a {expected_format} checkpoint{suffix}")
    return ckpt
