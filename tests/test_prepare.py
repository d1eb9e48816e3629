"""prepare: raw IDX -> validated, resized, seeded train/val/test .npz plus data metrics; and the
`pipeline.data.arrays` loaders other stages use."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.config import parse_params
from pipeline.data.arrays import load_images, load_images_any, load_split, save_split
from pipeline.data.prepare import prepare_dataset
from pipeline.data.sources import fetch_dataset
from pipeline.errors import UserError


def prepare(raw, out, seed: int = 0, **data) -> dict:
    return prepare_dataset(raw, out, parse_params({"seed": seed, "data": data}).data, seed)


def test_splits_resize_and_metrics(make_raw, digits, tmp_path):
    raw = make_raw(n_train=40, n_test=10)
    metrics = prepare(raw, tmp_path / "prepared", val_fraction=0.25)
    train, val, test = (load_split(tmp_path / "prepared" / f"{s}.npz")
                        for s in ("train", "val", "test"))
    assert train.images.shape == (30, 28, 28, 1) and train.images.dtype == np.uint8
    assert val.images.shape == (10, 28, 28, 1) and test.images.shape == (10, 28, 28, 1)
    assert train.labels.dtype == np.int64 and train.class_names == [str(d) for d in range(10)]
    images, labels = digits
    # train + val is the raw train set (labels as a multiset), test is the raw test set.
    assert sorted([*train.labels, *val.labels]) == sorted(labels[:40].tolist())
    assert test.labels.tolist() == labels[40:50].tolist()
    # 16 -> 28 px: exactly PIL's bilinear resize of each raw image.
    expected = np.asarray(Image.fromarray(images[40]).resize((28, 28), Image.BILINEAR))
    np.testing.assert_array_equal(test.images[0, :, :, 0], expected)
    assert metrics["counts"] == {"train": 30, "val": 10, "test": 10, "total": 50}
    assert metrics["image_shape"] == [28, 28, 1] and metrics["dataset"] == "digits"
    assert sum(metrics["class_counts"]["val"].values()) == 10
    pixels = train.images / 255.0
    assert metrics["train_pixel_mean"] == pytest.approx(pixels.mean(), abs=1e-6)
    assert metrics["train_pixel_std"] == pytest.approx(pixels.std(), abs=1e-6)


def test_same_seed_same_split_other_seed_other_split(make_raw, tmp_path):
    raw = make_raw()
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        prepare(raw, tmp_path / name, seed=seed, image_size=32)
    a, b, c = (load_split(tmp_path / n / "val.npz") for n in "abc")
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape[1:] == (32, 32, 1)


def test_zero_val_fraction_gives_an_empty_val_split(make_raw, tmp_path):
    prepare(make_raw(), tmp_path / "p", val_fraction=0.0)
    val = load_split(tmp_path / "p" / "val.npz")
    assert val.images.shape == (0, 28, 28, 1) and len(load_split(tmp_path / "p" /
                                                                 "train.npz").labels) == 40


def test_digits_fetch_then_prepare_keeps_all_1797(tmp_path):
    data = parse_params({"data": {"dataset": "digits"}}).data
    fetch_dataset(data, 0, tmp_path / "raw")
    metrics = prepare_dataset(tmp_path / "raw", tmp_path / "prepared", data, 0)
    assert metrics["counts"]["total"] == 1797 and metrics["num_classes"] == 10


def test_rgb_raw_stays_rgb(tmp_path):
    src = tmp_path / "src" / "only"
    src.mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (30, 30), (i * 40, 0, 0)).save(src / f"{i}.png")
    data = parse_params({"data": {"dataset": "folder", "source": str(src), "channels": 3}}).data
    fetch_dataset(data, 0, tmp_path / "raw")
    prepare_dataset(tmp_path / "raw", tmp_path / "p", data, 0)
    split = load_split(tmp_path / "p" / "train.npz")
    assert split.images.shape[1:] == (28, 28, 3) and split.class_names == ["only"]


def test_loaders_validate_what_they_read(tmp_path):
    good = np.zeros((2, 4, 4, 1), np.uint8)
    save_split(tmp_path / "ok.npz", good, np.array([0, 1]), ["a", "b"])
    assert load_split(tmp_path / "ok.npz").class_names == ["a", "b"]
    np.testing.assert_array_equal(load_images(tmp_path / "ok.npz"), good)
    np.savez(tmp_path / "float.npz", images=good.astype(np.float32))
    np.savez(tmp_path / "range.npz", images=good, labels=np.array([0, 5]),
             class_names=np.array(["a", "b"]))
    np.savez(tmp_path / "nolabels.npz", images=good)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    cases = [("float.npz", load_images, "images must be uint8 (N, H, W, C)"),
             ("range.npz", load_split, "label 5 outside [0, 2)"),
             ("nolabels.npz", load_split, "missing array(s) labels, class_names"),
             ("junk.npz", load_images, "not a readable .npz"),
             ("absent.npz", load_split, "not found")]
    for name, loader, expected in cases:
        with pytest.raises(UserError) as err:
            loader(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: ") and expected in str(err.value)


def test_load_images_any_reads_npz_files_and_folders(tmp_path):
    save_split(tmp_path / "s.npz", np.full((3, 8, 8, 1), 9, np.uint8), np.zeros(3), ["x"])
    assert load_images_any(tmp_path / "s.npz", image_size=28).shape == (3, 28, 28, 1)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (28, 28), 5).save(folder / "a.png")
    Image.new("RGB", (28, 28), (1, 2, 3)).save(folder / "b.png")
    assert load_images_any(folder).shape == (2, 28, 28, 3)
    assert load_images_any(folder / "a.png").shape == (1, 28, 28, 1)
    Image.new("L", (32, 32)).save(folder / "c.png")
    with pytest.raises(UserError, match="different sizes"):
        load_images_any(folder)
    assert load_images_any(folder, image_size=28, channels=1).shape == (3, 28, 28, 1)
