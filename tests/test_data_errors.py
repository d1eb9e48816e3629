"""Bad input to fetch/prepare: one `error: ...` line naming the file or key, exit 1, no
traceback, and the previous outputs untouched. Each case runs the pipeline function; the
`script` ones also run the real stage script in a scratch directory."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import parse_params
from pipeline.data.prepare import prepare_dataset
from pipeline.data.sources import IDX_FILES, fetch_dataset
from pipeline.errors import UserError

from conftest import gz, idx_bytes

TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, _ = IDX_FILES
FAKE = gz(b"not fashion-mnist")
FAKE_SHA = hashlib.sha256(FAKE).hexdigest()


@dataclass(frozen=True)
class Case:
    stage: str  # "fetch" or "prepare"
    setup: Callable[[Path, Callable[..., Path]], dict]  # builds inputs, returns params
    expected: list[str]  # substrings of the one error line (the first names the file/key)
    script: bool = False  # also run stages/<stage>.py in a subprocess


def _dir(path: Path, files: dict[str, bytes] | None = None) -> str:
    path.mkdir(parents=True, exist_ok=True)
    for name, blob in (files or {}).items():
        (path / name).write_bytes(blob)
    return str(path)


def _images(path: Path, n: int = 3, blob: bytes | None = None) -> str:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("L", (28, 28), i).save(path / f"{i}.png")
    if blob is not None:
        (path / "broken.png").write_bytes(blob)
    return str(path)


def _noise_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def fm(**data) -> dict:
    return {"data": {"dataset": "fashion-mnist", **data}}


def folder(source: str, **data) -> dict:
    return {"data": {"dataset": "folder", "source": source, **data}}


def raw(**files: bytes) -> Callable[[Path, Callable[..., Path]], dict]:
    """A prepare case: a raw dir with some files replaced (manifest sha256 kept consistent)."""

    def setup(tmp: Path, make_raw: Callable[..., Path]) -> dict:
        make_raw(dest=tmp / "data" / "raw", files={k.replace("_", "-") + "-ubyte.gz": v
                                                   for k, v in files.items()})
        return {}

    return setup


def stale_raw(tmp: Path, make_raw: Callable[..., Path]) -> dict:
    (make_raw(dest=tmp / "data" / "raw") / TRAIN_IMAGES).write_bytes(FAKE)  # edited after fetch
    return {}


def no_manifest(tmp: Path, make_raw: Callable[..., Path]) -> dict:
    (make_raw(dest=tmp / "data" / "raw") / "manifest.json").unlink()
    return {}


def missing_file(tmp: Path, make_raw: Callable[..., Path]) -> dict:
    (make_raw(dest=tmp / "data" / "raw") / TRAIN_LABELS).unlink()
    return {}



def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


CASES = {
    # fetch: sources
    "sha256 mismatch": Case("fetch", lambda t, m: fm(source=_dir(
        t / "src", dict.fromkeys(IDX_FILES, FAKE))), [
        f"src/{TRAIN_IMAGES}: sha256 mismatch", FAKE_SHA, "3aede38d6186", "b0564c3eedab"], True),
    "missing dataset, no download": Case("fetch", lambda t, m: fm(
        source=_dir(t / "empty"), download=False), [
        f"{TRAIN_IMAGES} not found", "apt-get install dataset-fashion-mnist", "data.source",
        "data.download: true"], True),
    "mirror that does not exist": Case("fetch", lambda t, m: fm(
        source=_dir(t / "empty"), mirror=(t / "nowhere").as_uri()), [
        f"nowhere/{TRAIN_IMAGES}: download failed", "No such file"], True),
    "mirror that is not a URL": Case("fetch", lambda t, m: fm(
        source=_dir(t / "empty"), mirror="mirror.example"), ["data.mirror: ", "not a valid URL"]),
    "mnist mirror with wrong files": Case("fetch", lambda t, m: {"data": {
        "dataset": "mnist",
        "mirror": Path(_dir(t / "m", dict.fromkeys(IDX_FILES, FAKE))).as_uri()}}, [
        f"m/{TRAIN_IMAGES}: sha256 mismatch", "440fcabf73cc"]),
    "source is a file": Case("fetch", lambda t, m: fm(source=_images(t / "s") + "/0.png"), [
        "data.source: ", "is a file"], True),
    "source does not exist": Case("fetch", lambda t, m: fm(source=str(t / "nope")), [
        "data.source: ", "does not exist"]),
    # fetch: image folders
    "corrupt PNG": Case("fetch", lambda t, m: folder(_images(t / "imgs", blob=b"\x89PNG junk")), [
        "broken.png: not a readable PNG/JPEG image"], True),
    "truncated PNG": Case("fetch", lambda t, m: folder(_images(t / "imgs", blob=_noise_png()[
        :400])), ["broken.png: unreadable image (image file is truncated"]),
    "empty folder": Case("fetch", lambda t, m: folder(_dir(t / "imgs")), [
        "imgs: no PNG/JPEG images (empty folder)"], True),
    "empty class folder": Case("fetch", lambda t, m: folder(
        _images(t / "imgs" / "cats") and _dir(t / "imgs" / "dogs") and str(t / "imgs")), [
        "dogs: no PNG/JPEG images"]),
    "image beside class folders": Case("fetch", lambda t, m: folder(
        _images(t / "imgs" / "cats") and _images(t / "imgs", 1)), [
        "0.png: image beside class folders"]),
    "too few images to split": Case("fetch", lambda t, m: folder(_images(t / "imgs", 1)), [
        "data.source: ", "too few for a train/test split"]),
    # prepare: raw IDX files
    "truncated gzip": Case("prepare", raw(train_images_idx3=gz(idx_bytes(
        _zeros(40, 16, 16)))[:-30]), [
        f"{TRAIN_IMAGES}: truncated gzip"], True),
    "wrong IDX magic": Case("prepare", raw(train_images_idx3=gz(idx_bytes(
        _zeros(40, 16, 16), prefix=b"PK"))), [
        f"{TRAIN_IMAGES}: not an IDX file"], True),
    "image/label count mismatch": Case("prepare", raw(train_labels_idx1=gz(idx_bytes(_zeros(3)))), [
        f"{TRAIN_LABELS}: 3 labels but {TRAIN_IMAGES} has 40 images"], True),
    "label out of range": Case("prepare", raw(train_labels_idx1=gz(idx_bytes(
        np.arange(40)))), [
        f"{TRAIN_LABELS}: label 10 at index 10 is outside [0, 10)"], True),
    "zero-byte file": Case("prepare", raw(t10k_images_idx3=b""), [
        f"{TEST_IMAGES}: empty file (0 bytes)"], True),
    "dims larger than the data": Case("prepare", raw(train_images_idx3=gz(idx_bytes(
        _zeros(4, 16, 16), dims=(40, 16, 16)))), [f"{TRAIN_IMAGES}: truncated: header dims"]),
    "non-uint8 dtype": Case("prepare", raw(train_images_idx3=gz(idx_bytes(
        _zeros(40, 16, 16), dtype_code=0x0C))), [
        f"{TRAIN_IMAGES}: IDX dtype code 0x0C (int32)"]),
    "zero-size images": Case("prepare", raw(t10k_images_idx3=gz(idx_bytes(
        _zeros(10, 0, 0)))), [f"{TEST_IMAGES}: images must have a positive"]),
    "labels in the images slot": Case("prepare", raw(t10k_images_idx3=gz(idx_bytes(_zeros(10)))),
        [f"{TEST_IMAGES}: is a labels file"]),
    "test images of another size": Case("prepare", raw(t10k_images_idx3=gz(idx_bytes(
        _zeros(10, 8, 8)))), [
        f"{TEST_IMAGES}: images are (8, 8, 1) but {TRAIN_IMAGES} has (16, 16, 1)"]),
    "raw file edited after fetch": Case("prepare", stale_raw, [
        f"{TRAIN_IMAGES}: sha256", "does not match manifest.json", "dvc repro fetch"]),
    "raw file missing": Case("prepare", missing_file, [f"{TRAIN_LABELS}: missing"]),
    "manifest missing": Case("prepare", no_manifest, ["manifest.json: not found"]),
    # params.yaml (validated by pipeline.config before any data is touched)
    "unknown params key": Case("fetch", lambda t, m: {"data": {"datset": "mnist"}}, [
        "params.yaml: data.datset: unknown key (valid: dataset,"], True),
    "zero image size": Case("fetch", lambda t, m: {"data": {"image_size": 0}}, [
        "data.image_size: must be one of 28, 32 or 64, got 0"], True),
    "negative image size": Case("prepare", lambda t, m: {"data": {"image_size": -28}}, [
        "data.image_size: must be one of 28, 32 or 64, got -28"]),
    "val_fraction 1": Case("prepare", lambda t, m: {"data": {"val_fraction": 1.0}}, [
        "data.val_fraction: must be < 1.0, got 1.0"], True),
    "negative val_fraction": Case("prepare", lambda t, m: {"data": {"val_fraction": -0.1}}, [
        "data.val_fraction: must be >= 0.0, got -0.1"]),
    "zero test_fraction": Case("fetch", lambda t, m: {"data": {"test_fraction": 0}}, [
        "data.test_fraction: must be > 0.0, got 0"]),
}


def _previous_outputs(tmp: Path) -> dict[Path, bytes]:
    """Outputs of an earlier successful run, which a failed run must leave as they are."""
    prev = {tmp / "data" / "prepared" / "train.npz": b"previous npz",
            tmp / "metrics" / "data.json": b'{"previous": true}\n'}
    if not (tmp / "data" / "raw").exists():  # fetch cases: data/raw/ is the stage's out
        prev[tmp / "data" / "raw" / "manifest.json"] = b'{"previous": true}\n'
    for path, blob in prev.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    return prev


def _tree(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for d in ("data", "metrics")
                  for p in (tmp / d).rglob("*"))


def _build(name: str, tmp: Path, make_raw: Callable[..., Path]):
    """(case, params, previous outputs, output tree) with the case's inputs built under tmp."""
    spec = CASES[name]
    params = spec.setup(tmp, make_raw)
    prev = _previous_outputs(tmp)
    return spec, params, prev, _tree(tmp)


