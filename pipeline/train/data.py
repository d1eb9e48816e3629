"""Training arrays: read `train.npz` (local path or storage URI) and cut per-rank batches.

Batches are built by indexing the uint8 NHWC images where they live: `DeviceArrays` moves the
whole (small) training set to the training device once, so a step copies nothing from the host
and never blocks on a pageable transfer; each batch is scaled to float [-1, 1] on the device.
There is no DataLoader: the data is in memory, and Ray ships it through the object store.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.config import IMAGE_SIZES
from pipeline.errors import UserError
from pipeline.imaging import to_unit_range


@dataclass(frozen=True)
class TrainArrays:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64
    class_names: list[str]
    sha256: str  # of the .npz file: part of the training run's name


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


def split_path(train_npz: str | Path, split: str) -> str:
    """The prepared `split` file next to `train_npz` (a local path or a storage URI)."""
    head, _, _ = str(train_npz).rpartition("/")
    return f"{head}/{split}.npz" if head else f"{split}.npz"


def member_indices(n: int, num_images: int | None, seed: int) -> np.ndarray:
    """Which of the `n` images a run with `train.num_images` learns from: the first
    `num_images` of a permutation seeded by `seed`, sorted (all of them when None). The privacy
    audit draws its members from exactly these."""
    if num_images is None:
        return np.arange(n)
    if num_images > n:
        raise UserError(f"train.num_images: {num_images} is more than the {n} images of the "
                        "training split")
    return np.sort(np.random.default_rng(seed).permutation(n)[:num_images])


def training_arrays(train_npz: str | Path, split: str, num_images: int | None,
                    seed: int) -> TrainArrays:
    """The arrays G learns from: `train.split`'s file, cut to `train.num_images`."""
    arrays = load_train_arrays(split_path(train_npz, split) if split != "train" else train_npz)
    keep = member_indices(len(arrays.images), num_images, seed)
    if len(keep) == len(arrays.images):
        return arrays
    return TrainArrays(arrays.images[keep], arrays.labels[keep], arrays.class_names,
                       arrays.sha256)


@dataclass(frozen=True)
class DeviceArrays:
    """The training set on the training device: images uint8 (N, H, W, C), labels int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def on(cls, device: torch.device, images: np.ndarray, labels: np.ndarray) -> DeviceArrays:
        # One host-to-device copy for the whole run (Fashion-MNIST: 42 MB of uint8). Arrays
        # from Ray's object store are read-only: copy them (torch wants writable memory).
        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.require(a, requirements=("C", "W"))).to(device)

        return cls(tensor(images), tensor(labels))

    def batches(self, indices: list[int], batch_size: int, channels_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Full batches of `indices` in order, as (float (B, C, H, W) in [-1, 1], labels (B,)).

        A trailing partial batch is dropped: every rank must run the same number of DDP steps.
        Indices are sorted within a batch (a faster gather) and sent to the device once."""
        n = len(indices) // batch_size
        order = np.sort(np.asarray(indices[: n * batch_size]).reshape(n, batch_size), axis=1)
        order_t = torch.from_numpy(order).to(self.images.device)  # (n, B)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for idx in order_t:
            x = to_unit_range(self.images[idx]).contiguous(memory_format=fmt)  # (B, C, H, W)
            yield x, self.labels[idx]
