"""fetch: every dataset source writes the four IDX files plus a manifest, sha256-checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import parse_params
from pipeline.data.idx import read_images, read_labels
from pipeline.data.sources import IDX_FILES, fetch_dataset, sha256_file

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST / IDX_FILES[0]).is_file(),
                                  reason="Debian package dataset-fashion-mnist not installed")


def fetch(tmp_path: Path, seed: int = 0, **data) -> dict:
    params = parse_params({"seed": seed, "data": data})
    return fetch_dataset(params.data, params.seed, tmp_path / "raw")


def test_digits_are_split_written_and_described(tmp_path):
    manifest = fetch(tmp_path, dataset="digits", image_size=32, test_fraction=0.25)
    raw = tmp_path / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted([*IDX_FILES, "manifest.json"])
    train, test = read_images(raw / IDX_FILES[0]), read_images(raw / IDX_FILES[2])
    assert train.shape[1:] == (32, 32, 1) and len(train) + len(test) == 1797
    assert len(test) == round(0.25 * 1797)
    assert read_labels(raw / IDX_FILES[3]).max() == 9
    assert manifest == json.loads((raw / "manifest.json").read_text())
    assert manifest["class_names"] == [str(d) for d in range(10)]
    assert manifest["image_shape"] == [32, 32, 1]
    assert manifest["files"][IDX_FILES[0]]["sha256"] == sha256_file(raw / IDX_FILES[0])
    assert manifest["files"][IDX_FILES[0]]["known"] is None
    # Same params, same bytes; another seed, another split.
    again = fetch(tmp_path / "again", dataset="digits", image_size=32, test_fraction=0.25)
    other = fetch(tmp_path / "other", seed=1, dataset="digits", image_size=32,
                  test_fraction=0.25)
    assert again["files"] == manifest["files"]
    assert other["files"][IDX_FILES[0]]["sha256"] != manifest["files"][IDX_FILES[0]]["sha256"]


@needs_fmnist
def test_fashion_mnist_is_copied_from_the_debian_package(tmp_path):
    manifest = fetch(tmp_path)
    assert manifest["source"] == str(FMNIST)
    assert {f["known"] for f in manifest["files"].values()} == {"debian"}
    for name in IDX_FILES:
        assert (tmp_path / "raw" / name).read_bytes() == (FMNIST / name).read_bytes()
    assert manifest["class_names"][0] == "T-shirt/top" and len(manifest["class_names"]) == 10


@needs_fmnist
def test_fashion_mnist_download_path_through_a_file_mirror(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    mirror = tmp_path / "mirror"
    shutil.copytree(FMNIST, mirror)
    manifest = fetch(tmp_path, source=str(empty), mirror=mirror.as_uri() + "/")
    url = f"{mirror.as_uri()}/{IDX_FILES[0]}"
    assert manifest["files"][IDX_FILES[0]]["from"] == url
    assert manifest["source"] == mirror.as_uri()
    assert sha256_file(tmp_path / "raw" / IDX_FILES[0]) == sha256_file(FMNIST / IDX_FILES[0])


def _png(path: Path, value: int, size: tuple[int, int] = (20, 20), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode in ("L", "P") else (value,) * len(mode)
    Image.new(mode, size, color).save(path)


def test_folder_with_class_subfolders(tmp_path):
    src = tmp_path / "photos"
    for i in range(4):
        _png(src / "b_shoes" / f"{i}.png", 200)
        _png(src / "a_bags" / f"{i}.jpg", 10, mode="RGB")
    (src / "a_bags" / "notes.txt").write_text("ignored")
    (src / "a_bags" / ".DS_Store").write_bytes(b"\0")
    manifest = fetch(tmp_path, dataset="folder", source=str(src), test_fraction=0.25)
    raw = tmp_path / "raw"
    assert manifest["class_names"] == ["a_bags", "b_shoes"]
    images = np.concatenate([read_images(raw / IDX_FILES[0]), read_images(raw / IDX_FILES[2])])
    labels = np.concatenate([read_labels(raw / IDX_FILES[1]), read_labels(raw / IDX_FILES[3])])
    assert images.shape == (8, 28, 28, 1) and manifest["counts"] == {"train": 6, "t10k": 2}
    # Stratified: one of each class held out; JPEG gray ~10, PNG 200, per class.
    assert sorted(read_labels(raw / IDX_FILES[3]).tolist()) == [0, 1]
    assert np.all(np.abs(images[labels == 0].astype(int) - 10) <= 2)
    assert np.all(images[labels == 1] == 200)


def test_flat_folder_rgb_with_mixed_modes_and_centre_crop(tmp_path):
    src = tmp_path / "flat"
    _png(src / "gray.png", 128)
    _png(src / "rgba.png", 50, mode="RGBA")
    _png(src / "pal.png", 7, mode="P")
    _png(src / "la.png", 90, mode="LA")
    # 64x32: left half black, right half white; shorter side -> 32, centre crop keeps both.
    wide = np.zeros((32, 64), np.uint8)
    wide[:, 32:] = 255
    Image.fromarray(wide).convert("RGB").save(src / "wide.png")
    manifest = fetch(tmp_path, dataset="folder", source=str(src), channels=3, image_size=32,
                     test_fraction=0.2)
    assert manifest["class_names"] == ["flat"] and manifest["image_shape"] == [32, 32, 3]
    raw = tmp_path / "raw"
    train = read_images(raw / IDX_FILES[0])
    assert train.shape[1:] == (32, 32, 3) and len(train) == 4
    everything = np.concatenate([train, read_images(raw / IDX_FILES[2])])
    wide_out = next(x for x in everything if x[0, 0, 0] == 0 and x[0, -1, 0] == 255)
    assert (wide_out[:, :15] == 0).all() and (wide_out[:, 17:] == 255).all()