@pytest.mark.parametrize("name", list(CASES))
def test_function_raises_one_line(name, tmp_path, make_raw):
    spec, params, prev, tree = _build(name, tmp_path, make_raw)
    with pytest.raises(UserError) as err:
        cfg = parse_params(params)
        if spec.stage == "fetch":
            fetch_dataset(cfg.data, cfg.seed, tmp_path / "data" / "raw")
        else:
            prepare_dataset(tmp_path / "data" / "raw", tmp_path / "data" / "prepared", cfg.data,
                            cfg.seed)
    message = str(err.value)
    print(f"{name}: {message}")
    assert "\n" not in message
    for part in spec.expected:
        assert part in message
    assert all(path.read_bytes() == blob for path, blob in prev.items())
    assert _tree(tmp_path) == tree  # no temp dirs or half-written files left behind


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.script])
def test_stage_script_prints_one_error_line(name, tmp_path, make_raw, run_stage):
    spec, params, prev, tree = _build(name, tmp_path, make_raw)
    work = tmp_path / "work"
    work.mkdir()
    data, metrics = tmp_path / "data", tmp_path / "metrics"
    args = (["--out", data / "raw"] if spec.stage == "fetch" else
            ["--raw", data / "raw", "--out", data / "prepared", "--metrics", metrics / "data.json"])
    result = run_stage(spec.stage, *args, cwd=work, params=params)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in spec.expected:
        assert part in lines[0]
    assert all(path.read_bytes() == blob for path, blob in prev.items())
    assert _tree(tmp_path) == tree
