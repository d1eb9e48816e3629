"""Train the real-vs-fake detector CNN (plain torch, one process; called by `run.detect`).

    model = train_detector(real_uint8, fake_uint8, DetectConfig(epochs=2), seed=0)

Labels: real 0, fake 1, `BCEWithLogitsLoss`; balanced inputs are the caller's job. One log line
per epoch. Deterministic on the CPU for a given seed (shuffling uses its own torch.Generator).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from pipeline.config import DetectConfig
from pipeline.detect.model import Detector
from pipeline.errors import UserError
from pipeline.imaging import to_unit_range


def train_detector(real: np.ndarray, fake: np.ndarray, cfg: DetectConfig, seed: int,
                   device: str | torch.device = "cpu", log: bool = True) -> Detector:
    """Fit a `Detector` on uint8 (N, H, W, C) real (label 0) and fake (label 1) images."""
    if real.shape[1:] != fake.shape[1:]:
        raise UserError(f"detector training: real images {real.shape[1:]} and fakes "
                        f"{fake.shape[1:]} differ in shape")
    torch.manual_seed(seed)  # weight init
    model = Detector(real.shape[-1], cfg.width).to(device)
    x = torch.cat([to_unit_range(real), to_unit_range(fake)])  # (N, C, H, W) in [-1, 1], CPU
    y = torch.cat([torch.zeros(len(real)), torch.ones(len(fake))])
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    criterion = nn.BCEWithLogitsLoss()
    shuffle = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(x) / cfg.batch_size)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=shuffle)
        total, correct = 0.0, 0
        for i in range(steps):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            if len(idx) == 1:  # BatchNorm cannot train on a batch of one
                continue
            logits = model(xb)  # (B,)
            loss = criterion(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            correct += int(((logits > 0).float() == yb).sum())
        if not math.isfinite(total):
            raise UserError(f"detector training: loss became NaN in epoch {epoch}; lower "
                            f"detect.lr (now {cfg.lr})")
        if log:
            print(f"detector epoch {epoch}/{cfg.epochs}: loss {total / len(x):.4f} "
                  f"train acc {correct / len(x):.3f}", flush=True)
    return model.eval()
