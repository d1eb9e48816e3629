"""The `prepare` stage's work: validate `data/raw/`, split train/val, write the .npz splits.

    python stages/prepare.py --raw data/raw --out data/prepared --metrics metrics/data.json

Reads the raw IDX files with our reader (pipeline.data.idx), checks them against manifest.json
(sha256, counts, label range, shapes), resizes to data.image_size when the raw size differs,
holds out data.val_fraction of train (seeded), and replaces `out/` with {train,val,test}.npz
atomically. Returns the data report the stage writes to metrics/data.json (a plain DVC out,
not a metric: dataset counts are not what experiments compare).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.arrays import save_split
from pipeline.data.idx import read_images, read_labels
from pipeline.data.images import convert_channels, resize_images
from pipeline.data.sources import (
    IDX_FILES,
    MANIFEST,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    sha256_file,
)
from pipeline.data.split import split_indices
from pipeline.errors import UserError
from pipeline.io import atomic_dir

SPLITS = ("train", "val", "test")
FETCH_HINT = "run `dvc repro fetch` (python stages/fetch.py --out data/raw)"


def read_manifest(raw: Path) -> dict[str, Any]:
    """manifest.json of a raw dir, with its class_names checked."""
    path = raw / MANIFEST
    if not raw.is_dir():
        raise UserError(f"{raw}: not a directory; {FETCH_HINT}")
    if not path.is_file():
        raise UserError(f"{path}: not found; {FETCH_HINT}")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: invalid JSON ({exc})") from None
    names = manifest.get("class_names") if isinstance(manifest, dict) else None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise UserError(f"{path}: class_names must be a non-empty list of strings")
    return manifest


def verify_files(raw: Path, manifest: dict[str, Any]) -> None:
    """Every IDX file exists and matches the sha256 fetch recorded (catches edits/corruption)."""
    recorded = manifest.get("files") or {}
    for name in IDX_FILES:
        path = raw / name
        if not path.is_file():
            raise UserError(f"{path}: missing; {FETCH_HINT}")
        want = (recorded.get(name) or {}).get("sha256")
        if want and (got := sha256_file(path)) != want:
            raise UserError(f"{path}: sha256 {got} does not match {MANIFEST} ({want}); "
                            f"{FETCH_HINT}")


def read_pair(raw: Path, images_name: str, labels_name: str,
              num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W, C), labels (N,)) of one IDX pair, counts and label range checked."""
    images, labels = read_images(raw / images_name), read_labels(raw / labels_name)
    if len(images) != len(labels):
        raise UserError(f"{raw / labels_name}: {len(labels)} labels but {images_name} has "
                        f"{len(images)} images")
    if len(labels) == 0:
        raise UserError(f"{raw / images_name}: no images (N = 0)")
    if labels.max() >= num_classes:
        i = int(np.argmax(labels >= num_classes))
        raise UserError(f"{raw / labels_name}: label {labels[i]} at index {i} is outside "
                        f"[0, {num_classes}) ({MANIFEST} lists {num_classes} class_names)")
    return images, labels


def conform(images: np.ndarray, data: DataConfig) -> np.ndarray:
    """To data.image_size (bilinear) and data.channels; untouched when they already match."""
    return resize_images(convert_channels(images, data.channels), data.image_size)


def split_stats(images: np.ndarray) -> tuple[float, float]:
    """Pixel mean and std in [0, 1], exact, from a 256-bin histogram (no float copy of N*H*W*C)."""
    hist = np.bincount(images.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = float(hist @ values / hist.sum())
    return mean, float(np.sqrt(hist @ (values - mean) ** 2 / hist.sum()))


def prepare_dataset(raw: str | os.PathLike[str], out: str | os.PathLike[str], data: DataConfig,
                    seed: int) -> dict[str, Any]:
    """Validate `raw`, write `out`/{train,val,test}.npz atomically, return the data report."""
    raw, out = Path(raw), Path(out)
    manifest = read_manifest(raw)
    names: list[str] = manifest["class_names"]
    verify_files(raw, manifest)
    train_x, train_y = read_pair(raw, TRAIN_IMAGES, TRAIN_LABELS, len(names))
    test_x, test_y = read_pair(raw, TEST_IMAGES, TEST_LABELS, len(names))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(f"{raw / TEST_IMAGES}: images are {test_x.shape[1:]} but "
                        f"{TRAIN_IMAGES} has {train_x.shape[1:]} (H, W, C)")
    train_x, test_x = conform(train_x, data), conform(test_x, data)
    keep, val = split_indices(train_y, data.val_fraction, seed)
    splits = {"train": (train_x[keep], train_y[keep]), "val": (train_x[val], train_y[val]),
              "test": (test_x, test_y)}
    with atomic_dir(out) as tmp:
        for split, (images, labels) in splits.items():
            save_split(tmp / f"{split}.npz", images, labels, names)
    mean, std = split_stats(splits["train"][0])
    return {
        "dataset": manifest.get("dataset", "unknown"),
        "image_shape": list(train_x.shape[1:]),  # (H, W, C)
        "num_classes": len(names),
        "counts": {s: len(y) for s, (_, y) in splits.items()} | {"total": len(train_y) +
                                                                  len(test_y)},
        "class_counts": {s: dict(zip(names, np.bincount(y, minlength=len(names)).tolist(),
                                     strict=True)) for s, (_, y) in splits.items()},
        "train_pixel_mean": round(mean, 6),
        "train_pixel_std": round(std, 6),
    }
