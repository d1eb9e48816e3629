"""Device choice for the stages that run outside Ray (featurenet, evaluate, detect).

`auto` picks CUDA when torch sees a GPU, else the CPU; asking for `cuda` on a machine without
one is a one-line `UserError` naming the params key, before any work starts.
"""

from __future__ import annotations

import torch

from pipeline.errors import UserError


def resolve_device(setting: str, key: str = "device") -> torch.device:
    """`auto` -> cuda when available else cpu; `cuda` without a GPU is a UserError."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting not in ("cpu", "cuda"):
        raise UserError(f"{key}: must be auto, cpu or cuda, got {setting!r}")
    if setting == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key}: cuda requested but torch sees no CUDA GPU here; use auto or cpu")
    return torch.device(setting)
