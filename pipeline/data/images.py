"""Image files and resizing: folder datasets, sklearn's digits, and bilinear resizes (PIL).

Used by `fetch` (the `folder` and `digits` datasets), `prepare` (resize to data.image_size) and
`pipeline.data.arrays.load_images_any` (the CLI's image-folder inputs). Every image becomes
uint8 (H, W, C), as an image viewer shows the file (see `open_image`); every unreadable file is
a `UserError` naming it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from pipeline.errors import UserError

try:  # colour management; Pillow's wheels build it in, a source build may not
    from PIL import ImageCms
except ImportError:  # pragma: no cover
    ImageCms = None  # type: ignore[assignment]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".tif", ".tiff",
                    ".gif", ".avif")
# The only decoders Image.open may try. A file is read by its content, not its name (a JPEG
# saved as .png opens), but never by a plugin outside this list (no EPS through Ghostscript).
_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "AVIF")


def list_image_files(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Image files (`IMAGE_EXTENSIONS`, any case) under `folder`, sorted by path; hidden files
    (.DS_Store, ._IMG_0001.JPG) skipped."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def no_images_error(where: str | os.PathLike[str]) -> UserError:
    """The error for a folder without image files (one message for fetch and the CLI)."""
    others = " ".join(e for e in IMAGE_EXTENSIONS if e not in (".png", ".jpg"))
    return UserError(f"{where}: no PNG/JPEG images (empty folder); also read: {others}")


def _decode(path: Path) -> Image.Image:
    """The file's first frame, fully decoded and turned upright by its EXIF orientation."""
    try:
        if path.stat().st_size == 0:
            raise UserError(f"{path}: empty file (0 bytes), not an image")
        with warnings.catch_warnings(), Image.open(path, formats=_FORMATS) as img:
            # Pillow's notes on odd metadata ("Corrupt EXIF data") would repeat for every file
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
            img.load()
            try:  # a copy either way: closing the file frees the decoded pixels
                return ImageOps.exif_transpose(img)
            except Exception:  # EXIF is untrusted metadata; viewers ignore what they can't parse
                return img.copy()
    except UnidentifiedImageError:
        raise UserError(f"{path}: not a readable PNG/JPEG image (nor WebP, BMP, TIFF, GIF, "
                        f"AVIF): Pillow cannot identify its content") from None
    except Image.DecompressionBombError as exc:
        raise UserError(f"{path}: image too large to decode safely ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__  # libtiff's can span lines
        raise UserError(f"{path}: unreadable image ({reason})") from None


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    """One-channel 16-bit ("I;16*"), 32-bit int ("I") or float ("F") -> "L".

    Integers are taken as 16-bit data and keep their high byte (65535 -> 255, 32768 -> 128:
    what Pillow itself does to 16-bit colour PNG/TIFF). Floats are taken as [0, 1]. Values
    outside those ranges (negative or 32-bit integers, floats in 0..255 or HDR) are stretched
    from the image's own min..max instead; NaN and infinities become black.
    """
    arr = np.asarray(img)  # (H, W) uint16, int32 or float32
    if img.mode != "F" and arr.min() >= 0 and arr.max() <= 65535:
        out = (arr.astype(np.uint32) >> 8).astype(np.uint8)
    else:
        x = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(x.min()), float(x.max())
        if img.mode == "F" and lo >= 0 and hi <= 1:
            lo, hi = 0.0, 1.0
        out = np.round((x - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    transparent = img.info.get("transparency")  # a 16-bit PNG's tRNS gray value
    if isinstance(transparent, int):
        out[arr == transparent] = 255  # over white
    return Image.fromarray(out, "L")


def _on_white(img: Image.Image) -> Image.Image:
    """"LA"/"RGBA" -> "L"/"RGB", composited over a white page (what viewers show on white)."""
    arr = np.asarray(img).astype(np.uint32)  # (H, W, 2 or 4)
    colour, alpha = arr[..., :-1], arr[..., -1:]
    out = ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    return Image.fromarray(out[..., 0], "L") if img.mode == "LA" else Image.fromarray(out, "RGB")


def _to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """"RGB"/"CMYK" -> sRGB "RGB" through the file's ICC profile. Without a profile, or with
    one littleCMS cannot use, RGB is taken as sRGB and CMYK is converted by Pillow's formula."""
    if icc and ImageCms is not None:
        try:
            return ImageCms.profileToProfile(img, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                             ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass
    return img.convert("RGB")


def _gray_palette(img: Image.Image) -> bool:
    """A palette image whose used colours are all gray (a GIF scan, a grayscale PNG-8)."""
    colours = img.convert("RGBA").getcolors(256) or []  # a palette has at most 256 colours
    return all(r == g == b for _, (r, g, b, _) in colours)


def open_image(path: Path) -> Image.Image:
    """Decode one image file fully (so a corrupt file fails here, naming it) and return it as an
    image viewer shows it on a white page: mode "L" (gray files) or "RGB", 8 bits per channel.

    The first frame (GIF, animated WebP, multi-page TIFF); EXIF orientation applied; 16-bit,
    32-bit int and float gray scaled to 8 bits (`_scale_to_8bit`), 1-bit to 0/255; palettes
    expanded (to "L" when every used colour is gray); transparency (alpha channel, tRNS,
    palette alpha) composited over white; RGB and CMYK with an ICC profile converted to sRGB
    (gray images' profiles are ignored); YCbCr, LAB and HSV converted by Pillow.
    """
    img = _decode(path)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _scale_to_8bit(img)
    icc = img.info.get("icc_profile")
    if img.mode in ("1", "L", "LA", "La") or img.mode in ("P", "PA") and _gray_palette(img):
        return _on_white(img.convert("LA")) if img.has_transparency_data else img.convert("L")
    if img.has_transparency_data:
        img = _on_white(img.convert("RGBA"))
    elif img.mode not in ("RGB", "CMYK"):
        img = img.convert("RGB")  # P, YCbCr, LAB, HSV
    return _to_srgb(img, icc)


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
    """uint8 (H, W, C) with C = channels from an `open_image` result ("L" or "RGB"): gray is
    repeated into RGB, RGB becomes ITU-R 601 luma (PIL's convert('L'))."""
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
    """Decode `files` (each as `open_image` reads it) into one uint8 (N, H, W, C) array.

    size None keeps the images' common size (an error if they differ); channels None picks
    1 when every image is gray, else 3 (gray images are then repeated into RGB).
    """
    viewed = (open_image(p) for p in tqdm(files, desc="images", unit="img", disable=None))
    if size is not None:  # shrink each as it is read: one full-size photo in memory at a time
        pil = [fit_square(img, size) for img in viewed]
    else:
        pil = list(viewed)
        sizes = sorted({img.size for img in pil})
        if len(sizes) > 1:
            (a, b), (c, d) = sizes[0], sizes[-1]
            raise UserError(f"{files[0].parent}: images have different sizes ({a}x{b} ... "
                            f"{c}x{d}); give an image size or resize them first")
        pil = [fit_square(img, min(sizes[0])) for img in pil]  # non-square: centre crop
    if channels is None:
        channels = 1 if all(img.mode == "L" for img in pil) else 3
    return np.stack([to_array(img, channels) for img in pil])


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
            raise no_images_error(where)
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
