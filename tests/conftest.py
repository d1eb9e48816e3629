"""Shared fixtures: sklearn's digits as raw arrays, an independent IDX writer, tiny raw datasets
in the `data/raw/` layout, and a runner for stage scripts in a scratch directory."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAW_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08, dims: tuple[int, ...] | None = None,
              prefix: bytes = b"\x00\x00") -> bytes:
    """IDX bytes written independently of pipeline.data.idx; header fields can be faked."""
    dims = array.shape if dims is None else dims
    header = prefix + bytes([dtype_code, len(dims)]) + b"".join(struct.pack(">I", d)
                                                                for d in dims)
    return header + array.astype(np.uint8).tobytes()


def gz(blob: bytes) -> bytes:
    return gzip.compress(blob, mtime=0)


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1797 digits as uint8 (N, 16, 16) (8x8 repeated 2x2) and int64 labels (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.round(d.images * 255 / 16).astype(np.uint8)
    return small.repeat(2, axis=1).repeat(2, axis=2), d.target.astype(np.int64)


@dataclass(frozen=True)
class DigitsGAN:
    """A DCGAN briefly trained on sklearn digits at 28 px (the pipeline's own digits loader)."""

    images: np.ndarray  # all 1797 digits, uint8 (N, 28, 28, 1)
    labels: np.ndarray  # int64 (N,)
    train_rows: slice  # the rows G and D trained on; the others are held-out reals
    generator: Path  # generator.pt after training (the train stage's out format)
    discriminator: Path  # discriminator.pt after training
    initial: Path  # generator.pt of the same G before its first step: an untrained G

    def fakes(self, n: int, seed: int, trained: bool = True) -> np.ndarray:
        """uint8 (n, 28, 28, 1) samples, as the generate stage draws them."""
        from pipeline.generate import sample
        from pipeline.models import load_generator

        G, meta = load_generator(self.generator if trained else self.initial)
        return sample(G, meta, n, seed)[0]


@pytest.fixture(scope="session")
def digits_gan(tmp_path_factory) -> DigitsGAN:
    """Real GAN fakes for the quality guard and the detector tests: the worker loop in-process
    (LocalHooks, no Ray), 6 epochs x 40 steps of 32 images on 1300 digits, ~3-5 s.

    Its quality, over seeds 0-3: see tests/test_quality_guard.py (domain FID 22-38 vs 365
    untrained, recall 0.44-0.57 vs 0). G's lr is twice D's: at equal rates (1e-3) D won outright
    on 1 seed of 4 and G stayed at its init. One thread: two OpenMP threads on this shared
    2-core machine ran the same steps 3-40x slower.
    """
    import torch

    from pipeline.config import ModelConfig, TrainConfig
    from pipeline.data.images import load_digits_dataset
    from pipeline.models import build_models, load_checkpoint, make_checkpoint, save_checkpoint
    from pipeline.train.loop import LocalHooks, WorkerConfig, train_worker

    root = tmp_path_factory.mktemp("digits_gan")
    images, labels, names = load_digits_dataset(28)
    rows = slice(400, 1700)
    model = ModelConfig(latent_dim=16, g_features=16, d_features=16)
    cfg = WorkerConfig(model=model, train=TrainConfig(
        epochs=6, batch_size=32, lr_g=1e-3, lr_d=5e-4, grid_size=16), seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_worker(cfg, images[rows], labels[rows], names, LocalHooks(root / "ckpt"))
    finally:
        torch.set_num_threads(threads)
    last = max((load_checkpoint(p) for p in (root / "ckpt").rglob("*.pt")),
               key=lambda c: c["epoch"])  # the last epoch's checkpoint
    assert last["epoch"] == cfg.train.epochs
    meta = {k: last[k] for k in ("model_config", "image_shape", "num_classes", "class_names",
                                 "epoch", "step")}
    torch.manual_seed(cfg.seed)  # as the loop initialises G
    initial, _ = build_models(model.model_dump(), (1, 28, 28), len(names))
    paths = {name: root / f"{name}.pt" for name in ("generator", "discriminator", "initial")}
    save_checkpoint(paths["generator"], make_checkpoint(**meta, generator=last["generator"]))
    save_checkpoint(paths["discriminator"], make_checkpoint(
        **meta, discriminator=last["discriminator"]))
    save_checkpoint(paths["initial"], make_checkpoint(**{**meta, "epoch": 0, "step": 0},
                                                      generator=initial))
    return DigitsGAN(images, labels, rows, **paths)


RawMaker = Callable[..., Path]


@pytest.fixture
def make_raw(digits, tmp_path) -> RawMaker:
    """`make_raw(n_train=40, n_test=10, files={name: bytes})` -> a raw dir like fetch writes.

    `files` replaces any file's bytes (to build corrupt inputs); the manifest records the final
    sha256, as fetch would, so prepare reaches the IDX checks.
    """

    def make(n_train: int = 40, n_test: int = 10, files: dict[str, bytes] | None = None,
             dest: Path | None = None, class_names: list[str] | None = None) -> Path:
        images, labels = digits
        raw = dest or tmp_path / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        parts = {"train": slice(0, n_train), "t10k": slice(n_train, n_train + n_test)}
        blobs = {}
        for split, rows in parts.items():
            blobs[f"{split}-images-idx3-ubyte.gz"] = gz(idx_bytes(images[rows]))
            blobs[f"{split}-labels-idx1-ubyte.gz"] = gz(idx_bytes(labels[rows]))
        blobs.update(files or {})
        for name, blob in blobs.items():
            (raw / name).write_bytes(blob)
        manifest = {"dataset": "digits", "source": "test",
                    "files": {n: {"sha256": hashlib.sha256(b).hexdigest()}
                              for n, b in blobs.items()},
                    "class_names": class_names or [str(d) for d in range(10)],
                    "image_shape": [16, 16, 1]}
        (raw / "manifest.json").write_text(json.dumps(manifest))
        return raw

    return make


@pytest.fixture
def run_stage() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`run_stage("fetch", "--out", path, cwd=dir, params={...})`: the real script, with
    params.yaml written into `cwd` (stages read it from the working directory)."""

    def run(stage: str, *args: str | os.PathLike[str], cwd: Path,
            params: dict | None = None) -> subprocess.CompletedProcess[str]:
        if params is not None:
            (cwd / "params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, str(REPO / "stages" / f"{stage}.py"), *map(str, args)]
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=120)

    return run


def copy_repo(dest: Path) -> Path:
    """The repo's files (tracked, plus new ones not ignored) without data or outputs; a git repo."""
    import shutil

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in listed.splitlines():
        src = REPO / rel
        if rel.startswith(("data/", "metrics/", "models/")) or rel == "dvc.lock" \
                or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def repo_env(repo: Path, **extra: str) -> dict[str, str]:
    """Environment for running stages/dvc in a repo copy: its own `pipeline`, the venv's tools."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1", **extra}


@contextlib.contextmanager
def local_ray(num_cpus: int = 2) -> Iterator[None]:
    """An embedded local Ray with a short private temp dir; afterwards every process it started
    is killed by PID. Ray can leave a Train controller actor orphaned after a failed `fit()`;
    all of its processes inherit a marker variable set here, which finds exactly them."""
    import shutil
    import tempfile
    import uuid

    import ray

    from servers import kill_marked

    key, value = "GANF_TEST_LOCAL_RAY", uuid.uuid4().hex
    os.environ[key] = value
    temp = tempfile.mkdtemp(prefix="rgf-", dir="/tmp")  # short: Ray's unix sockets live here
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp,
                 logging_level="WARNING")
        yield
    finally:
        ray.shutdown()
        kill_marked(f"{key}={value}")
        os.environ.pop(key, None)
        shutil.rmtree(temp, ignore_errors=True)


def digits_npz(path: Path, size: int = 28) -> Path:
    """sklearn digits upscaled to uint8 (N, size, size, 1), saved as a prepared train.npz."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:, None].astype(np.float32) / 16.0)
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    np.savez(path, images=images, labels=d.target.astype(np.int64),
             class_names=np.array([str(i) for i in range(10)]))
    return path


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on `n` intra-op threads inside the block; the caller's count restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """In-process training on one thread: bit-for-bit pins need a fixed thread count, and two
    OpenMP threads on this shared 2-core machine ran the same steps several times slower."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def digits_arrays(tmp_path_factory) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The digits a Ray train stage would read (`digits_npz`), as in-process arrays: images,
    labels, class names."""
    with np.load(digits_npz(tmp_path_factory.mktemp("digits") / "train.npz")) as z:
        return z["images"], z["labels"], [str(c) for c in z["class_names"]]
