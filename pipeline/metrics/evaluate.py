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


def disjoint_samples(real: np.ndarray, extra: np.ndarray | None, n: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """The floor protocol: (reference, floor, floor_uses_extra). reference = the first n of a
    seeded permutation of `real`; floor = the next n, topped up from `extra` (more real images)
    when `real` has fewer than 2n; floor None when even both are too few. Needs len(real) >= n."""
    order = np.random.default_rng(seed).permutation(len(real))
    reference, rest = real[order[:n]], real[order[n:]]
    uses_extra = len(rest) < n
    if uses_extra:
        rest = np.concatenate([rest, extra]) if extra is not None else rest
    return reference, (rest[:n] if len(rest) >= n else None), uses_extra


def real_subsets(train: np.ndarray, val: np.ndarray | None, n: int, seed: int,
                 where: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(reference, floor, floor_uses_val): two disjoint real sets of exactly n images."""
    if len(train) < n:
        raise UserError(f"{where}/train.npz: {len(train)} images, fewer than N={n}; lower "
                        "evaluate.num_samples (or evaluate.inception.*num_samples)")
    reference, floor, uses_val = disjoint_samples(train, val, n, seed)
    if floor is None:
        total = len(train) + (len(val) if val is not None else 0)
        raise UserError(f"{where}: train+val have {total} images, the real-vs-real "
                        f"floor needs 2N={2 * n}; lower evaluate.num_samples")
    return reference, floor, uses_val


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


# Images under this side are refused for Inception: upscaled > 18x to 299 px, they are blur.
MIN_INCEPTION_SIDE = 16


def _check_size(images: np.ndarray, where: str, ex: Extractor | None,
                featurenet_path: str | os.PathLike[str] | None) -> None:
    """Raise unless `images` fit the domain extractor `ex` (its training shape) or, ex None,
    Inception (at least MIN_INCEPTION_SIDE a side)."""
    from pipeline.data.arrays import describe_shape

    own = describe_shape(*images.shape[1:])
    if ex is not None and ex.image_shape is not None \
            and tuple(images.shape[1:]) != tuple(ex.image_shape):
        raise UserError(f"{where}: images are {own}, the domain feature net ({featurenet_path}) "
                        f"was trained on {describe_shape(*ex.image_shape)}; resize them to "
                        "that, or use the inception features")
    if ex is None and min(images.shape[1:3]) < MIN_INCEPTION_SIDE:
        raise UserError(f"{where}: images are {own}, too small for Inception features (under "
                        f"{MIN_INCEPTION_SIDE} px a side they are upscaled over 18x to 299 px)")


def default_fid_n(n_a: int, n_b: int, n_extra: int = 0, floor: bool = True) -> int:
    """N when none is given: all of A, as much as B allows, and, with floor=True, small enough
    that B (plus the extra real images) leaves a disjoint second real sample of N for the floor
    (unless that would be under 2)."""
    n = min(n_a, n_b)
    with_floor = min(n, (n_b + n_extra) // 2)
    return with_floor if floor and with_floor >= 2 else n


def compute_fid(a_images: np.ndarray, b_images: np.ndarray, features: str = "domain",
                n: int | None = None, featurenet_path: str | os.PathLike[str] | None = None,
                device: str = "auto", batch_size: int = 500, seed: int = 0,
                floor: bool = True, floor_images: np.ndarray | None = None,
                names: tuple[str, str, str] = ("A", "B", "floor reference")) -> dict[str, Any]:
    """FID and KID of images A against real images B (for `gan-forensics fid A B`), beside
    the real-vs-real floor at the same N.

    The evaluate stage's protocol at sample size n (None: `default_fid_n`): A's n images are
    the first n of a seeded permutation; B's reference and floor samples come from
    `disjoint_samples` (B, topped up by `floor_images` when B has fewer than 2n); FID and KID
    are the metric registry's (KID: 100 subsets of min(1000, n); its std None when the one
    subset is the whole set). Without enough real images for a floor, the floor values are None
    and a warning says so. `names` label A, B and floor_images in messages.

    Returns {"name": "fid_domain_10k", "fid", "kid_mean", "kid_std", "n", "features",
    "feature_dim", "fid_floor", "kid_floor_mean", "kid_floor_std", "floor" (where the floor
    sample came from, or None), "warnings" (one-line caveats: N below the feature dimension,
    no floor, a negative KID)}.
    """
    from pipeline.data.arrays import describe_shape

    if features not in ("domain", "inception"):
        raise UserError(f"features: must be 'domain' or 'inception', got {features!r}")
    a_name, b_name, extra_name = names
    extra_len = len(floor_images) if floor and floor_images is not None else 0
    n = default_fid_n(len(a_images), len(b_images), extra_len, floor) if n is None else n
    if n < 2:
        raise UserError(f"n: must be at least 2 (FID needs a covariance), got {n}")
    for label, imgs in ((a_name, a_images), (b_name, b_images)):
        if len(imgs) < n:
            raise UserError(f"{label}: {len(imgs)} images, fewer than n={n}")
    for label, imgs in ((a_name, a_images), (extra_name, floor_images)):
        if imgs is not None and imgs.shape[1:] != b_images.shape[1:]:
            raise UserError(f"{label}: images are {describe_shape(*imgs.shape[1:])}, {b_name} "
                            f"{describe_shape(*b_images.shape[1:])}; FID compares sets of one "
                            "image size")
    dev = resolve_device(device)
    if features == "domain":
        if featurenet_path is None:
            raise UserError("domain features need featurenet_path (models/featurenet.pt)")
        ex = domain_extractor(featurenet_path, dev)
        _check_size(b_images, b_name, ex, featurenet_path)
    else:
        _check_size(b_images, b_name, None, None)  # before loading the weights
        ex = inception_extractor(dev)

    picked = a_images[np.random.default_rng(seed).permutation(len(a_images))[:n]]
    reference, floor_set, uses_extra = disjoint_samples(
        b_images, floor_images if floor else None, n, seed)
    fa = extract(picked, ex, batch_size, f"{features} features A", where=a_name)
    fr = extract(reference, ex, batch_size, f"{features} features B", where=b_name)
    opts = MetricOptions(seed=seed)  # the evaluate stage's KID subsets and size
    out: dict[str, Any] = {"name": metric_key("fid", features, n), "n": n,
                           "features": features, "feature_dim": int(fa.shape[1]),
                           **METRICS["fid"](fr, fa, opts), **METRICS["kid"](fr, fa, opts)}
    out.update(fid_floor=None, kid_floor_mean=None, kid_floor_std=None, floor=None)
    caveats: list[str] = []
    if floor_set is not None:
        ff = extract(floor_set, ex, batch_size, f"{features} features floor",
                     where=extra_name if uses_extra else b_name)
        floor_fid, floor_kid = METRICS["fid"](fr, ff, opts), METRICS["kid"](fr, ff, opts)
        out.update(fid_floor=floor_fid["fid"], kid_floor_mean=floor_kid["kid_mean"],
                   kid_floor_std=floor_kid["kid_std"],
                   floor=f"two disjoint samples of {n} from {b_name}"
                   + (f" + {extra_name}" if uses_extra else ""))
    elif floor:
        have = len(b_images) + extra_len
        lower = f"lower --n to {have // 2} or " if have // 2 >= 2 else ""
        caveats.append(f"no real-vs-real floor: {b_name}{f' + {extra_name}' if extra_len else ''}"
                       f" has {have} images and a floor needs 2N={2 * n} (two disjoint real "
                       f"samples of {n}); {lower}add real images with --floor-ref")
    if n < out["feature_dim"]:
        caveats.append(f"N={n} is below the {out['feature_dim']} feature dimensions: the "
                       "covariance FID uses is rank-deficient and small-sample bias dominates "
                       f"(use N >= {out['feature_dim']}); compare only FIDs at the same N, "
                       "beside their floor")
    negative = [f"{key} {out[key]:.3g}" for key in ("kid_mean", "kid_floor_mean")
                if out[key] is not None and out[key] < 0]
    if negative:
        caveats.append(f"negative KID ({', '.join(negative)}): KID is an unbiased estimate of "
                       "a squared distance, so sampling noise at this N can push it below 0; "
                       "it means no difference was measurable, read it as 0")
    out["warnings"] = caveats
    return out
