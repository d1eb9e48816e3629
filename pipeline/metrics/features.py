"""Feature extractors for the metrics: the domain FeatureNet and Inception-v3, one interface.

An `Extractor` maps uint8 NHWC image batches to (B, D) float features; its `identity` (the
FeatureNet file's sha256 or the Inception sha1, the device and the torch version: see
`cache.feature_source`) goes into the real-feature cache key. On CUDA, building an extractor
turns TF32 off (`pipeline.device.exact_fp32`): GPU features then match CPU features closely.

    ex = domain_extractor("models/featurenet.pt", device)   # or inception_extractor(device)
    feats = extract(images, ex, batch_size=500)              # (N, D) float32 numpy
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.device import exact_fp32
from pipeline.errors import UserError
from pipeline.io import sha256_file
from pipeline.metrics.cache import feature_source


@dataclass(frozen=True)
class Extractor:
    space: str  # "domain" | "inception": the metric-name component
    identity: str  # what produced the features (weights, device, torch), for cache keys
    forward: Callable[[torch.Tensor], torch.Tensor]  # uint8 (B, H, W, C) on device -> (B, D)
    device: torch.device
    image_shape: tuple[int, int, int] | None = None  # required input (H, W, C); None = any


def domain_extractor(featurenet_path: str | os.PathLike[str],
                     device: torch.device | str = "cpu") -> Extractor:
    """FeatureNet penultimate-layer features (4 * width dims)."""
    from pipeline.imaging import to_unit_range
    from pipeline.metrics.featurenet import load_featurenet

    device = torch.device(device)
    exact_fp32(device)
    model, meta = load_featurenet(featurenet_path, device)
    return Extractor("domain", feature_source("featurenet:" + sha256_file(featurenet_path),
                                              device),
                     lambda x: model.features(to_unit_range(x)), device,
                     tuple(meta["image_shape"]))


def inception_extractor(device: torch.device | str = "cpu") -> Extractor:
    """Inception-v3 pool3 features (2048 dims) with the documented preprocessing."""
    from pipeline.metrics.inception import INCEPTION_SHA1, load_inception, preprocess

    device = torch.device(device)
    exact_fp32(device)
    model = load_inception(device)
    return Extractor("inception", feature_source("inception:" + INCEPTION_SHA1.lower(), device),
                     lambda x: model(preprocess(x)), device)


@torch.no_grad()
def extract(images: np.ndarray, ex: Extractor, batch_size: int = 500,
            desc: str | None = None, where: str | os.PathLike[str] = "images") -> np.ndarray:
    """Features (N, D) float32 of uint8 (N, H, W, C) images; UserError on bad shape or NaN."""
    from tqdm import tqdm

    if images.dtype != np.uint8 or images.ndim != 4:
        raise UserError(f"{where}: images must be uint8 (N, H, W, C), got "
                        f"{images.dtype} {images.shape}")
    if ex.image_shape is not None and tuple(images.shape[1:]) != tuple(ex.image_shape):
        raise UserError(f"{where}: images are {tuple(images.shape[1:])} (H, W, C) but the "
                        f"{ex.space} feature net was trained on {tuple(ex.image_shape)}; "
                        "rerun the featurenet stage on this data")
    out = []
    steps = range(0, len(images), batch_size)
    for i in tqdm(steps, desc=desc or f"{ex.space} features", leave=False, mininterval=2,
                  disable=len(steps) < 3):
        batch = torch.from_numpy(images[i : i + batch_size]).to(ex.device)
        out.append(ex.forward(batch).float().cpu().numpy())
    feats = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    if not np.isfinite(feats).all():
        raise UserError(f"{where}: {ex.space} features contain NaN/inf")
    return feats
