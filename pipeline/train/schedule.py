"""Learning-rate schedule of a training run: constant, or a linear decay to 0 over its end.

    decay = LinearDecay([(opt_g, lr_g), (opt_d, lr_d)], start=0.5,
                        total_steps=epochs * steps_per_epoch)
    ... before every step: decay.apply(step)   # step = the run's global step, from 0

Every param group of each optimizer gets its base rate (the configured lr) times
`factor(step)`: 1 until `start` of the run's steps, then falling linearly to 0 at the step
after the last one (SN-GAN's linear decay when `start` is 0). It is a pure function of the
global step, so a resumed run continues exactly where the checkpoint left off, and it depends
on `total_steps`: a run with a decay is another run when its epochs change (identity.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class LinearDecay:
    def __init__(self, optimizers: Sequence[tuple[torch.optim.Optimizer, float]], start: float,
                 total_steps: int) -> None:
        if not 0 <= start < 1:
            raise ValueError(f"decay start must be in [0, 1), got {start}")
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        # (optimizer, base rate): the groups are looked up at every step, since an optimizer's
        # load_state_dict replaces its param_groups.
        self.optimizers = list(optimizers)
        # The last step at the full rate (the epsilon: 0.29 x 100 is 28.999... in floats).
        self.first = math.floor(start * total_steps + 1e-9)
        self.total_steps = total_steps

    def factor(self, step: int) -> float:
        """1 through step `first`, then linearly down to 1 / (total - first) at the last step
        (total_steps - 1): 0 is reached one step after the run ends."""
        if step <= self.first:
            return 1.0
        return max(0.0, (self.total_steps - step) / (self.total_steps - self.first))

    def apply(self, step: int) -> None:
        scale = self.factor(step)
        for opt, base in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = base * scale
