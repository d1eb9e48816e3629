"""The worker loop in-process (no Ray): losses, resume, determinism, NaN, bf16, outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import ModelConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.models import build_models, load_checkpoint
from pipeline.train.data import DeviceArrays
from pipeline.train.loop import (
    STATE_FILE,
    LocalHooks,
    NonFiniteLossError,
    WorkerConfig,
    run_epoch,
    train_worker,
)


def digits(size: int = 28) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """sklearn's 8x8 digits upscaled to uint8 (N, size, size, 1): tiny real images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:, None].astype(np.float32) / 16.0)
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return images, d.target.astype(np.int64), [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return digits()


def config(tmp_path: Path, **train: object) -> WorkerConfig:
    defaults = {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 6, "grid_size": 16}
    return WorkerConfig(model=ModelConfig(latent_dim=16, g_features=8, d_features=8),
                        train=TrainConfig(**{**defaults, **train}), seed=0)


def test_trains_and_checkpoints_history_and_grids(tmp_path: Path, data, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the worker writes no file of its own (rank 0 may be remote)
    hooks = LocalHooks(tmp_path / "ckpt")
    last = train_worker(config(tmp_path, epochs=3, max_steps_per_epoch=15), *data, hooks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    losses = [r["loss_d"] for r in hooks.reports]
    assert [r["epoch"] for r in hooks.reports] == [1, 2, 3] and last["step"] == 45
    assert all(np.isfinite([r[k] for r in hooks.reports for k in ("loss_d", "loss_g")]))
    assert losses[-1] < losses[0]  # D learns to tell digits from an untrained G
    assert 0 < last["d_fake"] < last["d_real"] < 1 and last["images_per_s"] > 0
    history = load_checkpoint(tmp_path / "ckpt" / "epoch_003" / STATE_FILE)["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3] and history == hooks.reports
    grid = Image.open(tmp_path / "ckpt" / "epoch_003" / "samples" / "epoch_003.png")
    assert grid.mode == "L" and grid.size == (4 * 30 + 2, 4 * 30 + 2)  # 4x4 of 28 px + pad 2
    assert sorted(p.name for p in (tmp_path / "ckpt" / "epoch_003" / "samples").iterdir()) == [
        "epoch_001.png", "epoch_002.png", "epoch_003.png"]


def test_same_seed_same_losses(tmp_path: Path, data) -> None:
    runs = []
    for name in ("a", "b"):
        hooks = LocalHooks(tmp_path / name)
        train_worker(config(tmp_path / name, epochs=1), *data, hooks)
        runs.append((hooks.reports[0]["loss_d"], hooks.reports[0]["loss_g"]))
    assert runs[0] == runs[1]


def test_resume_continues_exactly(tmp_path: Path, data) -> None:
    straight = LocalHooks(tmp_path / "straight")
    train_worker(config(tmp_path / "s", epochs=3), *data, straight)
    resumed = LocalHooks(tmp_path / "resumed")
    train_worker(config(tmp_path / "r", epochs=2), *data, resumed)
    train_worker(config(tmp_path / "r", epochs=3), *data, resumed)
    assert [r["epoch"] for r in resumed.reports] == [1, 2, 3]  # epochs 1-2 not redone
    assert resumed.reports[-1]["loss_d"] == straight.reports[-1]["loss_d"]
    assert resumed.reports[-1]["step"] == 18
    history = load_checkpoint(tmp_path / "resumed" / "epoch_003" / STATE_FILE)["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]  # history restored, no duplicates


def test_epochs_below_the_trained_run_is_a_user_error(tmp_path: Path, data) -> None:
    hooks = LocalHooks(tmp_path / "ckpt")
    train_worker(config(tmp_path, epochs=2, max_steps_per_epoch=2), *data, hooks)
    train_worker(config(tmp_path, epochs=2, max_steps_per_epoch=2), *data, hooks)  # done: no-op
    assert len(hooks.reports) == 2
    with pytest.raises(UserError, match="train.epochs: 1, but this run has already trained 2"):
        train_worker(config(tmp_path, epochs=1, max_steps_per_epoch=2), *data, hooks)


@pytest.mark.parametrize("d_conditioning", ["plane", "projection"])
def test_conditional_bf16_channels_last_on_cpu(tmp_path: Path, data, d_conditioning) -> None:
    cfg = config(tmp_path, epochs=1, max_steps_per_epoch=3, precision="bf16",
                 channels_last=True)
    cfg = WorkerConfig(**{**cfg.__dict__, "model": ModelConfig(
        latent_dim=16, g_features=8, d_features=8, conditional=True, embed_dim=4,
        d_conditioning=d_conditioning)})
    hooks = LocalHooks(tmp_path / "ckpt")
    last = train_worker(cfg, *data, hooks)
    assert np.isfinite(last["loss_d"]) and np.isfinite(last["loss_g"])


def test_nonfinite_loss_names_epoch_and_step(data) -> None:
    images, labels, _ = data
    G, D = build_models({"latent_dim": 16, "g_features": 8, "d_features": 8}, (1, 28, 28), 10)
    calls = {"n": 0}

    def poisoned(module, args, output):  # 3 D forwards a step: the 4th is step 1, D phase
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 4 else output

    D.register_forward_hook(poisoned)
    opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    loader = DeviceArrays.on(torch.device("cpu"), images, labels).batches(list(range(256)), 32)
    # Checked every 3 steps: the error still names the step that went bad, not the check's.
    with pytest.raises(NonFiniteLossError, match=r"epoch 7 step 1: "):
        run_epoch(G, D, opt_g, opt_d, loader, epoch=7, latent_dim=16, num_classes=0,
                  noise=torch.Generator().manual_seed(0), device=torch.device("cpu"),
                  check_every=3)


class _Interrupted(Exception):
    pass


def test_lr_decay_changes_training_and_resumes_exactly(tmp_path: Path, data) -> None:
    """A run with a decay, stopped after epoch 2 of 3 and restarted from its checkpoint, ends
    where the uninterrupted run does; a constant-rate run does not."""
    def cfg() -> WorkerConfig:
        return config(tmp_path, epochs=3, lr_g=1e-3, lr_d=2e-3, lr_decay_start=0.3)

    straight = LocalHooks(tmp_path / "straight")
    train_worker(cfg(), *data, straight)
    constant = LocalHooks(tmp_path / "constant")
    train_worker(config(tmp_path, epochs=3, lr_g=1e-3, lr_d=2e-3), *data, constant)

    resumed = LocalHooks(tmp_path / "resumed")
    report = resumed.report

    def stop_after_epoch_2(metrics: dict, ckpt_dir: Path | None) -> None:
        report(metrics, ckpt_dir)
        if metrics["epoch"] == 2:
            raise _Interrupted

    resumed.report = stop_after_epoch_2
    with pytest.raises(_Interrupted):
        train_worker(cfg(), *data, resumed)
    train_worker(cfg(), *data, resumed)
    assert [r["epoch"] for r in resumed.reports] == [1, 2, 3]
    last = {k: resumed.reports[-1][k] for k in ("loss_d", "loss_g", "step")}
    assert last == {k: straight.reports[-1][k] for k in last}
    # The decay starts after step floor(0.3 x 18) = 5: epoch 1 (steps 0-5) is the constant
    # run's; the last step (17) ran at (18 - 17) / (18 - 5) of each optimizer's own rate.
    assert straight.reports[0]["loss_d"] == constant.reports[0]["loss_d"]
    assert straight.reports[-1]["loss_d"] != constant.reports[-1]["loss_d"]
    last_state = load_checkpoint(tmp_path / "resumed" / "epoch_003" / STATE_FILE)
    train = cfg().train
    assert last_state["opt_g"]["param_groups"][0]["lr"] == pytest.approx(train.lr_g / 13)
    assert last_state["opt_d"]["param_groups"][0]["lr"] == pytest.approx(train.lr_d / 13)
