"""Fault injection for the fault-tolerance tests, passed to workers as `Hooks.on_step`.

    launcher.train(params, data, models, metrics, on_step=KillAt(epoch=2, step=2, rank=1,
                                                                 marker="/tmp/killed.txt"))

`KillAt` SIGKILLs one worker once, at a given epoch and step: the marker file makes the
restarted worker group survive. It lives in the library (not in tests/) because Ray pickles it
by reference and the workers must be able to import it.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KillAt:
    epoch: int
    step: int
    rank: int
    marker: str  # written just before the kill; its presence disarms the fault
    # Ray Train V2 registers a reported checkpoint when its controller next polls the workers
    # (every 2 s): die a little later, like a real crash minutes into an epoch would.
    delay_s: float = 3.0

    def __call__(self, rank: int, epoch: int, step: int) -> None:
        """`Hooks.on_step` once bound to a rank (`functools.partial(fault, rank)`)."""
        marker = Path(self.marker)
        if (rank, epoch, step) != (self.rank, self.epoch, self.step) or marker.exists():
            return
        marker.write_text(f"killed rank {rank} at epoch {epoch} step {step}\n")
        time.sleep(self.delay_s)
        os.kill(os.getpid(), signal.SIGKILL)
