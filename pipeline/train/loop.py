"""One worker's training loop for every forger family: plain torch, no Ray (the launcher
injects `Hooks`).

`train_worker(cfg, images, labels, class_names, hooks)` builds G and D of `model.arch` (a VAE:
decoder and encoder; the steps of each family are in `steps.py`), restores the latest
checkpoint if there is one, then runs epochs of `run_epoch`, and after each epoch hands metrics
plus (rank 0) a checkpoint directory to `hooks.report`. The worker writes no file of its own:
everything the driver needs (weights, per-epoch history, sample grids) travels in the
checkpoint, so rank 0 may run on any node. Under Ray, `pipeline.train.launcher` supplies hooks
that call `ray.train.report/get_checkpoint`; tests and benchmarks use `LocalHooks` in-process:

    hooks = LocalHooks(Path("/tmp/ckpts"))
    train_worker(WorkerConfig(model=..., train=..., seed=0), images, labels, names, hooks)

With `train.dp.enabled`, D trains with DP-SGD (`pipeline.privacy.dp`: Poisson-sampled batches,
Opacus): every epoch's metrics then carry the privacy spent (`dp_epsilon`, ...) and every
checkpoint the accountant, so a resumed run continues its accounting.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from pipeline.config import ModelConfig, TrainConfig, dp_conflict, resolve_arch
from pipeline.errors import UserError
from pipeline.imaging import save_grid
from pipeline.models import (
    build_models,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    unwrap,
)
from pipeline.train.data import DeviceArrays
from pipeline.train.ema import GeneratorEMA
from pipeline.train.schedule import LinearDecay
from pipeline.train.stats import STAT_NAMES, NonFiniteLossError, RunningStats
from pipeline.train.steps import GanStep, VaeStep

if TYPE_CHECKING:  # Opacus is imported only when DP is on
    from pipeline.privacy.dp import PrivateDiscriminator

__all__ = ["DDP_OPTIONS", "LOG_FIELDS", "STATE_FILE", "Hooks", "LocalHooks", "NonFiniteLossError",
           "WorkerConfig", "log_fields", "make_optimizers", "run_epoch", "train_worker"]

LOG_FIELDS = ("epoch", "loss_d", "loss_g", "d_real", "d_fake", "images_per_s", "epoch_seconds")
DP_LOG_FIELD = "dp_epsilon"  # a DP run's extra column: the privacy spent after each epoch
STATE_FILE = "state.pt"  # inside a checkpoint directory; `samples/` holds the grids so far
# How DDP wraps G and D (the launcher's `prepare_model`). Buffers are synced once, when DDP
# wraps the model, not at every forward: by default DDP copies rank 0's buffers to every rank at
# the start of three of a GAN step's four forwards, a collective that waits for the slowest
# rank. BatchNorm's running statistics then follow each rank's own batches (the checkpoint
# keeps rank 0's; the EMA generator re-estimates its own); the weights stay identical, since
# their gradients are all-reduced. Spectral norm's power-iteration vector depends on the
# weights alone, so it stays identical too.
DDP_OPTIONS: dict[str, Any] = {"forward_sync_buffers": False}


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, as plain picklable values (Ray ships it to every worker)."""

    model: ModelConfig
    train: TrainConfig
    seed: int
    world_size: int = 1  # the global batch is split evenly across this many ranks
    tracking: dict[str, str] | None = None  # {uri, run_id, experiment_id}: rank 0 logs there
    check_every: int = 25  # steps between non-finite checks (one collective + one host sync)

    def __post_init__(self) -> None:
        # `model.arch`'s preset, as params.yaml gets it (pipeline.config.resolve_arch): a config
        # built in code, e.g. ModelConfig(arch="sngan") and a default TrainConfig, trains that.
        model, train = resolve_arch(self.model.model_dump(), self.train.model_dump())
        object.__setattr__(self, "model", ModelConfig(**model))
        object.__setattr__(self, "train", TrainConfig(**train))


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
    # on_step(epoch, step) before every step: fault injection in tests (pipeline.train.faults).
    on_step: Callable[[int, int], None] = lambda epoch, step: None


class LocalHooks(Hooks):
    """In-process hooks: checkpoints are copied to `root/epoch_XXX`, the latest is restored."""

    def __init__(self, root: Path, **hooks: Any) -> None:
        super().__init__(report=self._report, restore=self._restore, **hooks)
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


