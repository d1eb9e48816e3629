"""One worker's GAN training loop: plain torch, no Ray (the launcher injects `Hooks`).

`train_worker(cfg, data, hooks)` builds G and D, restores the latest checkpoint if there is one,
then runs epochs of `run_epoch`, and after each epoch hands metrics plus (rank 0) a checkpoint
directory to `hooks.report`. Under Ray, `pipeline.train.launcher` supplies hooks that call
`ray.train.report/get_checkpoint`; tests and benchmarks use `LocalHooks` in-process:

    hooks = LocalHooks(Path("/tmp/ckpts"))
    train_worker(WorkerConfig(model=..., train=..., ...), arrays, hooks)
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from pipeline.config import ModelConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.io import atomic_path
from pipeline.models import (
    build_models,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    unwrap,
)
from pipeline.train.data import batches

LOG_FIELDS = ("epoch", "loss_d", "loss_g", "d_real", "d_fake", "images_per_s", "epoch_seconds")
STATE_FILE = "state.pt"  # inside a checkpoint directory; `samples/` holds the grids so far


class NonFiniteLossError(UserError):
    """A loss became NaN/inf: the run diverged (a user-facing error, not a crash to retry)."""


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, as plain picklable values (Ray ships it to every worker)."""

    model: ModelConfig
    train: TrainConfig
    seed: int
    world_size: int = 1  # the global batch is split evenly across this many ranks
    metrics_dir: str | None = None  # absolute; rank 0 writes train_log.csv + samples/ live
    tracking: dict[str, str] | None = None  # {uri, run_id, experiment_id}: rank 0 logs there
    # Fault injection for the fault-tolerance tests only: {"epoch", "step", "rank", "marker"}.
    kill_at: dict[str, Any] | None = None


@dataclass
class Hooks:
    """What the loop needs from its launcher. Defaults: one in-process rank on the CPU."""

    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prepare_model: Callable[[nn.Module], nn.Module] = lambda m: m  # DDP wrap under Ray
    # report(metrics, checkpoint_dir or None): every rank calls it once per epoch (a barrier).
    report: Callable[[dict[str, Any], Path | None], None] = lambda m, d: None
    # restore(): a context manager yielding the latest checkpoint directory, or None.
    restore: Callable[[], contextlib.AbstractContextManager[Path | None]] = (
        lambda: contextlib.nullcontext(None))


