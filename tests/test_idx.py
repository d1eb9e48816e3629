"""Our IDX reader/writer: round trips against an independent writer, and one clear error line
per kind of broken file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.idx import encode_idx, read_idx, read_images, read_labels, write_idx
from pipeline.errors import UserError

from conftest import gz, idx_bytes

FMNIST = Path("/usr/share/datasets/fashion-mnist")
RNG = np.random.default_rng(0)
ARRAYS = {
    "labels": RNG.integers(0, 10, size=7).astype(np.uint8),
    "gray": RNG.integers(0, 256, size=(5, 3, 4)).astype(np.uint8),
    "rgb": RNG.integers(0, 256, size=(2, 3, 4, 3)).astype(np.uint8),
}


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("kind", list(ARRAYS))
def test_reads_what_an_independent_writer_wrote(tmp_path, kind, compress):
    array = ARRAYS[kind]
    blob = idx_bytes(array)
    path = tmp_path / "x.idx"
    path.write_bytes(gz(blob) if compress else blob)
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.shape == array.shape
    np.testing.assert_array_equal(got, array)
    got[0] = 0  # writable, not a view of immutable bytes


@pytest.mark.parametrize("kind", list(ARRAYS))
def test_our_writer_round_trips_and_matches_the_reference_bytes(tmp_path, kind):
    array = ARRAYS[kind]
    assert encode_idx(array) == idx_bytes(array)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == idx_bytes(array)
    # No name or time in the gzip header: same array, same bytes (stable DVC hashes).
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_images_get_a_channel_axis_and_labels_become_int64(tmp_path):
    write_idx(tmp_path / "i.gz", ARRAYS["gray"])
    write_idx(tmp_path / "c.gz", ARRAYS["rgb"])
    write_idx(tmp_path / "l.gz", ARRAYS["labels"])
    assert read_images(tmp_path / "i.gz").shape == (5, 3, 4, 1)
    assert read_images(tmp_path / "c.gz").shape == (2, 3, 4, 3)
    labels = read_labels(tmp_path / "l.gz")
    assert labels.dtype == np.int64 and labels.tolist() == ARRAYS["labels"].tolist()


def test_reads_the_real_fashion_mnist_test_set():
    if not (FMNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    labels = read_labels(FMNIST / "t10k-labels-idx1-ubyte.gz")
    images = read_images(FMNIST / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28, 1)
    assert np.bincount(labels).tolist() == [1000] * 10


GRAY = ARRAYS["gray"]
BAD_FILES = {
    "zero-byte file": (b"", read_idx, "empty file (0 bytes)"),
    "truncated gzip": (gz(idx_bytes(GRAY))[:-20], read_idx, "truncated gzip"),
    "corrupt gzip": (gz(idx_bytes(GRAY))[:-8] + b"\0" * 8, read_idx, "corrupt gzip"),
    "wrong magic": (idx_bytes(GRAY, prefix=b"PK"), read_idx, "not an IDX file (magic 0x504b"),
    "zero dims": (b"\0\0\x08\0", read_idx, "not an IDX file"),
    "float dtype": (idx_bytes(GRAY, dtype_code=0x0D), read_idx,
                    "dtype code 0x0D (float32) is not supported, expected 0x08"),
    "header too short": (b"\0\0", read_idx, "too short for an IDX header"),
    "dims cut short": (idx_bytes(GRAY)[:10], read_idx, "truncated IDX header"),
    "data truncated": (gz(idx_bytes(GRAY)[:-5]), read_idx,
                       "truncated: header dims (5, 3, 4) need 60 data bytes, file has 55"),
    "dims larger than data": (idx_bytes(GRAY, dims=(6, 3, 4)), read_idx,
                              "truncated: header dims (6, 3, 4) need 72"),
    "trailing bytes": (idx_bytes(GRAY) + b"\0", read_idx, "trailing bytes"),
    "labels as images": (idx_bytes(ARRAYS["labels"]), read_images, "is a labels file"),
    "images as labels": (idx_bytes(GRAY), read_labels, "expected labels (magic 2049"),
    "zero-size images": (idx_bytes(np.zeros((3, 0, 0), np.uint8)), read_images,
                         "images must have a positive size, got 0x0"),
    "five dims": (idx_bytes(np.zeros((1, 2, 2, 2, 2), np.uint8)), read_images,
                  "expected images (N, H, W) or (N, H, W, 3)"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_broken_files_are_one_line_naming_the_file(tmp_path, case):
    blob, reader, expected = BAD_FILES[case]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(blob)
    with pytest.raises(UserError) as err:
        reader(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message
    assert "\n" not in message


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        read_idx(tmp_path / "nope.gz")
    with pytest.raises(UserError, match="is a directory"):
        read_idx(tmp_path)


def test_writer_refuses_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "x.gz", np.zeros(3, dtype=np.float32))
