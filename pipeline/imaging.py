"""Image tensors: the one uint8 <-> model-range conversion and the one sample-grid writer.

Models (generators, discriminators, FeatureNet, the detector) see float (B, C, H, W) in [-1, 1];
datasets and files hold uint8 (N, H, W, C). `to_unit_range` goes one way, `to_uint8` the other
(rounded, so uint8 -> [-1, 1] -> uint8 gives back the same pixels), and `save_grid` writes
images as one PNG grid (the train stage's per-epoch samples, generate's `grid.png`, the CLI's
`sample`).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from pipeline.io import atomic_path


def to_unit_range(images: np.ndarray | torch.Tensor,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [-1, 1], on `device` (default: where it is).

    The uint8 pixels move to `device` before the conversion (4x fewer bytes to copy).
    """
    if isinstance(images, np.ndarray):
        # Writable and contiguous (copies only when not: arrays from Ray's object store are
        # read-only, and torch warns on those).
        images = torch.from_numpy(np.require(images, requirements=("C", "W")))
    if images.dtype != torch.uint8:
        raise TypeError(f"to_unit_range expects uint8 pixels, got {images.dtype}")
    if device is not None:
        images = images.to(device)
    return images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # float() copied: in place ok


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C) on the host (rounded, clamped)."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: torch.Tensor, path: str | os.PathLike[str], nrow: int | None = None
              ) -> None:
    """Write images (N, C, H, W) in [-1, 1], C 1 or 3, as one PNG grid: `nrow` images per row
    (default: a square), 2 px black padding; atomically."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    pad = 2
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    pixels = to_uint8(images)  # (N, H, W, C)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = pixels[i]
    img = Image.fromarray(grid[:, :, 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")
    with atomic_path(path, ".png") as tmp:
        img.save(tmp, format="PNG")
