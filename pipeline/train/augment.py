"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training",
NeurIPS, arXiv:2006.10738): the same random, differentiable transforms applied to real and fake
images before every D forward, in D's and in G's phase, so D cannot overfit the real set and G
still gets gradients through the transform.

    x = diff_augment(x, ("translation", "cutout"), generator)   # (B, C, H, W) -> same shape

Policies (as in the paper): `color` (brightness +-0.5, contrast x0.5..1.5, and saturation
x0..2 for RGB), `translation` (integer shifts up to 1/8 of the side, zero fill), `cutout` (one
zeroed square of half the side per image). Randomness comes from `generator` (on the images'
device), so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _uniform(b: int, like: torch.Tensor, gen: torch.Generator, lo: float, hi: float
             ) -> torch.Tensor:
    return torch.rand(b, 1, 1, 1, generator=gen, device=like.device, dtype=like.dtype) \
        * (hi - lo) + lo  # (B, 1, 1, 1)


def color(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b = x.size(0)
    x = x + _uniform(b, x, gen, -0.5, 0.5)  # brightness
    if x.size(1) == 3:  # saturation: around each pixel's channel mean
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * _uniform(b, x, gen, 0.0, 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # contrast: around the image mean
    return (x - mean) * _uniform(b, x, gen, 0.5, 1.5) + mean


def translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sy, sy + 1, (b, 1, 1), generator=gen, device=x.device)
    tx = torch.randint(-sx, sx + 1, (b, 1, 1), generator=gen, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + ty + 1  # (B, H, 1) in padded coords
    cols = torch.arange(w, device=x.device).view(1, 1, w) + tx + 1  # (B, 1, W)
    rows, cols = rows.clamp(0, h + 1), cols.clamp(0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1))  # a zero border: shifted-in pixels read zeros
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=_format(x))


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=gen, device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=gen, device=x.device)
    dy = torch.arange(h, device=x.device).view(1, h, 1) - cy + ch // 2  # (B, H, 1)
    dx = torch.arange(w, device=x.device).view(1, 1, w) - cx + cw // 2  # (B, 1, W)
    # The square (clipped at the border, as in the paper): offsets 0..ch-1 from its corner.
    inside = (dy >= 0) & (dy < ch) & (dx >= 0) & (dx < cw)  # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def _format(x: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous() else torch.contiguous_format)


POLICIES = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: Sequence[str], gen: torch.Generator) -> torch.Tensor:
    """Apply the policies in the paper's order (color, translation, cutout)."""
    for name in ("color", "translation", "cutout"):
        if name in policy:
            x = POLICIES[name](x, gen)
    return x