def log_fields(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The per-epoch log's columns for a run whose history has `row`: LOG_FIELDS, plus
    dp_epsilon for a DP run (a non-DP log keeps exactly LOG_FIELDS)."""
    return (*LOG_FIELDS, DP_LOG_FIELD) if DP_LOG_FIELD in row else LOG_FIELDS


def effective_precision(precision: str, device: torch.device) -> str:
    """`precision`, except bf16 on a CUDA GPU without native bf16 (before sm80, e.g. T4/V100):
    torch emulates it there, slower than fp32, so fall back to fp32 with a warning."""
    if (precision == "bf16" and device.type == "cuda"
            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        warnings.warn(f"train.precision: bf16 is emulated on {torch.cuda.get_device_name(device)}"
                      " (no native bf16 before sm80); training in fp32", stacklevel=2)
        return "fp32"
    return precision


def run_epoch(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
              opt_d: torch.optim.Optimizer,
              loader: Iterator[tuple[torch.Tensor, torch.Tensor]], *, epoch: int,
              latent_dim: int, num_classes: int, noise: torch.Generator, device: torch.device,
              precision: str = "fp32", loss: str = "ns", r1_gamma: float = 0.0,
              diffaugment: Sequence[str] = (), ema: GeneratorEMA | None = None,
              mode_seeking: float = 0.0, max_steps: int | None = None, step: int = 0,
              check_every: int = 25,
              on_step: Callable[[int, int], None] | None = None, n_critic: int = 1,
              dp: PrivateDiscriminator | None = None,
              schedule: LinearDecay | None = None) -> tuple[dict[str, float], int]:
    """One epoch of training; returns (rank-averaged means, global step).

    `loss` is `ns`, `hinge` or `wgan-gp` (a GAN step, `steps.GanStep`) or `elbo` (a VAE step:
    G is the decoder, D the encoder); `r1_gamma` > 0 adds the R1 penalty to D's loss;
    `diffaugment` names DiffAugment policies applied before every D forward; `ema`, if given,
    is updated after every G step; `mode_seeking` > 0 adds MSGAN's term to G's loss. A step is
    one batch: it updates D, and every `n_critic`-th step (the epoch's first included) G too;
    `dp` makes D's updates DP-SGD (`loader` then yields its Poisson batches,
    `PrivateDiscriminator.epoch_batches`); `schedule` sets both rates before every step from
    the global `step` (the run's, from 0). `loader` yields device
    batches; `noise` is a generator on `device`. The per-step statistics stay on the device;
    every `check_every` steps and at the end they are reduced across ranks (`RunningStats`),
    which raises `NonFiniteLossError` naming the epoch and step of the first NaN/inf loss on
    any rank, so every rank stops together.
    """
    if loss == "elbo":
        train_step: GanStep | VaeStep = VaeStep(
            G, D, opt_g, opt_d, latent_dim=latent_dim, noise=noise, device=device,
            precision=precision, ema=ema)
    else:
        train_step = GanStep(G, D, opt_g, opt_d, loss=loss, latent_dim=latent_dim, noise=noise,
                             device=device, num_classes=num_classes, precision=precision,
                             r1_gamma=r1_gamma, diffaugment=diffaugment, ema=ema,
                             mode_seeking=mode_seeking, dp=dp)
    stats = RunningStats(device, check_every)
    steps = 0
    for real, labels in loader:
        if max_steps is not None and steps >= max_steps:
            break
        if on_step is not None:
            on_step(epoch, steps)
        if schedule is not None:
            schedule.apply(step)
        stats.add(train_step(real, labels, g_step=steps % n_critic == 0))  # (4,)
        steps += 1
        step += 1
        if stats.due():
            stats.sync(epoch, steps)
    return {**stats.means(epoch, steps), "steps": steps}, step


def _fixed_noise(cfg: WorkerConfig, num_classes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(cfg.seed + 12345)  # same grid noise every epoch/run
    z = torch.randn(cfg.train.grid_size, cfg.model.latent_dim, generator=gen)
    labels = (torch.arange(cfg.train.grid_size) % num_classes
              if cfg.model.conditional else None)
    return z, labels


def _epoch_noise(cfg: WorkerConfig, epoch: int, rank: int, device: torch.device
                 ) -> torch.Generator:
    """Per-rank, per-epoch noise stream on `device`: a resumed epoch replays the same noise."""
    return torch.Generator(device=device).manual_seed(
        (cfg.seed * 1_000_003 + epoch) * 1024 + rank)


def _steps_per_epoch(cfg: WorkerConfig, num_images: int) -> int:
    """Steps of one epoch: full batches of this rank's shard, capped by max_steps_per_epoch."""
    steps = num_images // cfg.world_size // (cfg.train.batch_size // cfg.world_size)
    return min(steps, cfg.train.max_steps_per_epoch or steps)


def _make_private(cfg: WorkerConfig, D: nn.Module, opt_d: torch.optim.Optimizer,
                  num_images: int) -> PrivateDiscriminator:
    """D's DP-SGD, its noise calibrated for every D step of `cfg.train.epochs` epochs."""
    problem = dp_conflict(cfg.model, cfg.train, cfg.world_size)  # configs built in code too
    if problem:
        raise UserError(problem)
    from pipeline.privacy.dp import PrivateDiscriminator

    return PrivateDiscriminator(
        unwrap(D), opt_d, cfg.train.dp, num_images=num_images,
        batch_size=cfg.train.batch_size,
        steps=cfg.train.epochs * _steps_per_epoch(cfg, num_images))


def make_optimizers(G: nn.Module, D: nn.Module,
                    train: TrainConfig) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """G's and D's Adam (`train.lr_g`, `lr_d`, `beta1`, `beta2`), fused: one kernel steps all
    of a model's parameters (on CPU, Adam's default steps them one by one: 1.86x the time for
    the default G and D, `benchmarks/step_anatomy.py`). The same update, to float rounding."""
    betas = (train.beta1, train.beta2)
    return (torch.optim.Adam(G.parameters(), lr=train.lr_g, betas=betas, fused=True),
            torch.optim.Adam(D.parameters(), lr=train.lr_d, betas=betas, fused=True))


def train_worker(cfg: WorkerConfig, images: np.ndarray, labels: np.ndarray,
                 class_names: list[str], hooks: Hooks) -> dict[str, Any]:
    """Train for `cfg.train.epochs` (resuming from `hooks.restore()`); return the last metrics.

    Raises `UserError` when the restored run is already past `cfg.train.epochs`."""
    rank, world, device = hooks.rank, cfg.world_size, hooks.device
    master = rank == 0  # logs, saves checkpoints and sample grids
    num_classes = len(class_names) or int(labels.max()) + 1
    image_shape = (images.shape[3], images.shape[1], images.shape[2])  # (C, H, W)
    local_batch = cfg.train.batch_size // world
    precision = effective_precision(cfg.train.precision, device)
    data = DeviceArrays.on(device, images, labels)

    torch.manual_seed(cfg.seed)  # identical init on every rank (DDP also broadcasts rank 0's)
    G, D = build_models(cfg.model.model_dump(), image_shape, num_classes)
    if cfg.train.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G, D = hooks.prepare_model(G.to(device)), hooks.prepare_model(D.to(device))
    opt_g, opt_d = make_optimizers(G, D, cfg.train)
    # Rank 0 keeps the EMA (every rank's G is the same after DDP's all-reduce).
    ema = GeneratorEMA(unwrap(G), cfg.train.ema_decay) if master and cfg.train.ema_decay else None
    dp = _make_private(cfg, D, opt_d, len(images)) if cfg.train.dp.enabled else None
    schedule = None
    if cfg.train.lr_decay_start is not None:
        schedule = LinearDecay([(opt_g, cfg.train.lr_g), (opt_d, cfg.train.lr_d)],
                               cfg.train.lr_decay_start,
                               cfg.train.epochs * _steps_per_epoch(cfg, len(images)))

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
            if ema is not None and "generator_ema" in ckpt:
                ema.load_state_dict(ckpt["generator_ema"])
            if (dp is None) != ("dp" not in ckpt):
                raise UserError(f"train.dp.enabled: {dp is not None}, but this run's checkpoint "
                                "was trained the other way; start a new run")
            if dp is not None:
                dp.load_state_dict(ckpt["dp"])
            start_epoch, step, history = ckpt["epoch"] + 1, ckpt["step"], list(ckpt["history"])
            if master:  # the grids of the epochs before the resume
                shutil.copytree(Path(ckpt_dir) / "samples", samples, dirs_exist_ok=True)
                print(f"resumed from epoch {ckpt['epoch']} (step {step})", flush=True)
    if start_epoch > cfg.train.epochs + 1:
        raise UserError(f"train.epochs: {cfg.train.epochs}, but this run has already trained "
                        f"{start_epoch - 1} epochs; raise train.epochs to continue it, or "
                        "delete its directory under ray.storage_path to start over")

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
        t0 = time.perf_counter()
        batches = (data.batches(list(sampler), local_batch, cfg.train.channels_last)
                   if dp is None else
                   dp.epoch_batches(data, epoch, _steps_per_epoch(cfg, len(images))))
        stats, step = run_epoch(
            G, D, opt_g, opt_d, batches,
            epoch=epoch, latent_dim=cfg.model.latent_dim,
            num_classes=num_classes if cfg.model.conditional else 0,
            noise=_epoch_noise(cfg, epoch, rank, device), device=device, precision=precision,
            loss=cfg.train.loss, r1_gamma=cfg.train.r1_gamma, diffaugment=cfg.train.diffaugment,
            ema=ema, mode_seeking=cfg.train.mode_seeking,
            max_steps=cfg.train.max_steps_per_epoch, step=step,
            check_every=cfg.check_every, on_step=hooks.on_step, n_critic=cfg.train.n_critic or 1,
            dp=dp, schedule=schedule)
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch, **{k: stats[k] for k in STAT_NAMES},
                   "images_per_s": stats["steps"] * local_batch * world / seconds,
                   "epoch_seconds": seconds, "step": step}
        if cfg.train.loss == "elbo":  # a VAE has no D outputs: empty in the CSV, not in MLflow
            metrics.update(d_real=None, d_fake=None)
        if dp is not None:  # the privacy spent so far (the accountant spans resumes)
            metrics.update(dp.metrics())
        history.append(metrics)
        ckpt_dir = None
        if master:
            ckpt_dir = Path(tempfile.mkdtemp(prefix="gan-ckpt-"))
            _save_epoch(cfg, G, D, opt_g, opt_d, ema, ckpt_dir, samples, history, image_shape,
                        num_classes, class_names, fixed_z, fixed_labels, device, tracker, dp)
            privacy = f" epsilon={metrics['dp_epsilon']:.3f}" if dp is not None else ""
            print(f"epoch {epoch}/{cfg.train.epochs} {_stats_line(cfg.train.loss, metrics)} "
                  f"{metrics['images_per_s']:.0f} img/s {seconds:.1f} s{privacy}", flush=True)
        try:
            hooks.report(metrics, ckpt_dir)
        finally:
            if ckpt_dir is not None:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
    shutil.rmtree(samples, ignore_errors=True)
    if tracker is not None and tracker.lost:
        print(f"warning: MLflow did not record: {'; '.join(tracker.lost[:3])}", flush=True)
    return metrics


def _stats_line(loss: str, m: dict[str, Any]) -> str:
    """The epoch line's statistics, named for what they are in this objective (steps.py)."""
    if loss == "elbo":
        return f"loss_d={m['loss_d']:.3f} (KL) loss_g={m['loss_g']:.3f} (-ELBO)"
    real, fake = ("critic(x)", "critic(G(z))") if loss == "wgan-gp" else ("D(x)", "D(G(z))")
    return (f"loss_d={m['loss_d']:.3f} loss_g={m['loss_g']:.3f} {real}={m['d_real']:.3f} "
            f"{fake}={m['d_fake']:.3f}")


def _sample_generator(cfg: WorkerConfig, G: nn.Module, ema: GeneratorEMA | None,
                      num_classes: int, device: torch.device) -> nn.Module:
    """The generator users get: the EMA one (BatchNorm statistics re-estimated from a fixed
    noise stream, so every epoch's estimate is comparable), else the bare trained G."""
    if ema is None:
        return unwrap(G)  # the bare module: a DDP forward on rank 0 alone would wait for peers
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 777)
    batch = 256

    def inputs() -> tuple[torch.Tensor, ...]:
        z = torch.randn(batch, cfg.model.latent_dim, generator=gen, device=device)
        if not cfg.model.conditional:
            return (z,)
        return z, torch.randint(0, num_classes, (batch,), generator=gen, device=device)

    ema.recompute_batchnorm(inputs, batches=8)
    return ema.model


