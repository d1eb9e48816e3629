"""The GAN step's statistics under a multi-GPU (NCCL) process group, emulated on the CPU.

torch's NCCL process group has no CPU backend: a collective on a tensor the loop copied to the
host (`.cpu()`, `.to("cpu")`) fails at the first step of every multi-GPU run, and each such
copy is a host-device sync. A CPU machine cannot tell host from device, so this test emulates
the rule: two real ranks (gloo over a FileStore, separate processes) run `run_epoch`, and
in each rank

  * `Tensor.cpu()` / `Tensor.to(<cpu>)` mark the tensor they return as a host copy, and
  * `torch.distributed.all_reduce` refuses a marked tensor (what NCCL does to a CPU tensor)
    and counts its calls.

The loop must then train through the emulated NCCL rule, with one collective per
`check_every` steps (not one per step), and stop both ranks at the same step, naming it, when
one rank's loss turns NaN.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import traceback
from pathlib import Path

import pytest
import torch
from ranks import run_two_ranks

STEPS, CHECK_EVERY = 10, 4


class EmulatedNcclError(RuntimeError):
    pass


def _install_nccl_rule(counts: dict[str, int]) -> None:
    import torch.distributed as dist

    real_all_reduce, real_cpu, real_to = dist.all_reduce, torch.Tensor.cpu, torch.Tensor.to

    def mark(t: object) -> object:
        if isinstance(t, torch.Tensor):
            t._host_copy = True  # type: ignore[attr-defined]
        return t

    def cpu(self: torch.Tensor, *args: object, **kwargs: object) -> object:
        return mark(real_cpu(self, *args, **kwargs))

    def to(self: torch.Tensor, *args: object, **kwargs: object) -> object:
        out = real_to(self, *args, **kwargs)
        target = kwargs.get("device", args[0] if args else None)
        if isinstance(target, str | torch.device) and torch.device(target).type == "cpu":
            mark(out)
        return out

    def all_reduce(tensor: torch.Tensor, *args: object, **kwargs: object) -> object:
        counts["all_reduce"] += 1
        if getattr(tensor, "_host_copy", False):
            raise EmulatedNcclError("all_reduce on a host copy: NCCL has no CPU backend")
        return real_all_reduce(tensor, *args, **kwargs)

    torch.Tensor.cpu, torch.Tensor.to = cpu, to  # type: ignore[method-assign]
    dist.all_reduce = all_reduce


def _rank_main(rank: int, store_file: str, poison_rank: int | None, out: mp.Queue) -> None:
    try:
        import numpy as np
        import torch.distributed as dist
        from sklearn.datasets import load_digits

        from pipeline.models import build_models
        from pipeline.train.data import DeviceArrays
        from pipeline.train.loop import run_epoch

        torch.set_num_threads(1)
        dist.init_process_group("gloo", store=dist.FileStore(store_file, 2), rank=rank,
                                world_size=2)
        counts = {"all_reduce": 0}
        _install_nccl_rule(counts)
        d = load_digits()
        images = np.round(d.images * 255 / 16).astype(np.uint8).repeat(2, 1).repeat(2, 2)
        images = np.pad(images, ((0, 0), (6, 6), (6, 6)))[..., None]  # (N, 28, 28, 1)
        torch.manual_seed(0)
        G, D = build_models({"latent_dim": 8, "g_features": 8, "d_features": 8},
                            (1, 28, 28), 10)
        calls = {"n": 0}
        if rank == poison_rank:  # this rank's D output turns NaN at step 6 (3 forwards/step)
            def poison(module: object, args: object, output: torch.Tensor) -> torch.Tensor:
                calls["n"] += 1
                return output * float("nan") if calls["n"] == 3 * 6 + 1 else output

            D.register_forward_hook(poison)
        opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
        data = DeviceArrays.on(torch.device("cpu"), images, d.target)
        indices = list(range(rank, 2 * 16 * STEPS, 2))
        try:
            stats, step = run_epoch(G, D, opt_g, opt_d, data.batches(indices, 16), epoch=3,
                                    latent_dim=8, num_classes=0,
                                    noise=torch.Generator().manual_seed(rank),
                                    device=torch.device("cpu"), check_every=CHECK_EVERY)
            out.put((rank, "ok", {**stats, "step": step}, counts))
        except Exception as exc:  # noqa: BLE001 - reported to the test process
            out.put((rank, type(exc).__name__, str(exc), counts))
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        out.put((rank, "crash", traceback.format_exc(), {}))


def test_emulated_rule_refuses_a_host_copy() -> None:
    """The emulation itself: a `.cpu()` copy reaching all_reduce is refused."""
    counts = {"all_reduce": 0}
    real = (torch.Tensor.cpu, torch.Tensor.to)
    import torch.distributed as dist

    real_all_reduce = dist.all_reduce
    try:
        _install_nccl_rule(counts)
        with pytest.raises(EmulatedNcclError):
            dist.all_reduce(torch.zeros(4).cpu())
        with pytest.raises(EmulatedNcclError):
            dist.all_reduce(torch.zeros(4).to("cpu"))
    finally:
        torch.Tensor.cpu, torch.Tensor.to = real  # type: ignore[method-assign]
        dist.all_reduce = real_all_reduce
    assert counts["all_reduce"] == 2


def test_two_ranks_train_under_the_nccl_rule_with_few_collectives(tmp_path: Path) -> None:
    results = run_two_ranks(_rank_main, tmp_path / "store", None)
    for rank in (0, 1):
        status, stats, counts = results[rank]
        assert status == "ok", (rank, stats)
        assert stats["steps"] == STEPS and stats["step"] == STEPS
        # One collective per window of CHECK_EVERY steps plus the epoch's tail, not one a step.
        assert counts["all_reduce"] == math.ceil(STEPS / CHECK_EVERY), counts
        assert 0 < stats["d_fake"] < 1 and 0 < stats["d_real"] < 1
    # The means are reduced across ranks: both ranks report the same numbers.
    assert results[0][1] == results[1][1]


def test_nan_on_one_rank_stops_both_at_the_same_named_step(tmp_path: Path) -> None:
    results = run_two_ranks(_rank_main, tmp_path / "store", 1)
    for rank in (0, 1):
        status, message, _ = results[rank]
        assert status == "NonFiniteLossError", (rank, message)
        assert "non-finite loss at epoch 3 step 6:" in message, message
