"""Image perturbations for the detector's robustness check: JPEG re-encoding and Gaussian blur.

Both map uint8 (N, H, W, C) to uint8 of the same shape, deterministically. `run.run_detect`
applies each to the real AND the fake test images alike, for all three detectors (a platform
recompresses every upload, not only the forgeries; transforming only the fakes would let a
detector score the transform's own artifact). Only `detector_auc_<t>_fakes_only` transforms the
fakes alone, beside clean reals, for comparison.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Re-encode every image as JPEG at `quality` (PIL, 4:2:0 for RGB) and decode it back."""
    from PIL import Image

    out = np.empty_like(images)
    gray = images.shape[-1] == 1
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if gray else img).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        decoded = np.asarray(Image.open(buf).convert("L" if gray else "RGB"))
        out[i] = decoded[..., None] if gray else decoded
    return out


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Blur height and width with a Gaussian of std `sigma` pixels (scipy, reflected edges)."""
    from scipy.ndimage import gaussian_filter

    blurred = gaussian_filter(images.astype(np.float32), sigma=(0, sigma, sigma, 0),
                              mode="reflect")
    return np.clip(np.round(blurred), 0, 255).astype(np.uint8)


def perturbations(jpeg_quality: int, blur_sigma: float
                  ) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """{metric suffix: transform}; suffixes carry the setting (`jpeg75`, `blur1.0`)."""
    sigma = float(blur_sigma)
    return {f"jpeg{jpeg_quality}": lambda x: jpeg(x, jpeg_quality),
            f"blur{sigma}": lambda x: gaussian_blur(x, sigma)}
