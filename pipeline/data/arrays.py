"""Read and write the `.npz` arrays stages exchange (prepared and generated images).

    from pipeline.data.arrays import load_split, load_images, load_images_any, save_split
    from pipeline.data.arrays import load_for_model  # user images checked against a model

An `.npz` holds `images` uint8 (N, H, W, C) with C 1 or 3, and for labelled sets `labels`
int64 (N,) and `class_names` (a numpy unicode array, so `allow_pickle=False` reads it).
Every loader validates and raises a one-line `UserError` naming the file.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from pipeline.data.images import (
    IMAGE_EXTENSIONS,
    convert_channels,
    fit_square,
    list_image_files,
    load_image_files,
    no_images_error,
    open_image,
    resize_images,
    to_array,
)
from pipeline.errors import UserError
from pipeline.io import save_npz


class Split(NamedTuple):
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64
    class_names: list[str]


PIPELINE_HINT = "run `dvc repro` for the stage that writes it"

# File signatures of what people hand over instead of an .npz (first bytes of the file).
_SIGNATURES = ((b"\x93NUMPY", "a single .npy array (save it with np.savez(path, images=a))"),
               (b"\x89PNG", "a PNG image without a .png extension"),
               (b"\xff\xd8\xff", "a JPEG image without a .jpg extension"),
               (b"GIF8", "a GIF image without a .gif extension"),
               (b"\x1f\x8b", "a gzip file"),
               (b"%PDF", "a PDF document"))


def sniff_non_npz(path: Path) -> str | None:
    """None when `path` starts like a zip archive (what an .npz is), else what it looks like
    ("plain text", "a Python pickle", ...): read from its first bytes, never unpickled."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return None
    if not head:
        return "an empty file (0 bytes)"
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return "a Python pickle, never loaded: unpickling can run code"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at byte 512 is still text
        text = head[:exc.start].decode("utf-8") if exc.start > len(head) - 4 else None
    if text is not None and "\x00" not in text:
        return "plain text"
    return "unrecognised binary data"


