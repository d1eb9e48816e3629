"""Per-step GAN statistics that stay on the training device (no host sync per step).

`RunningStats.add` accumulates loss_d, loss_g, D(x) and D(G(z)) on the device and flags a step
whose values are not finite. Every `check_every` steps, and at the epoch's end, `sync` reduces
the window across ranks in ONE collective on that device (under NCCL a collective tensor must
live on the GPU: torch's NCCL process group has no CPU backend) and makes the one host copy, so
every rank sees the same verdict and stops at the same step:

    stats = RunningStats(device, check_every=25)
    for step ...:
        stats.add(torch.stack([loss_d, loss_g, d_real, d_fake]))  # (4,) on the device
        if stats.due():
            stats.sync(epoch, step)       # raises NonFiniteLossError naming epoch and step
    means = stats.means(epoch, step)      # the epoch's rank-averaged means
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from pipeline.errors import UserError

STAT_NAMES = ("loss_d", "loss_g", "d_real", "d_fake")


class NonFiniteLossError(UserError):
    """A loss became NaN/inf: the run diverged (a user-facing error, not a crash to retry)."""


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class RunningStats:
    """Sums of `STAT_NAMES` on `device`; synced across ranks once per window of steps."""

    def __init__(self, device: torch.device, check_every: int = 25) -> None:
        # float64 sums where the device has it (MPS has not): 250 steps of float32 would do too.
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.check_every = check_every
        self.window = torch.zeros(len(STAT_NAMES), device=device, dtype=dtype)  # (4,)
        self.bad = torch.zeros(check_every, device=device, dtype=dtype)  # (K,) 1 = non-finite
        self.filled = 0  # steps in the current window
        self.totals = [0.0] * len(STAT_NAMES)  # host: sums over synced windows (all ranks)
        self.steps = 0  # steps synced so far this epoch

    def add(self, values: torch.Tensor) -> None:
        """One step's (4,) statistics, still on the device (no `.item()`, no `.cpu()`)."""
        values = values.detach().to(self.window.dtype)
        self.window += values
        self.bad[self.filled] = (~torch.isfinite(values).all()).to(self.bad.dtype)
        self.filled += 1

    def due(self) -> bool:
        return self.filled == self.check_every

    def sync(self, epoch: int, step: int) -> None:
        """Reduce the window across ranks (one collective); raise on a non-finite step.

        `step` is the epoch-local index of the next step, so the window covers
        `step - filled .. step - 1`."""
        if self.filled == 0:
            return
        packed = torch.cat([self.window, self.bad[: self.filled]])  # (4 + filled,) on device
        if _world_size() > 1:
            dist.all_reduce(packed)  # SUM: a flag > 0 means some rank saw a non-finite step
        host = packed.tolist()  # the window's one host sync
        flags = host[len(STAT_NAMES):]
        first = next((i for i, flag in enumerate(flags) if flag > 0), None)
        if first is not None:
            raise NonFiniteLossError(
                f"train: non-finite loss at epoch {epoch} step {step - self.filled + first}: "
                "loss_d or loss_g became NaN/inf; lower train.lr_d / train.lr_g or use "
                "train.precision fp32")
        self.totals = [t + v for t, v in zip(self.totals, host[: len(STAT_NAMES)], strict=True)]
        self.steps += self.filled
        self.window.zero_()
        self.filled = 0

    def means(self, epoch: int, step: int) -> dict[str, float]:
        """Sync what is left, then the epoch's means averaged over steps and ranks."""
        self.sync(epoch, step)
        if self.steps == 0:
            raise UserError("train: no full batch per worker; lower train.batch_size or add data")
        denom = self.steps * _world_size()
        return {name: total / denom for name, total in zip(STAT_NAMES, self.totals, strict=True)}