class LocalHooks(Hooks):
    """In-process hooks: checkpoints are copied to `root/epoch_XXX`, the latest is restored."""

    def __init__(self, root: Path) -> None:
        super().__init__(report=self._report, restore=self._restore)
        self.root = Path(root)
        self.reports: list[dict[str, Any]] = []  # every epoch's metrics, in order

    def _report(self, metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
        self.reports.append(metrics)
        if ckpt_dir is not None:
            shutil.copytree(ckpt_dir, self.root / f"epoch_{metrics['epoch']:03d}")

    @contextlib.contextmanager
    def _restore(self) -> Iterator[Path | None]:
        found = sorted(self.root.glob("epoch_*")) if self.root.is_dir() else []
        yield found[-1] if found else None


def _mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def _no_sync(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """DDP's no_sync (skip the gradient all-reduce) or nothing for a bare module."""
    return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":  # valid on CPU too (slow there; the GPU profile's choice)
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_epoch(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
              opt_d: torch.optim.Optimizer,
              loader: Iterator[tuple[torch.Tensor, torch.Tensor]], *, epoch: int,
              latent_dim: int, num_classes: int, noise: torch.Generator, device: torch.device,
              precision: str = "fp32", channels_last: bool = False, max_steps: int | None = None,
              step: int = 0, on_step: Callable[[int, int], None] | None = None,
              ) -> tuple[dict[str, float], int]:
    """One epoch of the non-saturating GAN; returns (rank-averaged means, global step).

    Raises `NonFiniteLossError` naming epoch and step as soon as a loss is NaN/inf (on any rank:
    the per-step statistics are averaged across ranks, so every rank stops at the same step).
    """
    criterion = nn.BCEWithLogitsLoss()
    conditional = num_classes > 0 and getattr(unwrap(G), "num_classes", 0) > 0
    totals = torch.zeros(4, dtype=torch.float64)
    steps = 0
    for real, labels in loader:
        if max_steps is not None and steps >= max_steps:
            break
        if on_step is not None:
            on_step(epoch, steps)
        if channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        b = real.size(0)
        z = torch.randn(b, latent_dim, generator=noise).to(device)  # (B, latent)
        fake_labels = (torch.randint(0, num_classes, (b,), generator=noise).to(device)
                       if conditional else None)
        ones, zeros = torch.ones(b, device=device), torch.zeros(b, device=device)

        # (1) Update D: maximise log D(x) + log(1 - D(G(z))). Real and fake go through D in
        # separate forwards (as in the DCGAN paper's code): D's BatchNorm then normalises each
        # batch by its own statistics, in this phase and in (2) alike. One mixed forward lets
        # BatchNorm leak batch-level real/fake information, and G then collapses onto a few
        # modes (measured: tops only on Fashion-MNIST, recall 0.09).
        with _autocast(precision, device):
            fake = G(z, fake_labels) if conditional else G(z)  # (B, C, H, W)
            logits_real = D(real, labels) if conditional else D(real)  # (B,)
            detached = fake.detach().to(real.dtype)
            logits_fake = D(detached, fake_labels) if conditional else D(detached)  # (B,)
            loss_d = (criterion(logits_real.float(), ones)
                      + criterion(logits_fake.float(), zeros))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        # (2) Update G: maximise log D(G(z)) (non-saturating). D's grads from this backward are
        # discarded (zeroed before D's next step): skip their all-reduce.
        with _no_sync(D), _autocast(precision, device):
            fake_in = fake.to(real.dtype)
            logits_g = D(fake_in, fake_labels) if conditional else D(fake_in)  # (B,)
            loss_g = criterion(logits_g.float(), ones)
        opt_g.zero_grad(set_to_none=True)
        with _no_sync(D):
            loss_g.backward()
        opt_g.step()

        with torch.no_grad():
            stats = torch.stack([loss_d.detach().float(), loss_g.detach().float(),
                                 torch.sigmoid(logits_real.float()).mean(),  # D(x)
                                 torch.sigmoid(logits_fake.float()).mean()]).cpu()
        stats = _mean_across_ranks(stats)
        if not torch.isfinite(stats).all():
            raise NonFiniteLossError(
                f"train: non-finite loss at epoch {epoch} step {steps} (global step {step}): "
                f"loss_d={stats[0].item():.4g} loss_g={stats[1].item():.4g}; lower "
                "train.lr_d / train.lr_g or use train.precision fp32")
        totals += stats.double()
        steps += 1
        step += 1
    if steps == 0:
        raise UserError("train: no full batch per worker; lower train.batch_size or add data")
    loss_d_, loss_g_, d_real, d_fake = (totals / steps).tolist()
    return {"loss_d": loss_d_, "loss_g": loss_g_, "d_real": d_real, "d_fake": d_fake,
            "steps": steps}, step


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> None:
    """Write images (N, C, H, W) in [-1, 1] as one PNG grid with 2 px padding (PIL)."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    pad = 2
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, C)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = pixels[i]
    img = Image.fromarray(grid[:, :, 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")
    with atomic_path(path, ".png") as tmp:
        img.save(tmp, format="PNG")


def write_log(rows: list[dict[str, Any]], path: Path) -> None:
    """The per-epoch CSV (DVC plot), rewritten whole: a resumed run never duplicates epochs."""
    with atomic_path(path, ".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _maybe_kill(kill_at: dict[str, Any] | None, rank: int, epoch: int, step: int) -> None:
    """Fault tests: SIGKILL this worker once (a marker file makes the restart survive)."""
    if not kill_at or (rank, epoch, step) != (kill_at.get("rank", 0), kill_at["epoch"],
                                              kill_at["step"]):
        return
    marker = Path(kill_at["marker"])
    if marker.exists():
        return
    marker.write_text(f"killed rank {rank} at epoch {epoch} step {step}\n")
    # Ray Train V2 registers a reported checkpoint when its controller next polls the workers
    # (every 2 s): die a little later, like a real crash minutes into an epoch would.
    time.sleep(float(kill_at.get("delay_s", 3.0)))
    os.kill(os.getpid(), signal.SIGKILL)


def _fixed_noise(cfg: WorkerConfig, num_classes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(cfg.seed + 12345)  # same grid noise every epoch/run
    z = torch.randn(cfg.train.grid_size, cfg.model.latent_dim, generator=gen)
    labels = (torch.arange(cfg.train.grid_size) % num_classes
              if cfg.model.conditional else None)
    return z, labels


def train_worker(cfg: WorkerConfig, images: np.ndarray, labels: np.ndarray,
                 class_names: list[str], hooks: Hooks) -> dict[str, Any]:
    """Train for `cfg.train.epochs` (resuming from `hooks.restore()`); return the last metrics."""
    rank, world, device = hooks.rank, cfg.world_size, hooks.device
    master = rank == 0  # logs, saves checkpoints and sample grids
    num_classes = len(class_names) or int(labels.max()) + 1
    image_shape = (images.shape[3], images.shape[1], images.shape[2])  # (C, H, W)
    local_batch = cfg.train.batch_size // world

    torch.manual_seed(cfg.seed)  # identical init on every rank (DDP also broadcasts rank 0's)
    G, D = build_models(cfg.model.model_dump(), image_shape, num_classes)
    if cfg.train.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G, D = hooks.prepare_model(G.to(device)), hooks.prepare_model(D.to(device))
    betas = (cfg.train.beta1, cfg.train.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.train.lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.train.lr_d, betas=betas)

    start_epoch, step, history = 1, 0, []  # type: int, int, list[dict[str, Any]]
    # Rank 0 keeps every epoch's grid here; each checkpoint carries them all, so a resume (or
    # the driver, maybe on another node) finds the whole run's grids in the latest checkpoint.
    samples = Path(tempfile.mkdtemp(prefix="gan-samples-"))
    with hooks.restore() as ckpt_dir:
        if ckpt_dir is not None:
            ckpt = load_checkpoint(Path(ckpt_dir) / STATE_FILE)
            unwrap(G).load_state_dict(ckpt["generator"])
            unwrap(D).load_state_dict(ckpt["discriminator"])
            opt_g.load_state_dict(ckpt["opt_g"])
            opt_d.load_state_dict(ckpt["opt_d"])
            torch.set_rng_state(ckpt["rng_torch"])
            start_epoch, step, history = ckpt["epoch"] + 1, ckpt["step"], list(ckpt["history"])
            if master:  # the grids of the epochs before the resume
                shutil.copytree(Path(ckpt_dir) / "samples", samples, dirs_exist_ok=True)
                if cfg.metrics_dir:
                    shutil.copytree(samples, Path(cfg.metrics_dir) / "samples",
                                    dirs_exist_ok=True)
            if master:
                print(f"resumed from epoch {ckpt['epoch']} (step {step})", flush=True)

    tracker = None
    if master and cfg.tracking:
        from pipeline.tracking import Tracker  # MLflow from rank 0 only

        tracker = Tracker(cfg.tracking["uri"], cfg.tracking["run_id"],
                          cfg.tracking["experiment_id"])
    sampler = DistributedSampler(range(len(images)), num_replicas=world, rank=rank,
                                 shuffle=True, seed=cfg.seed, drop_last=True)
    fixed_z, fixed_labels = _fixed_noise(cfg, num_classes)
    metrics: dict[str, Any] = history[-1] if history else {}

    for epoch in range(start_epoch, cfg.train.epochs + 1):
        sampler.set_epoch(epoch)
        # Per-rank, per-epoch noise stream: a resumed epoch replays exactly the same noise.
        noise = torch.Generator().manual_seed((cfg.seed * 1_000_003 + epoch) * 1024 + rank)
        t0 = time.perf_counter()
        stats, step = run_epoch(
            G, D, opt_g, opt_d,
            batches(images, labels, list(sampler), local_batch, device),
            epoch=epoch, latent_dim=cfg.model.latent_dim,
            num_classes=num_classes if cfg.model.conditional else 0, noise=noise, device=device,
            precision=cfg.train.precision, channels_last=cfg.train.channels_last,
            max_steps=cfg.train.max_steps_per_epoch, step=step,
            on_step=lambda e, s: _maybe_kill(cfg.kill_at, rank, e, s))
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch, **{k: stats[k] for k in LOG_FIELDS[1:5]},
                   "images_per_s": stats["steps"] * local_batch * world / seconds,
                   "epoch_seconds": seconds, "step": step}
        history.append(metrics)
        ckpt_dir = None
        if master:
            ckpt_dir = Path(tempfile.mkdtemp(prefix="gan-ckpt-"))
            _save_epoch(cfg, G, D, opt_g, opt_d, ckpt_dir, samples, history, image_shape,
                        num_classes, class_names, fixed_z, fixed_labels, device, tracker)
            print(f"epoch {epoch}/{cfg.train.epochs} loss_d={metrics['loss_d']:.3f} "
                  f"loss_g={metrics['loss_g']:.3f} D(x)={metrics['d_real']:.3f} "
                  f"D(G(z))={metrics['d_fake']:.3f} {metrics['images_per_s']:.0f} img/s "
                  f"{seconds:.1f} s", flush=True)
        try:
            hooks.report(metrics, ckpt_dir)
        finally:
            if ckpt_dir is not None:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
    shutil.rmtree(samples, ignore_errors=True)
    if tracker is not None and tracker.lost:
        print(f"warning: MLflow did not record: {'; '.join(tracker.lost[:3])}", flush=True)
    return metrics


def _save_epoch(cfg: WorkerConfig, G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer, ckpt_dir: Path, samples: Path,
                history: list[dict[str, Any]],
                image_shape: tuple[int, int, int], num_classes: int, class_names: list[str],
                fixed_z: torch.Tensor, fixed_labels: torch.Tensor | None, device: torch.device,
                tracker: Any) -> None:
    """Rank 0: checkpoint + sample grid into `ckpt_dir`, live log/grid files, MLflow."""
    epoch, step = history[-1]["epoch"], history[-1]["step"]
    g = unwrap(G)  # the bare module: a DDP forward on rank 0 alone would wait for peers
    g.eval()
    with torch.no_grad():
        grid = g(fixed_z.to(device), None if fixed_labels is None else fixed_labels.to(device))
    g.train()
    name = f"epoch_{epoch:03d}.png"
    save_grid(grid, samples / name)
    shutil.copytree(samples, ckpt_dir / "samples")
    save_checkpoint(ckpt_dir / STATE_FILE, make_checkpoint(
        model_config=cfg.model.model_dump(), image_shape=image_shape, num_classes=num_classes,
        class_names=class_names, epoch=epoch, step=step, generator=unwrap(G),
        discriminator=unwrap(D), opt_g=opt_g, opt_d=opt_d, rng_torch=torch.get_rng_state(),
        history=history))
    if cfg.metrics_dir:
        out = Path(cfg.metrics_dir)
        write_log(history, out / "train_log.csv")
        (out / "samples").mkdir(parents=True, exist_ok=True)
        shutil.copy2(samples / name, out / "samples" / name)
    if tracker is not None:
        tracker.log_metrics({f"train/{k}": history[-1][k] for k in LOG_FIELDS[1:]}, step=epoch)
        tracker.log_artifact(samples / name, "samples")
