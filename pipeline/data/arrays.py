"""Read and write the `.npz` arrays stages exchange (prepared and generated images).

    from pipeline.data.arrays import load_split, load_images, load_images_any, save_split

An `.npz` holds `images` uint8 (N, H, W, C) with C 1 or 3, and for labelled sets `labels`
int64 (N,) and `class_names` (a numpy unicode array, so `allow_pickle=False` reads it).
Every loader validates and raises a one-line `UserError` naming the file.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.data.images import (
    IMAGE_EXTENSIONS,
    convert_channels,
    list_image_files,
    load_image_files,
    no_images_error,
    resize_images,
)
from pipeline.errors import UserError
from pipeline.io import save_npz


class Split(NamedTuple):
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64
    class_names: list[str]


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path}: not found; run `dvc repro` for the stage that writes it")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable .npz ({exc})") from None


def check_images(images: np.ndarray, where: str | os.PathLike[str]) -> np.ndarray:
    """Raise unless `images` is uint8 (N, H, W, C) with C in (1, 3)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"{where}: images must be uint8 (N, H, W, C) with C 1 or 3, got "
                        f"{images.dtype} {images.shape}")
    return images


def load_images(path: str | os.PathLike[str]) -> np.ndarray:
    """The validated `images` array of an .npz (prepared or generated)."""
    path = Path(path)
    arrays = _read_npz(path)
    if "images" not in arrays:
        raise UserError(f"{path}: missing array 'images' (has {sorted(arrays)})")
    return check_images(arrays["images"], path)


def load_split(path: str | os.PathLike[str]) -> Split:
    """A labelled split (`data/prepared/{train,val,test}.npz`): images, labels, class_names."""
    path = Path(path)
    arrays = _read_npz(path)
    missing = [k for k in ("images", "labels", "class_names") if k not in arrays]
    if missing:
        raise UserError(f"{path}: missing array(s) {', '.join(missing)} (has {sorted(arrays)})")
    images, labels, names = check_images(arrays["images"], path), arrays["labels"], \
        arrays["class_names"]
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype,
                                                                             np.integer):
        raise UserError(f"{path}: labels must be integers of shape ({len(images)},), got "
                        f"{labels.dtype} {labels.shape}")
    if names.ndim != 1 or names.dtype.kind != "U" or len(names) == 0:
        raise UserError(f"{path}: class_names must be a non-empty unicode array, got "
                        f"{names.dtype} {names.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise UserError(f"{path}: label {bad} outside [0, {len(names)}) ({len(names)} "
                        f"class_names)")
    return Split(images, labels.astype(np.int64), [str(n) for n in names])


def save_split(path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray,
               class_names: list[str]) -> None:
    """Write a labelled split atomically, in the layout `load_split` reads."""
    save_npz(path, images=check_images(images, path), labels=labels.astype(np.int64),
             class_names=np.array(class_names, dtype=str))


def load_images_any(path: str | os.PathLike[str], image_size: int | None = None,
                    channels: int | None = None) -> np.ndarray:
    """uint8 (N, H, W, C) from an .npz, one image file (`IMAGE_EXTENSIONS`: PNG, JPEG, WebP,
    BMP, TIFF, GIF, AVIF), or a folder of them (recursive, in the sorted order of
    `list_image_files`), each read as `open_image` shows it. image_size/channels None: keep
    the images' own."""
    path = Path(path)
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise no_images_error(path)
    elif path.suffix.lower() in IMAGE_EXTENSIONS:
        if not path.is_file():
            raise UserError(f"{path}: not found")
        files = [path]
    else:
        images = load_images(path)
        if channels is not None:
            images = convert_channels(images, channels)
        return images if image_size is None else resize_images(images, image_size)
    return load_image_files(files, image_size, channels)
