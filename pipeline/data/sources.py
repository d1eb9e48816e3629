"""The `fetch` stage's work: put a dataset's four IDX files and a manifest into `data/raw/`.

    python stages/fetch.py --out data/raw        # calls fetch_dataset(params.data, seed, out)

fashion-mnist / mnist are copied from a local directory (data.source, or Debian's
`dataset-fashion-mnist` at /usr/share/datasets/fashion-mnist/) or downloaded from their
canonical URLs (data.mirror replaces the base; file:// works), each file checked against its
known sha256. digits (sklearn) and folder (your images) are written with our IDX writer after a
seeded train/test split. The directory is replaced atomically: a failure keeps the old one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from pipeline.config import DataConfig
from pipeline.data.idx import write_idx
from pipeline.data.images import load_digits_dataset, load_folder_dataset
from pipeline.data.split import split_indices
from pipeline.errors import UserError
from pipeline.io import atomic_dir, sha256_file

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class IdxDataset:
    """A published IDX dataset: where to get it and the sha256 of every accepted copy."""

    name: str
    url: str  # base URL; a file's URL is url + "/" + file name
    class_names: tuple[str, ...]
    sha256: dict[str, dict[str, str]]  # file -> {digest: which copy it is}
    default_dir: str | None = None
    hint: str = ""  # how to get it without a download
    image_shape: tuple[int, int, int] = (28, 28, 1)
    files: tuple[str, ...] = field(default=IDX_FILES)


FASHION_MNIST = IdxDataset(
    name="fashion-mnist",
    url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
    # Debian repacks the upstream gzip files without the file name in their headers, so the
    # same data has two digests; both are accepted.
    sha256={
        TRAIN_IMAGES: {
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84": "upstream",
            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7": "debian"},
        TRAIN_LABELS: {
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845": "upstream",
            "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056": "debian"},
        TEST_IMAGES: {
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073": "upstream",
            "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa": "debian"},
        TEST_LABELS: {
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5": "upstream",
            "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05": "debian"},
    },
    default_dir="/usr/share/datasets/fashion-mnist",
    hint="install it with `apt-get install dataset-fashion-mnist`, ",
)

MNIST = IdxDataset(
    name="mnist",
    url="https://ossci-datasets.s3.amazonaws.com/mnist",
    class_names=tuple(str(d) for d in range(10)),
    sha256={
        TRAIN_IMAGES: {
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609": "upstream"},
        TRAIN_LABELS: {
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c": "upstream"},
        TEST_IMAGES: {
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6": "upstream"},
        TEST_LABELS: {
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6": "upstream"},
    },
)

IDX_DATASETS = {d.name: d for d in (FASHION_MNIST, MNIST)}


def _copy_hashing(src: IO[bytes], dest: Path, total: int | None, label: str) -> str:
    """Stream src to dest in 1 MiB blocks, hashing on the way (one pass over the bytes)."""
    digest = hashlib.sha256()
    with open(dest, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=label,
                                       disable=None) as bar:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
            bar.update(len(block))
    return digest.hexdigest()


def _download(url: str, dest: Path) -> str:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            length = resp.headers.get("Content-Length")
            return _copy_hashing(resp, dest, int(length) if length else None, dest.name)
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        reason = str(getattr(exc.reason, "strerror", None) or exc.reason)
    except ValueError as exc:  # not a URL at all, e.g. a mirror without a scheme
        raise UserError(f"data.mirror: {url} is not a valid URL ({exc})") from None
    except (OSError, http.client.HTTPException) as exc:
        reason = str(exc) or type(exc).__name__
    raise UserError(f"{url}: download failed ({reason}); check data.mirror and the network, "
                    f"or set data.source to a local copy")


def _check_known(spec: IdxDataset, name: str, digest: str, origin: str) -> str:
    known = spec.sha256[name]
    if digest not in known:
        raise UserError(f"{origin}: sha256 mismatch for {name}: got {digest}, expected "
                        f"{' or '.join(known)} ({spec.name}); the file is corrupt or not "
                        f"{spec.name}")
    return known[digest]


def _local_dir(spec: IdxDataset, data: DataConfig) -> Path | None:
    if data.source is None:
        return Path(spec.default_dir) if spec.default_dir else None
    local = Path(data.source)
    if not local.exists():
        raise UserError(f"data.source: {local} does not exist")
    if not local.is_dir():
        raise UserError(f"data.source: {local} is a file, expected a directory with "
                        f"{', '.join(spec.files)}")
    return local


def fetch_idx(spec: IdxDataset, data: DataConfig, out: Path) -> dict[str, Any]:
    """Copy or download the four files of `spec` into `out`; return the manifest's entries."""
    local = _local_dir(spec, data)
    base = (data.mirror or spec.url).rstrip("/")
    files: dict[str, Any] = {}
    for name in spec.files:
        if local is not None and (local / name).is_file():
            origin = str(local / name)
            with open(origin, "rb") as src:
                digest = _copy_hashing(src, out / name, (local / name).stat().st_size, name)
        elif data.download:
            origin = f"{base}/{name}"
            digest = _download(origin, out / name)
        else:
            where = f"in {local}" if local else "locally"
            raise UserError(
                f"{spec.name}: {name} not found {where} and data.download is false; "
                f"{spec.hint}set data.source to a directory with the IDX .gz files, "
                f"or set data.download: true")
        copy = _check_known(spec, name, digest, origin)
        files[name] = {"sha256": digest, "bytes": (out / name).stat().st_size, "from": origin,
                       "known": copy}
    sources = sorted({str(Path(f["from"]).parent) if "://" not in f["from"] else base
                      for f in files.values()})
    return {"dataset": spec.name, "source": " + ".join(sources), "files": files,
            "class_names": list(spec.class_names), "image_shape": list(spec.image_shape)}


