"""Training arrays: read `train.npz` (local path or storage URI) and cut per-rank batches.

Kept behind `load_train_arrays` until `pipeline.data` provides the shared loader. Batches are
built by indexing the uint8 NHWC array (no DataLoader: the data is in memory, and Ray ships it
through the object store), then scaled to float [-1, 1] NCHW one batch at a time.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import UserError

IMAGE_SIZES = (28, 32, 64)


@dataclass(frozen=True)
class TrainArrays:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64
    class_names: list[str]
    sha256: str  # of the .npz file: part of the training run's name

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W), the layout the models use."""
        _, h, w, c = self.images.shape
        return c, h, w

    @property
    def num_classes(self) -> int:
        return len(self.class_names) or int(self.labels.max()) + 1


def _read(path: str) -> bytes:
    if "://" in path:
        from pipeline.cluster import read_bytes  # shared storage (s3://, ...) via pyarrow

        return read_bytes(path)
    if not Path(path).is_file():
        raise UserError(f"{path}: not found; run `dvc repro prepare` first")
    return Path(path).read_bytes()


def load_train_arrays(path: str | Path) -> TrainArrays:
    """Read and validate `images` uint8 (N,H,W,C), `labels` int (N,), `class_names`."""
    path = str(path)
    blob = _read(path)
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: not a readable .npz ({exc})") from None
    for key in ("images", "labels"):
        if key not in arrays:
            raise UserError(f"{path}: missing array '{key}' (has {sorted(arrays)})")
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"{path}: images must be uint8 (N, H, W, C) with C in 1/3, got "
                        f"{images.dtype} {images.shape}")
    if images.shape[1] != images.shape[2] or images.shape[1] not in IMAGE_SIZES:
        raise UserError(f"{path}: images must be square {IMAGE_SIZES} px, got "
                        f"{images.shape[1]}x{images.shape[2]}")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype,
                                                                             np.integer):
        raise UserError(f"{path}: labels must be integers (N,) = ({len(images)},), got "
                        f"{labels.dtype} {labels.shape}")
    if len(images) == 0 or labels.min() < 0:
        raise UserError(f"{path}: no images, or negative labels")
    names = [str(n) for n in arrays.get("class_names", np.array([]))]
    if names and labels.max() >= len(names):
        raise UserError(f"{path}: label {labels.max()} >= {len(names)} class_names")
    return TrainArrays(images, labels.astype(np.int64), names,
                       hashlib.sha256(blob).hexdigest())


def to_model_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [-1, 1] on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def batches(images: np.ndarray, labels: np.ndarray, indices: list[int], batch_size: int,
            device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Full batches of `indices` in order (a trailing partial batch is dropped: every rank
    must run the same number of DDP steps)."""
    for start in range(0, len(indices) - batch_size + 1, batch_size):
        idx = np.sort(np.asarray(indices[start : start + batch_size]))  # sorted: faster gather
        yield to_model_input(images[idx], device), torch.from_numpy(labels[idx]).to(device)
