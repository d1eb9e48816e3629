"""FeatureNet: the small CNN classifier whose penultimate layer is the "domain" feature space.

Trained by the `featurenet` stage on the real training split (`stages/featurenet.py`); FID, KID
and precision/recall in domain space use `FeatureNet.features`: the ReLU'd hidden layer before
the logits (4 * width dims). Square 28/32/64 px inputs, 1 or 3 channels; images enter as uint8
NHWC and `pipeline.imaging.to_unit_range` scales them to [-1, 1] NCHW, the range the DCGAN
generator outputs.

The checkpoint is a plain dict (`{format, state_dict, config, image_shape, num_classes,
accuracy}`) written and read through `pipeline.checkpoints` (atomic, CPU tensors,
weights-only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.checkpoints import load_state, save_state
from pipeline.config import FeatureNetConfig
from pipeline.errors import UserError
from pipeline.imaging import to_unit_range

FORMAT = "gan-forensics/featurenet-v1"


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class FeatureNet(nn.Module):
    """(conv-BN-ReLU, max-pool) x2 -> flatten -> linear 4w + ReLU (features) -> linear logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32,
                 image_size: int = 28) -> None:
        super().__init__()
        w, side = width, image_size // 4
        self.body = nn.Sequential(
            *_block(in_channels, w), nn.MaxPool2d(2),  # (B, w, H/2, W/2)
            *_block(w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
            nn.Flatten(),  # (B, 2w * H/4 * W/4)
            nn.Linear(2 * w * side * side, 4 * w), nn.ReLU(),  # (B, 4w): the feature vector
        )
        self.head = nn.Linear(4 * w, num_classes)
        self.feature_dim = 4 * w

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, 4w) of [-1, 1] NCHW input."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # logits (B, num_classes)


def save_featurenet(path: str | os.PathLike[str], model: FeatureNet, config: dict[str, Any],
                    image_shape: tuple[int, int, int], accuracy: float) -> None:
    """Write the checkpoint dict atomically (only CPU tensors and plain Python values)."""
    save_state(path, {
        "format": FORMAT,
        "state_dict": model.state_dict(),
        "config": dict(config),
        "image_shape": [int(s) for s in image_shape],  # (H, W, C)
        "num_classes": int(model.head.out_features),
        "accuracy": float(accuracy),
    })


def load_featurenet(path: str | os.PathLike[str],
                    device: torch.device | str = "cpu") -> tuple[FeatureNet, dict[str, Any]]:
    """Load a FeatureNet checkpoint in eval mode; returns (model, checkpoint metadata)."""
    ckpt = load_state(path, FORMAT, "FeatureNet checkpoint",
                      hint="run the featurenet stage: dvc repro featurenet")
    try:
        h, w, c = ckpt["image_shape"]
        model = FeatureNet(c, ckpt["num_classes"], int(ckpt["config"]["width"]), h)
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = (f"no {exc} entry" if isinstance(exc, KeyError)
                 else str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise UserError(f"{path}: not a FeatureNet checkpoint ({first})") from None
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model.to(device).eval(), meta


@torch.no_grad()
def accuracy(model: FeatureNet, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 500, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of `model` on uint8 NHWC images."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = to_unit_range(images[i : i + batch_size], device)
        pred = model(x).argmax(1).cpu().numpy()
        correct += int((pred == labels[i : i + batch_size]).sum())
    return correct / max(len(images), 1)


def train_featurenet(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                     num_classes: int, width: int = 32, epochs: int = 3, batch_size: int = 128,
                     lr: float = 1e-3, seed: int = 0, device: torch.device | str = "cpu",
                     log: Any = print) -> tuple[FeatureNet, list[dict[str, float]]]:
    """Train a FeatureNet with Adam (cosine-decayed lr) on (uint8 NHWC images, labels).

    One log line per epoch. Returns the model (eval mode) and per-epoch
    `{epoch, loss, val_accuracy}`.
    """
    from tqdm import tqdm

    images, labels = train
    torch.manual_seed(seed)
    model = FeatureNet(images.shape[-1], num_classes, width, images.shape[1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # Cosine decay to 0 over all steps: +~1 point test accuracy at the same 3-epoch budget.
    steps = epochs * -(-len(images) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        total, seen = 0.0, 0
        batches = range(0, len(order), batch_size)
        for i in tqdm(batches, desc=f"featurenet epoch {epoch}", leave=False, mininterval=2):
            idx = order[i : i + batch_size]
            x, y = to_unit_range(x_all[idx], device), y_all[idx].to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        val_acc = accuracy(model, *val, device=device) if len(val[0]) else float("nan")
        history.append({"epoch": epoch, "loss": total / seen, "val_accuracy": val_acc})
        log(f"featurenet epoch {epoch}/{epochs}: loss {total / seen:.4f}  val acc {val_acc:.4f}")
    return model.eval(), history


def run_featurenet(data_dir: str | os.PathLike[str], model_path: str | os.PathLike[str],
                   cfg: FeatureNetConfig, seed: int, device: torch.device | str = "cpu",
                   log: Any = print) -> dict[str, Any]:
    """The featurenet stage: train on train.npz, validate on val.npz, score test.npz, save.

    Returns the metrics for metrics/featurenet.json (accuracies, epochs, seconds).
    """
    import time

    from pipeline.data.arrays import load_split

    data_dir = Path(data_dir)
    train, test = load_split(data_dir / "train.npz"), load_split(data_dir / "test.npz")
    val_path = data_dir / "val.npz"
    val = load_split(val_path) if val_path.is_file() else train._replace(
        images=train.images[:0], labels=train.labels[:0])
    for name, split in (("val", val), ("test", test)):
        if len(split.images) and split.images.shape[1:] != train.images.shape[1:]:
            raise UserError(f"{data_dir}/{name}.npz: images {split.images.shape[1:]} differ "
                            f"from train.npz {train.images.shape[1:]}")
    if len(train.images) == 0:
        raise UserError(f"{data_dir}/train.npz: no images")
    h, w, c = train.images.shape[1:]
    if h != w or h % 4:
        raise UserError(f"{data_dir}/train.npz: FeatureNet needs square images with a side "
                        f"divisible by 4 (28/32/64), got {h}x{w}")
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    model, history = train_featurenet(
        (train.images, train.labels), (val.images, val.labels), len(train.class_names),
        cfg.width, cfg.epochs, cfg.batch_size, cfg.lr, seed, device, log)
    train_seconds = time.perf_counter() - start
    test_acc = accuracy(model, test.images, test.labels, device=device)
    save_featurenet(model_path, model, cfg.model_dump(), (h, w, c), test_acc)
    return {
        "test_accuracy": test_acc,
        "val_accuracy": history[-1]["val_accuracy"] if len(val.images) else None,
        "train_loss": history[-1]["loss"],
        "epochs": cfg.epochs,
        "feature_dim": model.feature_dim,
        "num_train": len(train.images),
        "train_seconds": round(train_seconds, 1),
        "images_per_second": round(cfg.epochs * len(train.images) / train_seconds, 1),
    }