def build_idx(dataset: str, data: DataConfig, seed: int, out: Path) -> dict[str, Any]:
    """digits / folder: load, split train/test by data.test_fraction, write with our writer."""
    if dataset == "digits":
        images, labels, names = load_digits_dataset(data.image_size)
        source = "sklearn.datasets.load_digits"
    else:
        assert data.source is not None  # config requires it for the folder dataset
        images, labels, names = load_folder_dataset(data.source, data.image_size, data.channels)
        source = str(Path(data.source).resolve())
    if len(names) > 256:  # IDX labels are one unsigned byte
        raise UserError(f"data.source: {source} has {len(names)} class folders, at most 256")
    train, test = split_indices(labels, data.test_fraction, seed)
    if len(train) == 0 or len(test) == 0:
        raise UserError(f"data.source: {source} has {len(labels)} image(s): too few for a "
                        f"train/test split (data.test_fraction {data.test_fraction})")
    gray = images.shape[-1] == 1
    for name, arr in ((TRAIN_IMAGES, images[train]), (TEST_IMAGES, images[test])):
        write_idx(out / name, arr[..., 0] if gray else arr)  # gray: (N, H, W), magic 2051
    write_idx(out / TRAIN_LABELS, labels[train].astype("uint8"))
    write_idx(out / TEST_LABELS, labels[test].astype("uint8"))
    files = {n: {"sha256": sha256_file(out / n), "bytes": (out / n).stat().st_size,
                 "from": source, "known": None} for n in IDX_FILES}
    return {"dataset": dataset, "source": source, "files": files, "class_names": names,
            "image_shape": list(images.shape[1:]),
            "counts": {"train": len(train), "t10k": len(test)}}


def fetch_dataset(data: DataConfig, seed: int, out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write `out`/ (4 IDX .gz files + manifest.json) atomically; return the manifest."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        if data.dataset in IDX_DATASETS:
            manifest = fetch_idx(IDX_DATASETS[data.dataset], data, tmp)
        else:
            manifest = build_idx(data.dataset, data, seed, tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
