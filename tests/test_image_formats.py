"""A user's own image folder, as cameras, phones, scanners and editors write it: every valid file
is read as an image viewer shows it (on a white page), every broken one is one error line naming
it. Each test writes the files itself and asserts on the pixels that come out."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from pipeline.config import parse_params
from pipeline.data.arrays import load_images_any
from pipeline.data.images import list_image_files, load_folder_dataset, open_image, to_array
from pipeline.data.sources import fetch_dataset
from pipeline.errors import UserError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
# Six 8x8 blocks, 2 rows x 3 columns: asymmetric under every flip and rotation, flat enough
# for JPEG (blocks on its 8x8 grid) and few enough colours for GIF.
COLOURS = np.array([[RED, (0, 160, 0), BLUE], [(255, 255, 0), (0, 0, 0), (128, 128, 128)]],
                   dtype=np.uint8)
PATTERN = COLOURS.repeat(8, axis=0).repeat(8, axis=1)  # (16, 24, 3)


def read(path: Path) -> np.ndarray:
    """What the user gets from one file: uint8 (H, W, C), C from the file (1 gray, 3 colour)."""
    img = open_image(path)
    assert img.mode in ("L", "RGB")
    return to_array(img, 1 if img.mode == "L" else 3)


def save(path: Path, img: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, rows: np.ndarray,
              extra: bytes = b"") -> bytes:
    """A PNG written by hand, for what Pillow cannot write (16-bit colour, 16-bit tRNS, a
    header claiming a huge size): `rows` are the raw big-endian samples, one row per line."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 per row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def rgb_icc_profile(red, green, blue) -> bytes:
    """A minimal ICC v2 RGB display profile: the three colorants (XYZ, D50) and gamma 2.2."""
    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + bytes(4) + struct.pack(">3i", *(round(v * 65536) for v in (x, y, z)))

    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, 0x0233) + bytes(2)  # gamma 2.2 (u8.8)
    desc = b"desc" + bytes(4) + struct.pack(">I", 5) + b"test\x00" + bytes(79)
    d50 = xyz(0.9642, 1.0, 0.8249)
    tags = [(b"desc", desc), (b"wtpt", d50), (b"rXYZ", xyz(*red)), (b"gXYZ", xyz(*green)),
            (b"bXYZ", xyz(*blue)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    start, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", start + len(data), len(body))
        data += body
    header = (struct.pack(">I4sI", start + len(data), b"", 0x02100000) + b"mntrRGB XYZ "
              + bytes(12) + b"acsp" + bytes(28) + d50[8:] + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + data


SRGB_RED, SRGB_GREEN, SRGB_BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), \
    (0.1431, 0.0606, 0.7141)


# --- formats: the same picture in every accepted container ---------------------------------

FORMATS = {  # file name: (save options, largest pixel error allowed)
    "a.png": ({}, 0),
    "a.bmp": ({}, 0),
    "a.tif": ({}, 0),
    "a.tiff": ({"compression": "tiff_deflate"}, 0),
    "a.webp": ({"lossless": True}, 0),
    "a.gif": ({}, 0),
    "a.jpg": ({"quality": 95, "subsampling": 0}, 12),
    "IMG_0001.JPG": ({"quality": 95, "subsampling": 0}, 12),
    "a.jpeg": ({"quality": 95, "subsampling": 0}, 12),
    "a.jpe": ({"format": "JPEG", "quality": 95, "subsampling": 0}, 12),
    "a.jfif": ({"format": "JPEG", "quality": 95, "subsampling": 0}, 12),
    "lossy.webp": ({"quality": 95}, 8),
    "a.avif": ({"quality": 95, "subsampling": "4:4:4"}, 8),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_accepted_format_reads_the_same_pixels(name, tmp_path):
    options, tolerance = FORMATS[name]
    path = save(tmp_path / name, Image.fromarray(PATTERN), **options)
    assert list_image_files(tmp_path) == [path]
    pixels = read(path)
    assert pixels.shape == PATTERN.shape
    if tolerance:  # lossy: the inside of each block (edges ring; WebP halves colour resolution)
        pixels, expected = _inside(pixels), _inside(PATTERN)
    else:
        expected = PATTERN
    assert np.abs(pixels.astype(int) - expected).max() <= tolerance


def _inside(a: np.ndarray) -> np.ndarray:
    """The 4x4 centre of each 8x8 block of PATTERN's layout."""
    rows, cols = np.arange(a.shape[0]) % 8, np.arange(a.shape[1]) % 8
    return a[(rows >= 2) & (rows < 6)][:, (cols >= 2) & (cols < 6)]


def test_file_read_by_content_not_by_extension(tmp_path):
    path = tmp_path / "photo.png"  # a JPEG renamed .png: viewers open it, so do we
    Image.fromarray(PATTERN).save(path, format="JPEG", quality=95, subsampling=0)
    assert np.abs(read(path).astype(int) - PATTERN).max() <= 12


def test_first_frame_of_animations_and_multipage_files(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE)]
    for name in ("anim.gif", "anim.webp", "pages.tif"):
        save(tmp_path / name, frames[0], save_all=True, append_images=frames[1:],
             **({"lossless": True} if name.endswith("webp") else {}))
        assert np.all(read(tmp_path / name) == RED), name


def test_listing_skips_hidden_and_unknown_files(tmp_path):
    for name in ("a.PNG", "b.Tiff", "c.WebP", "d.heic", "notes.txt", ".hidden.png",
                 "._IMG_1.JPG"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_image_files(tmp_path)] == ["a.PNG", "b.Tiff", "c.WebP"]


# --- EXIF orientation: the picture upright, as the phone's viewer shows it -----------------

# What a viewer does to the stored pixels for each orientation value (EXIF 2.3, tag 0x0112).
UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: np.fliplr,                                    # mirrored horizontally
    3: lambda a: np.rot90(a, 2),                     # upside down
    4: np.flipud,                                    # mirrored vertically
    5: lambda a: np.rot90(np.fliplr(a), 1),          # mirrored, then turned 270 clockwise
    6: lambda a: np.rot90(a, -1),                    # turned 90 clockwise (phone held upright)
    7: lambda a: np.rot90(np.fliplr(a), -1),         # mirrored, then turned 90 clockwise
    8: lambda a: np.rot90(a, 1),                     # turned 270 clockwise
}
ORIENTED = {"jpg": ({"quality": 95, "subsampling": 0}, 12), "tif": ({}, 0),
            "webp": ({"lossless": True}, 0), "png": ({}, 0)}


def _oriented(path: Path, orientation: int, **options) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(path, Image.fromarray(PATTERN), exif=exif, **options)


@pytest.mark.parametrize("ext", list(ORIENTED))
@pytest.mark.parametrize("orientation", list(UPRIGHT))
def test_exif_orientation_is_applied(orientation, ext, tmp_path):
    options, tolerance = ORIENTED[ext]
    path = _oriented(tmp_path / f"photo.{ext}", orientation, **options)
    expected = UPRIGHT[orientation](PATTERN)
    pixels = read(path)
    assert pixels.shape == expected.shape
    assert np.abs(pixels.astype(int) - expected).max() <= tolerance


def test_portrait_phone_photo_through_the_cli_loader(tmp_path):
    path = _oriented(tmp_path / "portrait.jpg", 6, quality=95, subsampling=0)
    images = load_images_any(path)  # one file, own size: 16 wide x 24 tall, centre crop 16x16
    expected = np.rot90(PATTERN, -1)[4:20]
    assert images.shape == (1, 16, 16, 3)
    assert np.abs(images[0].astype(int) - expected).max() <= 12


# --- bit depths and colour modes ----------------------------------------------------------

def _array_image(values, dtype, mode: str | None = None) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        img = Image.fromarray(np.array([values], dtype=dtype))
        (img if mode is None else img.convert(mode)).save(path)
    return write


def _bytes(blob: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(blob)


def _palette(transparency: int | bytes | None, colours=(RED, BLUE)) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        img = Image.new("P", (len(colours), 1))
        img.putpalette([v for c in colours for v in c])
        img.putdata(list(range(len(colours))))
        img.save(path, **({} if transparency is None else {"transparency": transparency}))
    return write


def _cmyk(path: Path) -> None:
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red ink
    img.paste((0, 0, 0, 255), (8, 0, 16, 16))  # black ink
    img.save(path, quality=95, subsampling=0)


def _with_icc(profile: bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        img = Image.new("RGB", (16, 16), RED)
        img.paste(BLUE, (8, 0, 16, 16))
        img.save(path, icc_profile=profile)
    return write


GRAY16 = [0, 255, 256, 32768, 65535]
GRAY16_AS_8 = [0, 0, 1, 128, 255]  # the high byte, as Pillow reduces 16-bit colour
HALF = (0 * 128 + 255 * 127 + 127) // 255  # black at alpha 128 over white: 127

MODES = {  # name: (file name, writer, expected pixels of row 0 (C values per pixel))
    "16-bit gray PNG": ("g.png", _array_image(GRAY16, np.uint16), [[v] for v in GRAY16_AS_8]),
    "16-bit gray TIFF": ("g.tif", _array_image(GRAY16, np.uint16), [[v] for v in GRAY16_AS_8]),
    "16-bit gray TIFF, big-endian": ("g.tiff", _array_image(GRAY16, ">u2"),
                                     [[v] for v in GRAY16_AS_8]),
    "16-bit gray PNG with tRNS": ("t.png", _bytes(png_bytes(
        3, 1, 16, 0, np.array([[0, 32768, 4660]], ">u2"),
        extra=struct.pack(">I", 2) + b"tRNS" + struct.pack(">H", 4660)
        + struct.pack(">I", zlib.crc32(b"tRNS" + struct.pack(">H", 4660))))),
        [[0], [128], [255]]),
    "32-bit int TIFF, 16-bit values": ("i.tif", _array_image([0, 32768, 65535], np.int32),
                                       [[0], [128], [255]]),
    "32-bit int TIFF, signed values": ("i.tif", _array_image([-100, 0, 100], np.int32),
                                       [[0], [128], [255]]),
    "float TIFF in [0, 1]": ("f.tif", _array_image([0.0, 0.25, 0.5, 1.0], np.float32),
                             [[0], [64], [128], [255]]),
    "float TIFF in 0..255": ("f.tif", _array_image([0.0, 127.5, 255.0], np.float32),
                             [[0], [128], [255]]),
    "float TIFF with NaN": ("f.tif", _array_image([np.nan, 0.0, 1.0], np.float32),
                            [[0], [0], [255]]),
    "1-bit PNG": ("b.png", _array_image([0, 255], np.uint8, "1"), [[0], [255]]),
    "1-bit TIFF": ("b.tif", _array_image([0, 255], np.uint8, "1"), [[0], [255]]),
    "1-bit BMP": ("b.bmp", _array_image([0, 255], np.uint8, "1"), [[0], [255]]),
    "16-bit RGB PNG": ("c.png", _bytes(png_bytes(2, 1, 16, 2, np.array(
        [[65535, 0, 32768, 255, 256, 0x80FF]], ">u2"))), [[255, 0, 128], [0, 1, 128]]),
    "16-bit RGBA PNG": ("c.png", _bytes(png_bytes(2, 1, 16, 6, np.array(
        [[65535, 0, 0, 0, 0, 0, 65535, 65535]], ">u2"))), [WHITE, BLUE]),
    "palette PNG": ("p.png", _palette(None), [RED, BLUE]),
    "gray palette GIF": ("p.gif", _palette(None, ((0,) * 3, (200,) * 3)), [[0], [200]]),
    "palette PNG, transparent index": ("p.png", _palette(1), [RED, WHITE]),
    "palette GIF, transparent index": ("p.gif", _palette(0), [WHITE, BLUE]),
    "palette PNG, alpha per index": ("p.png", _palette(b"\x80\xff", ((0, 0, 0), BLUE)),
                                     [[HALF] * 3, BLUE]),
    "gray palette PNG, alpha per index": ("p.png", _palette(b"\x00\x80", ((0,) * 3, (90,) * 3)),
                                          [[255], [172]]),  # 90 at alpha 128 over white
    "gray PNG with tRNS": ("l.png", lambda p: Image.fromarray(np.array([[0, 100]], np.uint8))
                           .save(p, transparency=100), [[0], [255]]),
    "RGB PNG with tRNS": ("c.png", lambda p: Image.fromarray(np.array([[RED, BLUE]], np.uint8))
                          .save(p, transparency=BLUE), [RED, WHITE]),
    "gray + alpha PNG": ("la.png", _array_image([[0, 0], [0, 128], [0, 255], [200, 255]],
                                                np.uint8, None), [[255], [HALF], [0], [200]]),
    "RGBA PNG": ("c.png", _array_image([[255, 0, 0, 0], [0, 0, 0, 128], [255, 0, 0, 255]],
                                       np.uint8), [WHITE, [HALF] * 3, RED]),
    "RGBA WebP": ("c.webp", lambda p: Image.fromarray(np.array(
        [[[255, 0, 0, 0], [0, 0, 255, 255]]], np.uint8)).save(p, lossless=True), [WHITE, BLUE]),
    "RGBA TIFF": ("c.tif", _array_image([[255, 0, 0, 0], [0, 0, 255, 255]], np.uint8),
                  [WHITE, BLUE]),
    "CMYK TIFF": ("k.tif", lambda p: Image.new("CMYK", (2, 1), (0, 255, 255, 0)).save(p),
                  [RED, RED]),
    "CMYK JPEG": ("k.jpg", _cmyk, [RED, (0, 0, 0)]),
    "sRGB ICC profile": ("s.png", _with_icc(ImageCms.ImageCmsProfile(
        ImageCms.createProfile("sRGB")).tobytes()), [RED, BLUE]),
    "ICC profile with red and blue swapped": ("s.png", _with_icc(rgb_icc_profile(
        SRGB_BLUE, SRGB_GREEN, SRGB_RED)), [BLUE, RED]),
    "ICC profile that is garbage": ("s.png", _with_icc(b"not an ICC profile" * 10),
                                    [RED, BLUE]),
    "ICC profile in a JPEG": ("s.jpg", _with_icc(rgb_icc_profile(
        SRGB_BLUE, SRGB_GREEN, SRGB_RED)), [BLUE, RED]),
}
LOSSY = {"CMYK JPEG": 6, "ICC profile in a JPEG": 6}  # name: largest pixel error allowed


@pytest.mark.parametrize("name", list(MODES))
def test_bit_depths_and_colour_modes_read_as_a_viewer_shows_them(name, tmp_path):
    file_name, write, expected = MODES[name]
    write(tmp_path / file_name)
    pixels = read(tmp_path / file_name)
    expected = np.array(expected, dtype=int)  # (W, C) or fewer pixels, sampled below
    if pixels.shape[1] != len(expected):  # wider test images: sample each block's centre
        step = pixels.shape[1] // len(expected)
        pixels = pixels[:, step // 2::step]
    assert pixels.shape[-1] == expected.shape[-1]  # gray stays 1 channel, colour 3
    assert np.abs(pixels[0].astype(int) - expected).max() <= LOSSY.get(name, 0), pixels[0]


# --- through the dataset loaders -------------------------------------------------------------

def test_folder_dataset_of_mixed_formats_and_modes(tmp_path):
    root = tmp_path / "faces"
    gray16 = Image.fromarray(np.full((20, 30), 32768, np.uint16))
    save(root / "cats" / "scan.tif", gray16)
    save(root / "cats" / "phone.jpg", Image.new("RGB", (40, 32), RED), quality=95, subsampling=0)
    save(root / "cats" / "logo.png", Image.new("RGBA", (32, 32), (0, 0, 255, 0)))
    save(root / "dogs" / "edit.webp", Image.new("RGB", (32, 32), BLUE), lossless=True)
    save(root / "dogs" / "old.bmp", Image.new("1", (32, 32), 1))
    save(root / "dogs" / "anim.gif", Image.new("P", (32, 32), 0))
    images, labels, names = load_folder_dataset(root, 16, 3)
    assert names == ["cats", "dogs"]
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert images.shape == (6, 16, 16, 3)
    centre = images[:, 8, 8].astype(int)  # files in sorted order within each class
    expected = [WHITE, RED, [128] * 3, (0, 0, 0), BLUE, WHITE]  # logo: transparent -> white
    assert np.abs(centre - expected).max() <= 3, centre
    gray, _, _ = load_folder_dataset(root, 16, 1)
    assert gray.shape == (6, 16, 16, 1) and gray[2, 8, 8, 0] == 128


def test_cli_loader_keeps_gray_folders_gray(tmp_path):
    save(tmp_path / "a.tif", Image.fromarray(np.full((8, 8), 65535, np.uint16)))
    save(tmp_path / "b.png", Image.new("LA", (8, 8), (0, 0)))
    save(tmp_path / "c.gif", Image.new("1", (8, 8), 0))
    images = load_images_any(tmp_path)
    assert images.shape == (3, 8, 8, 1)
    assert images[:, 0, 0, 0].tolist() == [255, 255, 0]
    save(tmp_path / "d.webp", Image.new("RGB", (8, 8), RED), lossless=True)
    colour = load_images_any(tmp_path)
    assert colour.shape == (4, 8, 8, 3)  # one colour file: all RGB, gray repeated
    assert colour[:, 0, 0].tolist() == [list(WHITE), list(WHITE), [0, 0, 0], list(RED)]


# --- broken files: one line naming the file; the previous outputs stay -----------------------

def _noise(fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(buf, fmt, **options)
    return buf.getvalue()


BOMB = png_bytes(20000, 20000, 8, 0, np.zeros((1, 1), np.uint8))  # header: 400 megapixels
BROKEN = {  # file name: (content, words the error line says after the name)
    "empty.png": (b"", "empty file (0 bytes)"),
    "empty.jpg": (b"", "empty file (0 bytes)"),
    "cut.png": (_noise("PNG")[:2000], "unreadable image (image file is truncated"),
    "cut.jpg": (_noise("JPEG")[:2000], "unreadable image (image file is truncated"),
    "cut.webp": (_noise("WEBP")[:2000], "unreadable image"),
    "cut.bmp": (_noise("BMP")[:2000], "unreadable image (image file is truncated"),
    "cut.tif": (_noise("TIFF")[:2000], "unreadable image (image file is truncated"),
    "cut.gif": (_noise("GIF")[:2000], "unreadable image (image file is truncated"),
    "garbage.tiff": (b"\x00garbage" * 50, "not a readable PNG/JPEG image"),
    "notes.jpg": (b"shopping list: eggs, milk\n" * 20, "not a readable PNG/JPEG image"),
    "header-only.webp": (_noise("WEBP")[:20], "unreadable image"),
    "script.png": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n",
                   "not a readable PNG/JPEG image"),  # never handed to Ghostscript
    "bomb.png": (BOMB, "image too large to decode safely"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_file_is_one_line_naming_it(name, tmp_path):
    blob, words = BROKEN[name]
    (tmp_path / name).write_bytes(blob)
    with pytest.raises(UserError) as err:
        open_image(tmp_path / name)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / name}: ")
    assert words in message


@pytest.mark.parametrize("name", ["empty.png", "cut.jpg", "cut.webp", "cut.tif", "garbage.tiff",
                                  "bomb.png"])
def test_broken_file_in_a_folder_dataset_keeps_previous_raw_outputs(name, tmp_path):
    source = tmp_path / "imgs"
    for i in range(4):
        save(source / f"{i}.png", Image.new("RGB", (28, 28), (i, i, i)))
    blob, words = BROKEN[name]
    (source / name).write_bytes(blob)
    out = tmp_path / "data" / "raw"
    out.mkdir(parents=True)
    previous = {"manifest.json": json.dumps({"previous": True}), "train-images-idx3-ubyte.gz":
                "previous images"}
    for file, text in previous.items():
        (out / file).write_text(text)
    cfg = parse_params({"data": {"dataset": "folder", "source": str(source)}})
    with pytest.raises(UserError) as err:
        fetch_dataset(cfg.data, cfg.seed, out)
    assert str(err.value).startswith(f"{source / name}: ") and words in str(err.value)
    assert sorted(p.name for p in tmp_path.joinpath("data").rglob("*")) == sorted(
        ["raw", *previous])  # no temp directory left beside it
    assert {f: (out / f).read_text() for f in previous} == previous


def test_stage_script_prints_one_line_for_a_broken_webp(tmp_path, run_stage):
    source = tmp_path / "imgs"
    for i in range(3):
        save(source / f"{i}.webp", Image.new("RGB", (28, 28), RED), lossless=True)
    (source / "3.webp").write_bytes(_noise("WEBP")[:2000])
    work, out = tmp_path / "work", tmp_path / "data" / "raw"
    work.mkdir()
    out.mkdir(parents=True)
    (out / "manifest.json").write_text('{"previous": true}\n')
    result = run_stage("fetch", "--out", out, cwd=work,
                       params={"data": {"dataset": "folder", "source": str(source)}})
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {source / '3.webp'}: "), lines
    assert [p.name for p in out.iterdir()] == ["manifest.json"]
    assert (out / "manifest.json").read_text() == '{"previous": true}\n'
