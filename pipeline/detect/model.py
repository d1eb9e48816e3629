"""The real-vs-fake detector: a small CNN, its checkpoint, and scoring images with it.

    from pipeline.detect import score_images
    p_fake = score_images("models/detector.pt", images)  # uint8 (N, H, W, C) -> (N,) in [0, 1]

The network keeps full resolution in its first layer and only then downsamples, because GAN
fingerprints live in the highest frequencies (up-convolution checkerboards, Durall et al. 2020);
global average pooling makes it size-agnostic. Checkpoint: {"format", "state_dict", "config"
(width), "image_shape" [C, H, W] (as the GAN checkpoints), "metrics"}, written and read through
`pipeline.checkpoints`: atomic, CPU tensors even when trained on a GPU, loaded weights-only.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.checkpoints import load_state, save_state
from pipeline.imaging import to_unit_range

FORMAT = "gan-forensics/detector-v1"


class Detector(nn.Module):
    """uint8-derived images (B, C, H, W) in [-1, 1] -> fake logits (B,)."""

    def __init__(self, channels: int, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),  # (B, w, H, W)
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2, inplace=True),  # (B, 2w, H/2, W/2)
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * width),
            nn.LeakyReLU(0.2, inplace=True),  # (B, 4w, H/4, W/4)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 4w)
            nn.Linear(4 * width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()  # (B,)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 256,
            device: str | torch.device = "cpu") -> np.ndarray:
    """P(fake) float64 (N,) for uint8 (N, H, W, C) images."""
    model = model.to(device).eval()
    out = [torch.sigmoid(model(to_unit_range(images[i:i + batch_size], device))).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def save_detector(path: str | os.PathLike[str], model: Detector, config: dict[str, Any],
                  image_shape: tuple[int, int, int], metrics: dict[str, float] | None = None
                  ) -> None:
    """Write the detector checkpoint atomically, its tensors on the CPU whatever device the
    model is on; image_shape is [C, H, W]."""
    save_state(path, {"format": FORMAT, "state_dict": model.state_dict(), "config": dict(config),
                      "image_shape": list(image_shape), "metrics": dict(metrics or {})})


def load_detector(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                  ) -> tuple[Detector, dict[str, Any]]:
    """(detector in eval mode, meta with config and image_shape [C, H, W])."""
    ckpt = load_state(path, FORMAT, "detector", hint="run the detect stage: dvc repro detect")
    channels = int(ckpt["image_shape"][0])
    model = Detector(channels, int(ckpt["config"]["width"]))
    model.load_state_dict(ckpt["state_dict"])
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model.to(device).eval(), meta


def score_images(detector_path: str | os.PathLike[str], images: np.ndarray,
                 batch_size: int = 256, device: str | torch.device = "cpu") -> np.ndarray:
    """P(fake) (N,) for uint8 (N, H, W, C) images, from the detector at `detector_path`.

    Images of another size or channel count are converted and resized with a warning: resizing
    smooths away the high-frequency traces the detector relies on, so such scores are weaker.
    """
    from pipeline.data.arrays import check_images
    from pipeline.data.images import convert_channels, resize_images

    images = check_images(np.asarray(images), "images")
    model, meta = load_detector(detector_path, device)
    c, h, w = meta["image_shape"]
    if images.shape[1:] != (h, w, c):
        warnings.warn(f"images {images.shape[1:]} converted to the detector's {(h, w, c)}; "
                      "resizing weakens forgery traces", stacklevel=2)
        images = resize_images(convert_channels(images, c), h)
    return predict(model, images, batch_size, device)
