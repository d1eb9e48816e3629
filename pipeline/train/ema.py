"""An exponential moving average of G's weights (Yazici et al. 2019, "The Unusual
Effectiveness of Averaging in GAN Training", ICLR), kept by rank 0.

BatchNorm needs care: averaged weights with the raw G's running statistics do not match
(a naive EMA measured no better than the raw G here), so `recompute_batchnorm` re-estimates
the EMA G's statistics from fresh forwards in train mode (a cumulative average, momentum None)
before the EMA G is sampled or saved.

    ema = GeneratorEMA(G, decay=0.999)
    ... after every G step: ema.update(G)
    ema.recompute_batchnorm(lambda: (torch.randn(256, latent, generator=gen),), batches=8)
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn


class GeneratorEMA:
    def __init__(self, generator: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(generator).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, generator: nn.Module) -> None:
        """ema = d * ema + (1 - d) * G, with d ramped up from 0 over the first steps (StyleGAN's
        warm-up: early steps would otherwise pull the average towards the random init)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in generator.parameters()],
                             1.0 - decay)

    @torch.no_grad()
    def recompute_batchnorm(self, inputs: Callable[[], tuple[torch.Tensor, ...]],
                            batches: int = 8) -> None:
        """Re-estimate every BatchNorm's running mean/var from `batches` forwards of `inputs()`."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
        self.model.train()
        for _ in range(batches):
            self.model(*inputs())
        self.model.eval()
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum

    def state_dict(self) -> dict[str, object]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[call-overload]