def _save_epoch(cfg: WorkerConfig, G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
                opt_d: torch.optim.Optimizer, ema: GeneratorEMA | None, ckpt_dir: Path,
                samples: Path, history: list[dict[str, Any]],
                image_shape: tuple[int, int, int], num_classes: int, class_names: list[str],
                fixed_z: torch.Tensor, fixed_labels: torch.Tensor | None, device: torch.device,
                tracker: Any, dp: PrivateDiscriminator | None = None) -> None:
    """Rank 0: checkpoint (G, D, EMA, optimizers, RNG, DP accountant) + every sample grid so far
    into `ckpt_dir`; the epoch's metrics and grid to MLflow. With an EMA, the grid shows the
    EMA generator."""
    epoch, step = history[-1]["epoch"], history[-1]["step"]
    g = _sample_generator(cfg, G, ema, num_classes, device)
    was_training = g.training
    g.eval()
    with torch.no_grad():
        grid = g(fixed_z.to(device), None if fixed_labels is None else fixed_labels.to(device))
    g.train(was_training)
    name = f"epoch_{epoch:03d}.png"
    save_grid(grid, samples / name)
    shutil.copytree(samples, ckpt_dir / "samples")
    extra = {"generator_ema": ema.state_dict()} if ema is not None else {}
    if dp is not None:
        extra["dp"] = dp.state_dict()
    save_checkpoint(ckpt_dir / STATE_FILE, make_checkpoint(
        model_config=cfg.model.model_dump(), image_shape=image_shape, num_classes=num_classes,
        class_names=class_names, epoch=epoch, step=step, generator=unwrap(G),
        discriminator=unwrap(D), opt_g=opt_g, opt_d=opt_d, rng_torch=torch.get_rng_state(),
        history=history, **extra))
    if tracker is not None:
        row = history[-1]
        tracker.log_epoch({k: row[k] for k in log_fields(row)[1:]}, epoch, samples / name)
