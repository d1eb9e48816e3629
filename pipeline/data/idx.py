"""Our own reader and writer for IDX files (the MNIST / Fashion-MNIST format), gzip or plain.

    from pipeline.data.idx import read_images, read_labels, write_idx

Layout (LeCun's spec): bytes 0x00 0x00, a dtype code (0x08 = unsigned byte, the only one these
datasets use and the only one we accept), the number of dims, then one big-endian uint32 per
dim, then the data in C order. Images are magic 2051 (N, H, W) or 2052 (N, H, W, 3) for RGB;
labels are 2049 (N,). Every problem is a `UserError` naming the file, so a truncated download
or a labels file passed as images is one clear line, not a numpy reshape traceback.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

UBYTE = 0x08
DTYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
               0x0E: "float64"}
MAGIC_LABELS = 0x0801  # 2049
MAGIC_IMAGES = 0x0803  # 2051; 0x0804 = 2052 for (N, H, W, C) colour images


def _decompress(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise UserError(f"{path}: truncated gzip (the file ends early; fetch it again)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise UserError(f"{path}: corrupt gzip ({exc}); fetch it again") from None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzip detected by content, not by name) as a uint8 array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected an IDX file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not raw:
        raise UserError(f"{path}: empty file (0 bytes)")
    data = _decompress(raw, path) if raw[:2] == b"\x1f\x8b" else raw
    if len(data) < 4:
        raise UserError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or ndim == 0:
        raise UserError(f"{path}: not an IDX file (magic 0x{data[:4].hex()}, expected "
                        f"0x0000 then dtype and ndim)")
    if code != UBYTE:
        name = DTYPE_NAMES.get(code, "unknown")
        raise UserError(f"{path}: IDX dtype code 0x{code:02X} ({name}) is not supported, "
                        f"expected 0x08 (unsigned byte)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dims "
                        f"need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "trailing bytes"
        raise UserError(f"{path}: {what}: header dims {dims} need {expected} data bytes, "
                        f"file has {got}")
    # frombuffer views the decompressed bytes (no per-item parsing); copy makes it writable.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_images(path: str | os.PathLike[str]) -> np.ndarray:
    """An IDX image file as uint8 (N, H, W, C), C = 1 for magic 2051, 3 for 2052."""
    array = read_idx(path)
    if array.ndim == 1:
        raise UserError(f"{path}: is a labels file (magic {MAGIC_LABELS}), expected images "
                        f"(magic {MAGIC_IMAGES})")
    if array.ndim == 3:
        array = array[..., None]  # (N, H, W) -> (N, H, W, 1)
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise UserError(f"{path}: expected images (N, H, W) or (N, H, W, 3), got dims "
                        f"{array.shape}")
    if 0 in array.shape[1:3]:
        raise UserError(f"{path}: images must have a positive size, got {array.shape[1]}x"
                        f"{array.shape[2]}")
    return array


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """An IDX labels file (magic 2049) as int64 (N,)."""
    array = read_idx(path)
    if array.ndim != 1:
        raise UserError(f"{path}: expected labels (magic {MAGIC_LABELS}, 1 dim), got dims "
                        f"{array.shape} (an images file?)")
    return array.astype(np.int64)


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array (header + C-order data)."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX writer takes uint8 arrays with >= 1 dim, got {array.dtype} "
                         f"{array.shape}")
    header = struct.pack(f">HBB{array.ndim}I", 0, UBYTE, array.ndim, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write `array` as IDX; gzip when the name ends in .gz (no name/mtime in the gzip header,
    so the same array always gives the same bytes and the same DVC hash)."""
    path = Path(path)
    blob = encode_idx(array)
    with open(path, "wb") as fh:
        if path.suffix == ".gz":
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
                gz.write(blob)
        else:
            fh.write(blob)
