"""Perturbations a published image meets, for robustness tables and training augmentation.

All map uint8 (N, H, W, C), C 1 or 3, to uint8 of the same shape, deterministically:
- `jpeg(images, q)`: re-encode at quality q (Pillow), from `pipeline.detect.robustness`;
- `blur(images, sigma)`: Gaussian blur of std sigma pixels (scipy, reflected edges, as
  `pipeline.detect.robustness.gaussian_blur`); sigma 0 returns the images unchanged;
- `down_up(images, scale)`: bilinear resize to `scale` x the size and back (Pillow), the
  thumbnail-and-enlarge a platform does; high frequencies (GAN up-sampling traces) are lost.

`robustness_levels` names the issue's sweep: JPEG q 100 -> 30, blur sigma 0 -> 3, 0.5x down-up.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.data.arrays import check_images
from pipeline.detect.robustness import gaussian_blur, jpeg

JPEG_QUALITIES = (100, 90, 75, 50, 30)
BLUR_SIGMAS = (0.0, 0.5, 1.0, 2.0, 3.0)
DOWN_UP_SCALES = (0.5,)

__all__ = ["BLUR_SIGMAS", "DOWN_UP_SCALES", "JPEG_QUALITIES", "blur", "down_up", "jpeg",
           "robustness_levels"]


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of std `sigma` pixels over height and width; sigma 0 is the identity."""
    check_images(images, "blur")
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    return images.copy() if sigma == 0 else gaussian_blur(images, float(sigma))


def down_up(images: np.ndarray, scale: float = 0.5) -> np.ndarray:
    """Bilinear resize (Pillow, antialiased when shrinking) to round(scale * H, W), then back."""
    from PIL import Image

    check_images(images, "down_up")
    n, h, w, c = images.shape
    small = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL sizes are (W, H)
    out = np.empty_like(images)
    for i in range(n):
        for ch in range(c):
            img = Image.fromarray(images[i, :, :, ch])
            img = img.resize(small, Image.Resampling.BILINEAR)
            out[i, :, :, ch] = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR))
    return out


def robustness_levels(jpeg_qualities: tuple[int, ...] = JPEG_QUALITIES,
                      blur_sigmas: tuple[float, ...] = BLUR_SIGMAS,
                      down_up_scales: tuple[float, ...] = DOWN_UP_SCALES
                      ) -> list[tuple[str, float, Callable[[np.ndarray], np.ndarray]]]:
    """[(kind "jpeg" | "blur" | "down_up", level, transform)] in sweep order."""
    out: list[tuple[str, float, Callable[[np.ndarray], np.ndarray]]] = []
    out += [("jpeg", q, lambda x, q=q: jpeg(check_images(x, "jpeg"), int(q)))
            for q in jpeg_qualities]
    out += [("blur", s, lambda x, s=s: blur(x, s)) for s in blur_sigmas]
    out += [("down_up", s, lambda x, s=s: down_up(x, s)) for s in down_up_scales]
    return out
