"""The generator as a self-contained MLflow model: one float tensor in, images out.

MLflow's PyTorch flavour calls `model(x)` with a single tensor. For an unconditional G that is
`z` (B, latent_dim); for a conditional one the class id rides in one extra last column,
(B, latent_dim + 1), so the logged signature still describes the whole input.

    sampler = Sampler(G, latent_dim=100, conditional=False)
    images = sampler(torch.randn(8, 100))              # (8, C, H, W) in [-1, 1]
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Sampler(nn.Module):
    """Wraps G for serving: `z` or `[z, class_id]` float32 -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, generator: nn.Module, latent_dim: int, conditional: bool) -> None:
        super().__init__()
        self.generator = generator.eval()
        self.latent_dim = latent_dim
        self.conditional = conditional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conditional:
            z, labels = x[:, : self.latent_dim], x[:, self.latent_dim].long()
            return self.generator(z, labels)
        return self.generator(x)

    def input_example(self, n: int = 2, seed: int = 0) -> np.ndarray:
        """A float32 example input (what MLflow stores beside the model)."""
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, self.latent_dim)).astype(np.float32)
        if self.conditional:
            z = np.concatenate([z, np.zeros((n, 1), np.float32)], axis=1)
        return z
