"""DP-SGD of the discriminator (`train.dp`): Opacus per-sample gradients, clipping, noise and
RDP accounting around D's optimizer, and the Poisson-sampled real batches that needs.

Only D reads the training images, so only D is made private: G learns from D's outputs and
input gradients alone, post-processing of D's (epsilon, delta)-DP parameters. Under DP a D
step (`steps.GanStep`, with `PrivateDiscriminator.step`) is:

- its real batch is a Poisson sample: each training image independently with probability
  q = batch_size / N (`epoch_batches`); a batch may be empty. The fakes are always batch_size
  (here and in G's step): their count must not depend on which images were drawn.
- real and fake rows go through D in ONE forward (a DP D has no BatchNorm: rows do not mix);
  D's loss is the mean of per-row terms. Opacus' `GradSampleHooks` compute each row's gradient;
  `DPOptimizer` clips every row's to `max_grad_norm` C (fakes too: they hold no private data,
  but one bound for all rows is the simple sound choice), sums them, adds N(0, (sigma C)^2),
  divides by batch_size and lets Adam step.
- sigma is calibrated so the run's planned D steps end at the target (epsilon, delta)
  (`opacus.accountants.utils.get_noise_multiplier`, RDP); an `RDPAccountant` takes one step per
  D update at rate q. Its history travels in every checkpoint (`state_dict`), so a resumed run
  continues it and reports the uninterrupted run's epsilon.

The batches and the noise come from generators seeded by a secret drawn once per run and kept
only in the checkpoints: a seed the attacker knows (params.yaml's) would reveal every batch
and every noise draw, and the guarantee with them. A resumed epoch replays the same draws.
The per-epoch training statistics (loss_d, D(x), ...) are diagnostics, not privatised.
One process only: `config.dp_conflict` refuses more than one Ray worker.
"""

from __future__ import annotations

import contextlib
import secrets
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import GradSampleHooks
from opacus.optimizers import DPOptimizer
from torch import nn

from pipeline.config import DpConfig
from pipeline.errors import UserError
from pipeline.imaging import to_unit_range
from pipeline.train.data import DeviceArrays
from pipeline.train.steps import frozen


class PrivateDiscriminator:
    """D's DP-SGD: Opacus hooks on `D` (the bare module: checkpoints see no wrapper),
    `optimizer` (a DPOptimizer around `opt_d`, whose state stays the checkpointed one) and the
    accountant, calibrated for `steps` D updates on `num_images` images in batches of
    `batch_size` (the expected real count per step)."""

    def __init__(self, D: nn.Module, opt_d: torch.optim.Optimizer, cfg: DpConfig, *,
                 num_images: int, batch_size: int, steps: int) -> None:
        if not 0 < batch_size <= num_images:
            raise UserError(f"train.batch_size: {batch_size} is more than the {num_images} "
                            "training images")
        self.cfg, self.D, self.num_images, self.batch_size = cfg, D, num_images, batch_size
        self.sample_rate, self.planned_steps = batch_size / num_images, steps
        try:
            self.noise_multiplier = get_noise_multiplier(
                target_epsilon=cfg.epsilon, target_delta=cfg.delta,
                sample_rate=self.sample_rate, steps=steps, accountant="rdp")
        except ValueError:  # sigma past 1e6
            raise UserError(f"train.dp.epsilon: {cfg.epsilon} is too small a budget for "
                            f"{steps} steps at sample rate {self.sample_rate:.3g}") from None
        self.secret = secrets.randbits(62)  # seeds the batches and the noise (module doc)
        # Opacus' full backward hooks refuse a layer output changed in place (LeakyReLU's
        # inplace=True); the out-of-place op computes the same values.
        for module in D.modules():
            if isinstance(module, nn.LeakyReLU):
                module.inplace = False
        self.hooks = GradSampleHooks(D, loss_reduction="mean")  # refuses buffers (BatchNorm)
        self.optimizer = DPOptimizer(opt_d, noise_multiplier=self.noise_multiplier,
                                     max_grad_norm=cfg.max_grad_norm,
                                     expected_batch_size=batch_size, loss_reduction="mean")
        self.accountant = RDPAccountant()
        self.optimizer.attach_step_hook(
            self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))

    def epoch_batches(self, data: DeviceArrays, epoch: int, steps: int
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`steps` Poisson-sampled real batches of `epoch`, (float (B, C, H, W) in [-1, 1],
        labels (B,)) with B ~ Binomial(N, q), maybe 0. Reseeds the noise for the epoch too."""
        seed = (self.secret + 2 * epoch) % 2**63
        device = data.images.device
        self.optimizer.generator = torch.Generator(device=device).manual_seed(seed + 1)
        gen = torch.Generator().manual_seed(seed)

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for _ in range(steps):
                drawn = torch.rand(self.num_images, generator=gen) < self.sample_rate
                idx = drawn.nonzero().flatten().to(device)  # (B,) sorted: a faster gather
                yield to_unit_range(data.images[idx]), data.labels[idx]

        return batches()

    def step(self, loss: torch.Tensor) -> None:
        """D's update from `loss`, the mean of its per-row terms: per-row gradients (backward),
        then clip, sum, noise, scale, account and step (DPOptimizer.step)."""
        self.optimizer.zero_grad(set_to_none=True)  # p.grad and p.grad_sample
        with warnings.catch_warnings():
            # D's input needs no gradient here, so torch notes that the first layer's full
            # backward hook fires on its output gradient alone: all Opacus needs.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        self.optimizer.step()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """D as a fixed function for G's phase: its parameters need no gradient (none is
        computed, and no per-sample gradient is left for the next DP step) and Opacus' hooks
        record nothing; G's optimizer alone steps."""
        self.hooks.disable_hooks()
        try:
            with frozen(self.D):
                yield
        finally:
            self.hooks.enable_hooks()

    def steps(self) -> int:
        """D updates accounted so far (across resumes)."""
        return sum(n for _, _, n in self.accountant.history)

    def metrics(self) -> dict[str, float | int]:
        """The privacy spent so far: epsilon at the target delta, and what it was computed
        from (the `dp_*` columns of the epoch history and train.json)."""
        return {"dp_epsilon": self.accountant.get_epsilon(self.cfg.delta),
                "dp_delta": self.cfg.delta, "dp_noise_multiplier": self.noise_multiplier,
                "dp_max_grad_norm": self.cfg.max_grad_norm, "dp_sample_rate": self.sample_rate,
                "dp_steps": self.steps()}

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs: the accountant's history, the calibration, the secret seed."""
        return {"accountant": self.accountant.state_dict(), "secret": self.secret,
                "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
                "planned_steps": self.planned_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a checkpointed run; refuse one calibrated for another plan (its epsilon
        budget was spent on that plan's noise)."""
        planned = (state["planned_steps"], state["sample_rate"], state["noise_multiplier"])
        if planned != (self.planned_steps, self.sample_rate, self.noise_multiplier):
            raise UserError(
                f"train.epochs: this DP run's noise (multiplier {planned[2]:.4g}) was "
                f"calibrated for {planned[0]} D steps at sample rate {planned[1]:.4g}; these "
                f"params plan {self.planned_steps} at {self.sample_rate:.4g} (train.epochs, "
                "train.batch_size, train.dp): start a new run to train another plan")
        self.accountant.load_state_dict(state["accountant"])
        self.secret = int(state["secret"])