def _read_npz(path: Path, hint: str | None = PIPELINE_HINT) -> dict[str, np.ndarray]:
    """Every array of the .npz at `path`, with `allow_pickle=False`: an object array is an
    error naming it, never unpickled. `hint` (how the file is made) follows "not found"."""
    if not path.is_file():
        what = "is a folder, not an .npz file" if path.is_dir() else "not found"
        raise UserError(f"{path}: {what}" + (f"; {hint}" if hint and not path.exists() else ""))
    kind = sniff_non_npz(path)
    if kind is not None:
        raise UserError(f"{path}: not a readable .npz ({kind}, not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {}
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as exc:
                    if "allow_pickle" not in str(exc):
                        raise
                    raise UserError(f"{path}: array {key!r} holds Python objects (pickled "
                                    "data), which are never loaded: they can run code; save "
                                    "plain numeric arrays") from None
                if not isinstance(arrays[key], np.ndarray):  # numpy returns other members raw
                    raise UserError(f"{path}: member {key!r} is not a .npy array: a zip "
                                    "archive, but not one np.savez wrote")
            return arrays
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        reason = "a corrupt member" if "pickle" in str(exc) else exc  # never pickle advice
        raise UserError(f"{path}: not a readable .npz ({reason})") from None


def check_images(images: np.ndarray, where: str | os.PathLike[str]) -> np.ndarray:
    """Raise unless `images` is uint8 (N, H, W, C) with C in (1, 3)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"{where}: images must be uint8 (N, H, W, C) with C 1 or 3, got "
                        f"{images.dtype} {images.shape}")
    return images


def load_images(path: str | os.PathLike[str], hint: str | None = PIPELINE_HINT) -> np.ndarray:
    """The validated `images` array of an .npz (prepared or generated); `hint` as `_read_npz`
    (None for a user's file: a missing user file is not the pipeline's to make)."""
    path = Path(path)
    arrays = _read_npz(path, hint)
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


def check_user_path(path: str | os.PathLike[str]) -> Path:
    """`path` if it exists and is a folder, an image file by name, or a zip archive (an .npz);
    else a one-line error saying what it is instead. Reads at most 512 bytes: cheap enough to
    run before any model is loaded."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS:
        return path
    kind = sniff_non_npz(path)
    if kind is not None:
        raise UserError(f"{path}: not an .npz archive, an image or a folder, but {kind}; give "
                        "an .npz with an `images` array, an image file (PNG, JPEG, WebP, BMP, "
                        "TIFF, GIF, AVIF) or a folder of them")
    return path


def load_images_any(path: str | os.PathLike[str], image_size: int | None = None,
                    channels: int | None = None) -> np.ndarray:
    """uint8 (N, H, W, C) from a user's .npz, one image file (`IMAGE_EXTENSIONS`: PNG, JPEG,
    WebP, BMP, TIFF, GIF, AVIF), or a folder of them (recursive, in the sorted order of
    `list_image_files`), each read as `open_image` shows it. image_size/channels None: keep
    the images' own. A path that is none of these is an error (`check_user_path`)."""
    path = check_user_path(path)
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise no_images_error(path)
    elif path.suffix.lower() in IMAGE_EXTENSIONS:
        files = [path]
    else:
        images = load_images(path, hint=None)
        if channels is not None:
            images = convert_channels(images, channels)
        return images if image_size is None else resize_images(images, image_size)
    return load_image_files(files, image_size, channels)


def describe_shape(h: int, w: int, c: int) -> str:
    """(80, 100, 1) -> '100x80 gray' (width x height, as image viewers say it)."""
    return f"{w}x{h} {'gray' if c == 1 else 'RGB'}"


class Conformed(NamedTuple):
    """User images brought to a model's input shape (`load_for_model`)."""

    images: np.ndarray  # (N, H, W, C) uint8, all of the model's shape
    names: list[str]  # one per row of images
    notes: list[str | None]  # None: as the model was trained; else what differs, and what was done
    outside: list[tuple[str, str]]  # (path, '100x80 gray') of images left out (resize=False)


def _user_images(path: Path) -> Iterator[tuple[str, str, np.ndarray]]:
    """(name, where, uint8 (H, W, C) at its own size) for each image of an .npz, image file or
    folder; name is relative to `path` (the output's label), where is the full path (for
    errors). Decoded one at a time: a folder of large photos is never in memory at full size."""
    if check_user_path(path).is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS:
        files = list_image_files(path) if path.is_dir() else [path]
        if not files:
            raise no_images_error(path)
        for file in files:
            img = open_image(file)
            name = str(file.relative_to(path)) if path.is_dir() else file.name
            yield name, str(file), to_array(img, 1 if img.mode == "L" else 3)
        return
    images = load_images_any(path)
    for i, image in enumerate(images):
        yield ((path.name, str(path)) if len(images) == 1 else
               (f"{path.name}[{i}]", f"{path}[{i}]")) + (image,)


def load_for_model(path: str | os.PathLike[str], shape: tuple[int, int, int], model: str,
                   resize: bool) -> Conformed:
    """A user's images (as `load_images_any` reads them, each at its own size) checked against
    the (H, W, C) a model was trained on.

    An RGB image whose channels are all equal is gray, losslessly. Any other difference puts
    the image outside the training distribution: with resize=False it is left out and listed
    in `outside`; with resize=True it is brought to the shape (shorter side resized, centre
    crop; channels converted) and its note says so. An image smaller than the training size
    is always an error: upscaling cannot restore pixel-level detail.
    """
    path, (h, w, c) = Path(path), shape
    trained = describe_shape(h, w, c)
    kept: list[np.ndarray] = []
    names: list[str] = []
    notes: list[str | None] = []
    outside: list[tuple[str, str]] = []
    for name, where, image in _user_images(path):
        ih, iw, ic = image.shape
        if ic == 3 and c == 1 and (image == image[..., :1]).all():
            image, ic = image[..., :1], 1  # gray stored as RGB: nothing is lost
        own = describe_shape(ih, iw, ic)
        if (ih, iw, ic) == (h, w, c):
            kept.append(image)
            names.append(name)
            notes.append(None)
            continue
        if ih < h or iw < w:
            raise UserError(f"{where}: {own} is smaller than the {trained} images {model} was "
                            "trained on; upscaling cannot restore the pixel-level traces it "
                            "looks for")
        if not resize:
            outside.append((where, own))
            continue
        img = Image.fromarray(image[..., 0], "L") if ic == 1 else Image.fromarray(image, "RGB")
        kept.append(to_array(fit_square(img, h), c))
        names.append(name)
        done = [("centre-cropped" if min(ih, iw) == h else "resized") if (ih, iw) != (h, w)
                else "", f"converted to {'gray' if c == 1 else 'RGB'}" if ic != c else ""]
        notes.append(f"outside the training distribution ({own}; {model} was trained on "
                     f"{trained}): {' and '.join(filter(None, done))}, score unreliable")
    images = np.stack(kept) if kept else np.zeros((0, h, w, c), np.uint8)
    return Conformed(images, names, notes, outside)
