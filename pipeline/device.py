"""Device choice for the stages that run outside Ray (featurenet, evaluate, detect; `generate`
always runs on the CPU, see pipeline/generate.py).

`auto` picks CUDA when torch sees a GPU, else the CPU; asking for `cuda` on a machine without
one is a one-line `UserError` naming the params key, before any work starts.

On CUDA these stages compute in full float32: TF32 (the default for cuDNN convolutions on
Ampere and newer GPUs) keeps only 10 mantissa bits, enough to move FID, KID and detector scores
away from what the same weights give on the CPU. `exact_fp32` turns it off, so a number depends
on the data and the weights, not on which device measured it (up to float32 rounding).
"""

from __future__ import annotations

import torch

from pipeline.errors import UserError


def exact_fp32(device: torch.device) -> None:
    """On CUDA: no TF32 in matmuls or cuDNN convolutions (process-wide). A no-op on the CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def resolve_device(setting: str, key: str = "device") -> torch.device:
    """`auto` -> cuda when available else cpu; `cuda` without a GPU is a UserError. A CUDA
    device comes with TF32 turned off (`exact_fp32`)."""
    if setting == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif setting not in ("cpu", "cuda"):
        raise UserError(f"{key}: must be auto, cpu or cuda, got {setting!r}")
    elif setting == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key}: cuda requested but torch sees no CUDA GPU here; use auto or cpu")
    else:
        device = torch.device(setting)
    exact_fp32(device)
    return device
