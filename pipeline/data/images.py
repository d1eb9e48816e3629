"""Image files and resizing: folder datasets, sklearn's digits, and bilinear resizes (PIL).

Used by `fetch` (the `folder` and `digits` datasets), `prepare` (resize to data.image_size) and
`pipeline.data.arrays.load_images_any` (the CLI's image-folder inputs). Every image becomes
uint8 (H, W, C); every unreadable file is a `UserError` naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pipeline.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_GRAY_MODES = ("1", "L", "LA", "I", "F")


def list_image_files(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """PNG/JPEG files under `folder`, sorted by path; hidden files (.DS_Store, ...) skipped."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def is_gray(img: Image.Image) -> bool:
    return img.mode in _GRAY_MODES or img.mode.startswith("I;")


def open_image(path: Path) -> Image.Image:
    """Decode one image fully (so a corrupt file fails here, naming it)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy() if img.mode != "P" else img.convert("RGBA")
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: not a readable PNG/JPEG image ({type(exc).__name__})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bilinear), then centre-crop to size x size."""
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        w, h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_array(img: Image.Image, channels: int) -> np.ndarray:
    """uint8 (H, W, C) with C = channels (gray or RGB, converted as PIL does)."""
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, C) -> (N, size, size, C), bilinear; returned as is when already that size."""
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i in range(n):  # PIL has no batched resize; ~10 us per 28x28 image
        for ch in range(c):
            img = Image.fromarray(images[i, :, :, ch])
            out[i, :, :, ch] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
    return out


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (N, H, W, C) gray <-> RGB (ITU-R 601 luma, as PIL's convert('L'))."""
    if images.shape[-1] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    luma = images.astype(np.uint32) @ np.array([299, 587, 114], dtype=np.uint32)
    return ((luma + 500) // 1000).astype(np.uint8)[..., None]


def load_image_files(files: list[Path], size: int | None, channels: int | None) -> np.ndarray:
    """Decode `files` into one uint8 (N, H, W, C) array.

    size None keeps the images' common size (an error if they differ); channels None picks
    1 when every image is gray, else 3 (gray images are then repeated into RGB).
    """
    pil = [open_image(p) for p in tqdm(files, desc="images", unit="img", disable=None)]
    if channels is None:
        channels = 1 if all(is_gray(img) for img in pil) else 3
    if size is None:
        sizes = sorted({img.size for img in pil})
        if len(sizes) > 1:
            (a, b), (c, d) = sizes[0], sizes[-1]
            raise UserError(f"{files[0].parent}: images have different sizes ({a}x{b} ... "
                            f"{c}x{d}); give an image size or resize them first")
        size = min(sizes[0])  # non-square: centre-cropped to a square
    return np.stack([to_array(fit_square(img, size), channels) for img in pil])


def load_folder_dataset(source: str | os.PathLike[str], size: int, channels: int,
                        ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A folder of images -> (images (N, size, size, channels), labels (N,), class_names).

    Class sub-folders (sorted names) give the labels; a flat folder is one class named after
    the folder. Images directly beside class folders are an error (which class would they be?).
    """
    root = Path(source)
    if not root.exists():
        raise UserError(f"data.source: {root} does not exist")
    if not root.is_dir():
        raise UserError(f"data.source: {root} is a file, expected a directory of images")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = list_image_files(root, recursive=False)
    if classes and loose:
        raise UserError(f"{loose[0]}: image beside class folders in {root}; put every image "
                        f"in a class sub-folder, or use a flat folder")
    groups = [(d.name, list_image_files(d)) for d in classes] or [(root.name or "images",
                                                                   loose)]
    for name, files in groups:
        if not files:
            where = root / name if classes else root
            raise UserError(f"{where}: no PNG/JPEG images (empty folder)")
    files = [f for _, group in groups for f in group]
    labels = np.concatenate([np.full(len(g), i, dtype=np.int64) for i, (_, g) in
                             enumerate(groups)])
    return load_image_files(files, size, channels), labels, [name for name, _ in groups]


def load_digits_dataset(size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """sklearn's bundled 8x8 digits (1797, offline), 0..16 scaled to uint8 and upscaled."""
    from sklearn.datasets import load_digits  # sklearn is slow to import: only when used

    digits = load_digits()
    small = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return resize_images(small, size), digits.target.astype(np.int64), [str(d) for d in
                                                                         range(10)]
