"""Train a real-vs-fake detector or a source detector, optionally with blur+JPEG augmentation.

    spec = TrainSpec(epochs=2, width=16, aug_prob=0.5, seed=0)
    det = train_detector(real_uint8, fake_uint8, spec)            # pipeline.detect.Detector
    src = train_attributor([real, dcgan_fakes, vae_fakes], spec)  # SourceDetector, 3 classes

Both are the CNN of `pipeline.detect.model` (binary `Detector`, or `SourceDetector` with one output
per class, class 0 the real images). Augmentation follows CNNDetection (Wang et al. CVPR 2020,
"Blur+JPEG (p)"): each training image, independently, is Gaussian-blurred with sigma ~
U[0, blur_max] (CNNDetection: 3) with probability p, then JPEG re-encoded at quality ~
U{30..100} with probability p. Fresh draws every epoch from one seeded numpy stream; weights
initialised under a forked torch RNG: the same seed gives the same model on the CPU, and the
caller's global RNG is left alone. The learning rate is constant, or (`lr_schedule="cosine"`)
annealed per step from `lr` to 0 over the whole run (Loshchilov & Hutter 2017, without
restarts), so the weights kept are not the last noisy step of a constant-rate walk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from pipeline.detect.model import Detector, SourceDetector
from pipeline.detect.robustness import gaussian_blur, jpeg
from pipeline.errors import UserError
from pipeline.imaging import to_unit_range


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 3  # passes over the training images
    batch_size: int = 64  # images per step
    lr: float = 1e-3  # Adam, betas (0.5, 0.999) as the detect stage
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: lr -> 0 at the last step
    width: int = 32  # Detector width (channels of its first conv)
    # p of blur and, independently, of JPEG per image: 0 = none, 0.5 = CNNDetection's default
    aug_prob: float = 0.0
    blur_max: float = 3.0  # sigma ~ U[0, blur_max]
    jpeg_min: int = 30  # quality ~ U{jpeg_min..100}
    seed: int = 0  # weights, shuffling and augmentation draws


def augment(images: np.ndarray, spec: TrainSpec, rng: np.random.Generator) -> np.ndarray:
    """CNNDetection's blur+JPEG on uint8 (N, H, W, C): per image, blur then JPEG, each with
    probability spec.aug_prob (a copy; the input is not modified)."""
    out = images.copy()
    if spec.aug_prob <= 0:
        return out
    do_blur = rng.random(len(out)) < spec.aug_prob
    sigmas = rng.uniform(0.0, spec.blur_max, len(out))
    do_jpeg = rng.random(len(out)) < spec.aug_prob
    qualities = rng.integers(spec.jpeg_min, 101, len(out))  # inclusive of 100
    for i in range(len(out)):
        if do_blur[i] and sigmas[i] > 0:
            out[i:i + 1] = gaussian_blur(out[i:i + 1], float(sigmas[i]))
        if do_jpeg[i]:
            out[i:i + 1] = jpeg(out[i:i + 1], int(qualities[i]))
    return out


def make_schedule(opt: torch.optim.Optimizer, spec: TrainSpec, total_steps: int
                  ) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step schedule of `spec.lr_schedule` over `total_steps` optimizer steps: constant,
    or cosine from spec.lr at step 0 to 0 after the last."""
    if spec.lr_schedule == "constant":
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    if spec.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {spec.lr_schedule!r}")


def _fit(model: nn.Module, images: np.ndarray, targets: torch.Tensor, loss_fn: nn.Module,
         spec: TrainSpec, device: torch.device | str, name: str, log: bool,
         logits: Callable[[torch.Tensor], torch.Tensor] | None = None) -> nn.Module:
    """The shared loop: shuffled batches, augmented on the fly, Adam; one log line per epoch.
    `logits`: what the loss sees (default: the model's forward)."""
    model = model.to(device)
    logits = logits or model
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, betas=(0.5, 0.999))
    shuffle = torch.Generator().manual_seed(spec.seed)
    rng = np.random.default_rng([spec.seed, 13])  # augmentation draws, own stream
    steps = math.ceil(len(images) / spec.batch_size)
    schedule = make_schedule(opt, spec, spec.epochs * steps)
    for epoch in range(1, spec.epochs + 1):
        model.train()
        order = torch.randperm(len(images), generator=shuffle).numpy()
        total = 0.0
        for i in range(steps):
            idx = np.sort(order[i * spec.batch_size:(i + 1) * spec.batch_size])
            if len(idx) < 2:  # BatchNorm cannot train on a batch of one
                schedule.step()
                continue
            xb = to_unit_range(augment(images[idx], spec, rng), device)  # (B, C, H, W)
            loss = loss_fn(logits(xb), targets[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * len(idx)
        if not math.isfinite(total):
            raise UserError(f"{name} training: loss became NaN in epoch {epoch}; lower the lr "
                            f"(now {spec.lr})")
        if log:
            print(f"{name} epoch {epoch}/{spec.epochs}: loss {total / len(images):.4f}, "
                  f"next lr {opt.param_groups[0]['lr']:.6g}", flush=True)
    return model.eval()


def _check(sets: list[np.ndarray], name: str) -> None:
    shapes = {s.shape[1:] for s in sets}
    if len(shapes) != 1 or any(s.dtype != np.uint8 or s.ndim != 4 for s in sets):
        raise UserError(f"{name} training: every set must be uint8 (N, H, W, C) of one shape, "
                        f"got {[(s.dtype.name, s.shape) for s in sets]}")
    if any(len(s) == 0 for s in sets):
        raise UserError(f"{name} training: an image set is empty")


def train_detector(real: np.ndarray, fake: np.ndarray, spec: TrainSpec,
                   device: torch.device | str = "cpu", log: bool = False) -> Detector:
    """A `Detector` fitted on real (label 0) vs fake (label 1) uint8 (N, H, W, C) images;
    balance is the caller's job."""
    _check([real, fake], "detector")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = Detector(real.shape[-1], spec.width)
    images = np.concatenate([real, fake])
    targets = torch.cat([torch.zeros(len(real)), torch.ones(len(fake))])
    return _fit(model, images, targets, nn.BCEWithLogitsLoss(), spec, device, "detector", log)


def train_attributor(sets: list[np.ndarray], spec: TrainSpec,
                     device: torch.device | str = "cpu", log: bool = False) -> SourceDetector:
    """A `SourceDetector` over len(sets) classes; class k is every image of sets[k] (sets[0]:
    the real images)."""
    _check(sets, "attributor")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = SourceDetector(sets[0].shape[-1], len(sets), spec.width)
    images = np.concatenate(sets)
    targets = torch.cat([torch.full((len(s),), k, dtype=torch.long) for k, s in enumerate(sets)])
    return _fit(model, images, targets, nn.CrossEntropyLoss(), spec, device, "attributor", log,
                logits=model.class_logits)
