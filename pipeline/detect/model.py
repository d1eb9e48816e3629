"""The forgery detectors: small CNNs, the shipped detector's checkpoint, scoring images.

    from pipeline.detect import score_images
    p_fake = score_images("models/detector.pt", images)  # uint8 (N, H, W, C) -> (N,) in [0, 1]

`Detector` is binary (real vs fake: one logit). `SourceDetector`, the shipped one, is the same
network over the classes ["real", *families]: its forward gives the fake logit
log(P(fake) / P(real)), so `predict` (a sigmoid of it) is P(fake) = 1 - P(real) for both, and
`class_probs` says which family most likely made an image. The network keeps full resolution
in its first layer and only then downsamples, because GAN fingerprints live in the highest
frequencies (up-convolution checkerboards, Durall et al. 2020); global average pooling makes it
size-agnostic. Checkpoint: {"format", "state_dict", "config" (width, classes, threshold: the
P(fake) verdict threshold calibrated on validation), "image_shape" [C, H, W] (as the GAN
checkpoints), "metrics"}, written and read through `pipeline.checkpoints`: atomic, CPU tensors
even when trained on a GPU, loaded weights-only.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.checkpoints import load_state, save_state
from pipeline.errors import UserError
from pipeline.imaging import to_unit_range

FORMAT = "gan-forensics/detector-v2"  # v1: a binary Detector without classes or threshold


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


class SourceDetector(nn.Module):
    """The Detector's network with one output per class, class 0 "real": images (B, C, H, W)
    -> the fake logit (B,) = logsumexp(family logits) - real logit; `class_logits` -> (B, K)."""

    def __init__(self, channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a SourceDetector needs real and >= 1 family, got {num_classes}")
        self.net = Detector(channels, width).net
        self.net[-1] = nn.Linear(4 * width, num_classes)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]  # (B,)


@torch.no_grad()
def class_probs(model: SourceDetector, images: np.ndarray, batch_size: int = 256,
                device: str | torch.device = "cpu") -> np.ndarray:
    """Class probabilities float64 (N, K) for uint8 (N, H, W, C) images."""
    model = model.to(device).eval()
    out = [torch.softmax(model.class_logits(to_unit_range(images[i:i + batch_size], device)),
                         dim=1).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros((0, model.net[-1].out_features))


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 256,
            device: str | torch.device = "cpu") -> np.ndarray:
    """P(fake) float64 (N,) for uint8 (N, H, W, C) images."""
    model = model.to(device).eval()
    out = [torch.sigmoid(model(to_unit_range(images[i:i + batch_size], device))).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def save_detector(path: str | os.PathLike[str], model: SourceDetector, width: int,
                  classes: list[str], threshold: float, image_shape: tuple[int, int, int],
                  metrics: dict[str, Any] | None = None) -> None:
    """Write the shipped detector's checkpoint atomically, its tensors on the CPU whatever
    device the model is on; classes[0] is "real"; image_shape is [C, H, W]."""
    if classes[0] != "real" or len(classes) != model.net[-1].out_features:
        raise ValueError(f"classes must be ['real', *families] for {model.net[-1].out_features}"
                         f" outputs, got {classes}")
    save_state(path, {"format": FORMAT, "state_dict": model.state_dict(),
                      "config": {"width": int(width), "classes": list(classes),
                                 "threshold": float(threshold)},
                      "image_shape": list(image_shape), "metrics": dict(metrics or {})})


def load_detector(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                  ) -> tuple[SourceDetector, dict[str, Any]]:
    """(detector in eval mode, meta with config {width, classes, threshold} and image_shape
    [C, H, W])."""
    ckpt = load_state(path, FORMAT, "detector", hint="run the detect stage: dvc repro detect")
    try:
        config = ckpt["config"]
        channels, width = int(ckpt["image_shape"][0]), int(config["width"])
        classes, _ = list(config["classes"]), float(config["threshold"])
        model = SourceDetector(channels, len(classes), width)
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: a broken {FORMAT} checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:120]})") from None
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
