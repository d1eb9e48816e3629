"""The `evaluate` stage's library half: FID/KID/precision/recall of generated images against
real ones, in domain (FeatureNet) and Inception-v3 feature spaces, with the real-vs-real floor.

    from pipeline.metrics.evaluate import evaluate_quality, compute_fid

Protocol, for a space at sample size N: the real reference is the first N of a seeded
permutation of train.npz; the floor set is the next N (the remaining train images, then val.npz
when train has fewer than 2N); the fakes are the first N of the generated set. Too few images for
N is an error, never a silently smaller N. Real features are cached (see `cache.py`).
Inception: N = evaluate.inception.num_samples on CUDA, cpu_num_samples on a CPU, for `on` and
`auto` alike; `auto` skips it when the weights are not installed, `on` fails.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import EvaluateConfig
from pipeline.device import resolve_device
from pipeline.errors import UserError
from pipeline.io import sha256_file
from pipeline.metrics.cache import DEFAULT_DIR, cache_key, cached_features
from pipeline.metrics.features import (
    Extractor,
    domain_extractor,
    extract,
    inception_extractor,
)
from pipeline.metrics.registry import METRICS, MetricOptions, format_n, metric_key


def load_split_images(path: Path) -> np.ndarray:
    """uint8 (N, H, W, C) images of a prepared/generated .npz (the data package's loader)."""
    from pipeline.data.arrays import load_images

    return load_images(path)


def inception_available() -> bool:
    """Whether the Inception weights are installed (`auto` skips Inception, with a note, if not;
    `on` then fails with the install hint)."""
    from pipeline.metrics.inception import inception_path

    try:
        inception_path()
    except UserError as exc:
        print(f"note: Inception metrics skipped: {exc}")
        return False
    return True


def real_subsets(train: np.ndarray, val: np.ndarray | None, n: int, seed: int,
                 where: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(reference, floor, floor_uses_val): two disjoint real sets of exactly n images."""
    order = np.random.default_rng(seed).permutation(len(train))
    if len(train) < n:
        raise UserError(f"{where}/train.npz: {len(train)} images, fewer than N={n}; lower "
                        "evaluate.num_samples (or evaluate.inception.*num_samples)")
    reference, rest = train[order[:n]], train[order[n:]]
    uses_val = len(rest) < n
    if uses_val:
        rest = np.concatenate([rest, val]) if val is not None else rest
    if len(rest) < n:
        raise UserError(f"{where}: train+val have {n + len(rest)} images, the real-vs-real "
                        f"floor needs 2N={2 * n}; lower evaluate.num_samples")
    return reference, rest[:n], uses_val


def space_metrics(ex: Extractor, reference: np.ndarray, floor: np.ndarray, fake: np.ndarray,
                  opts: MetricOptions, batch_size: int, ref_key: str | None = None,
                  floor_key: str | None = None,
                  cache_dir: str | os.PathLike[str] | None = DEFAULT_DIR,
                  fake_where: str = "fake") -> dict[str, float | None]:
    """All registered metrics of fake vs reference and of floor vs reference (same N); KID's
    std is None when the subset size reaches N (one subset: the whole set)."""
    n = len(reference)

    def real(images: np.ndarray, key: str | None, desc: str) -> np.ndarray:
        compute = lambda: extract(images, ex, batch_size, desc)  # noqa: E731
        return cached_features(key, compute, cache_dir) if key else compute()

    ref_f = real(reference, ref_key, f"{ex.space} real reference")
    floor_f = real(floor, floor_key, f"{ex.space} real floor")
    fake_f = extract(fake, ex, batch_size, f"{ex.space} fake", where=fake_where)
    out: dict[str, float | None] = {f"n_{ex.space}": n}
    for fn in METRICS.values():
        for is_floor, other in ((False, fake_f), (True, floor_f)):
            for name, value in fn(ref_f, other, opts).items():
                out[metric_key(name, ex.space, n, is_floor)] = value
    out[f"kid_{ex.space}_{format_n(n)}_subset_size"] = min(opts.kid_subset_size, n)
    return out


def evaluate_quality(real_dir: str | os.PathLike[str], fake_path: str | os.PathLike[str],
                     featurenet_path: str | os.PathLike[str], cfg: EvaluateConfig, seed: int,
                     cache_dir: str | os.PathLike[str] | None = DEFAULT_DIR) -> dict[str, Any]:
    """Flat metrics dict for metrics/quality.json (domain space, then Inception if enabled)."""
    real_dir, fake_path = Path(real_dir), Path(fake_path)
    device = resolve_device(cfg.device, "evaluate.device")
    train_path, val_path = real_dir / "train.npz", real_dir / "val.npz"
    train, fake = load_split_images(train_path), load_split_images(fake_path)
    if fake.shape[1:] != train.shape[1:]:
        raise UserError(f"{fake_path}: images are {fake.shape[1:]} (H, W, C), real "
                        f"{train_path} are {train.shape[1:]}; regenerate with the same data.*")
    val = load_split_images(val_path) if val_path.is_file() else None
    hashes = {"train": sha256_file(train_path),
              "val": sha256_file(val_path) if val is not None else None}
    opts = MetricOptions(cfg.kid_subsets, cfg.kid_subset_size, cfg.pr_k, seed, cfg.batch_size)

    plan: list[tuple[str, int]] = [("domain", cfg.num_samples)]
    inc = cfg.inception
    if inc.enabled == "on" or (inc.enabled == "auto" and inception_available()):
        plan.append(("inception", inc.num_samples if device.type == "cuda"
                     else inc.cpu_num_samples))
    out: dict[str, Any] = {"device": device.type}
    for space, n in plan:
        if len(fake) < n:
            raise UserError(f"{fake_path}: {len(fake)} images, {space} metrics need N={n}; "
                            "raise generate.num_eval or lower the evaluate sample size")
        reference, floor, uses_val = real_subsets(train, val, n, seed, str(real_dir))
        ex = (domain_extractor(featurenet_path, device) if space == "domain"
              else inception_extractor(device))
        key = {"train": hashes["train"], "extractor": ex.identity, "n": n, "seed": seed}
        floor_key = {**key, "role": "floor", "val": hashes["val"] if uses_val else None}
        batch = cfg.batch_size if space == "domain" else inc.batch_size
        out.update(space_metrics(ex, reference, floor, fake[:n], opts, batch,
                                 cache_key(**key, role="reference"), cache_key(**floor_key),
                                 cache_dir, str(fake_path)))
    return out


def compute_fid(a_images: np.ndarray, b_images: np.ndarray, features: str = "domain",
                n: int | None = None, featurenet_path: str | os.PathLike[str] | None = None,
                device: str = "auto", batch_size: int = 500, seed: int = 0) -> dict[str, Any]:
    """FID between two uint8 NHWC image sets (for `gan-forensics fid A B`).

    Uses n images of each (first n of a seeded permutation; None = the smaller set's size).
    Returns {"name": "fid_domain_10k", "fid", "kid_mean", "kid_std" (100 subsets of
    min(1000, n); None when n <= 1000: the one subset is the whole set), "n", "features"}.
    """
    from pipeline.metrics.frechet import fid_from_features
    from pipeline.metrics.kid import kid

    if features not in ("domain", "inception"):
        raise UserError(f"features: must be 'domain' or 'inception', got {features!r}")
    n = min(len(a_images), len(b_images)) if n is None else n
    for label, imgs in (("A", a_images), ("B", b_images)):
        if len(imgs) < max(n, 2):
            raise UserError(f"{label}: {len(imgs)} images, fewer than n={max(n, 2)}")
    if a_images.shape[1:] != b_images.shape[1:]:
        raise UserError(f"image shapes differ: A {a_images.shape[1:]} vs B {b_images.shape[1:]}")
    dev = resolve_device(device)
    if features == "domain":
        if featurenet_path is None:
            raise UserError("domain features need featurenet_path (models/featurenet.pt)")
        ex = domain_extractor(featurenet_path, dev)
    else:
        ex = inception_extractor(dev)
    rng = np.random.default_rng(seed)
    picked = [imgs[rng.permutation(len(imgs))[:n]] for imgs in (a_images, b_images)]
    fa, fb = (extract(p, ex, batch_size, f"{features} features {s}", where=s)
              for p, s in zip(picked, "AB", strict=True))
    kid_mean, kid_std = kid(fa, fb, subsets=100, subset_size=min(1000, n), seed=seed)
    return {"name": metric_key("fid", features, n), "fid": fid_from_features(fa, fb),
            "kid_mean": kid_mean, "kid_std": kid_std, "n": n, "features": features}
