"""The detect stage's work: load and balance the image sets, train and score the detector and
its baselines, run the robustness checks, write the outs (called by `stages/detect.py`).

Protocol (what `metrics/detector.json` means):
- train: real `train.npz` vs fake `detector_train.npz`, balanced by a seeded subset of the larger;
- test: real `test.npz` vs fake `detector_test.npz`, the real side a seeded subset of the same size
  as the fakes (too few real test images is an error, not a silent imbalance);
- no image is used twice by construction: real train/test come from prepare's disjoint splits,
  fake train/test from different noise seeds (checked via each file's `noise_seed`), and subsets
  are drawn without replacement;
- the same test images score all three detectors: our CNN (`detector_*`), the GAN's
  discriminator (`discriminator_*`) and the spectrum baseline (`spectrum_*`);
- robustness (`*_auc_jpeg75`, `*_auc_blur1.0`): the real AND the fake test images go through
  the same transform (`robustness.py`), and all three detectors score them; only
  `detector_auc_<t>_fakes_only` perturbs the fakes alone (clean reals), for comparison;
- `device`: where the detector trained and scored (`cpu` / `cuda`); on CUDA without TF32, so
  the numbers stay close to a CPU run's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from pipeline.config import DetectConfig
from pipeline.data.arrays import load_split
from pipeline.detect.baselines import SpectrumDetector, discriminator_scores
from pipeline.detect.model import Detector, predict, save_detector
from pipeline.detect.robustness import perturbations
from pipeline.detect.scores import check_scores, downsample_roc, summarize
from pipeline.detect.train import train_detector
from pipeline.device import exact_fp32
from pipeline.errors import UserError
from pipeline.io import atomic_dir, write_json, write_text


@dataclass
class DetectData:
    """Balanced, disjoint image sets (uint8 (N, H, W, C)) and the test labels a conditional
    discriminator needs (-1 = none)."""

    real_train: np.ndarray
    fake_train: np.ndarray
    real_test: np.ndarray
    fake_test: np.ndarray
    real_test_labels: np.ndarray
    fake_test_labels: np.ndarray


@dataclass
class DetectResult:
    model: Detector
    metrics: dict[str, Any]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # detector name -> (fpr, tpr)
    image_shape: tuple[int, int, int]  # (C, H, W)


def _load_fakes(path: Path) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(images, labels (-1 = none), noise_seed or None) of a generated .npz."""
    from pipeline.data.arrays import load_images

    images = load_images(path)
    if len(images) == 0:
        raise UserError(f"{path}: no images; set generate.num_* > 0 and rerun generate")
    with np.load(path, allow_pickle=False) as npz:
        labels = npz["labels"].astype(np.int64) if "labels" in npz.files else \
            np.full(len(images), -1, dtype=np.int64)
        seed = int(npz["noise_seed"]) if "noise_seed" in npz.files else None
    if labels.shape != (len(images),):
        raise UserError(f"{path}: labels must have shape ({len(images)},), got {labels.shape}")
    return images, labels, seed


def _subset(n_total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.sort(rng.choice(n_total, size=n, replace=False))
    assert len(np.unique(idx)) == n  # without replacement: no image twice
    return idx


def load_detect_data(real_dir: str | os.PathLike[str], fake_dir: str | os.PathLike[str],
                     seed: int) -> DetectData:
    """Read, validate and balance the four sets (see the module docstring)."""
    real_dir, fake_dir = Path(real_dir), Path(fake_dir)
    real_train = load_split(real_dir / "train.npz")
    real_test = load_split(real_dir / "test.npz")
    fake_train, _, seed_train = _load_fakes(fake_dir / "detector_train.npz")
    fake_test, fake_test_labels, seed_test = _load_fakes(fake_dir / "detector_test.npz")
    shape = real_train.images.shape[1:]
    for path, images in ((real_dir / "test.npz", real_test.images),
                         (fake_dir / "detector_train.npz", fake_train),
                         (fake_dir / "detector_test.npz", fake_test)):
        if images.shape[1:] != shape:
            raise UserError(f"{path}: images are (H, W, C) {images.shape[1:]} but "
                            f"{real_dir / 'train.npz'} has {shape}; rerun generate/prepare "
                            "with the same data.image_size and data.channels")
    if seed_train is not None and seed_train == seed_test:
        raise UserError(f"{fake_dir / 'detector_test.npz'}: same noise seed as "
                        "detector_train.npz, the fakes overlap; rerun the generate stage")
    n_test = len(fake_test)
    if len(real_test.images) < n_test:
        raise UserError(f"{real_dir / 'test.npz'}: {len(real_test.images)} real test images, "
                        f"fewer than the {n_test} fakes in {fake_dir / 'detector_test.npz'}; "
                        f"set generate.num_detector_test <= {len(real_test.images)}")
    rng = np.random.default_rng([seed, 7])  # own stream: other stages' draws do not shift it
    n_train = min(len(real_train.images), len(fake_train))
    real_train_idx = _subset(len(real_train.images), n_train, rng)
    fake_train_idx = _subset(len(fake_train), n_train, rng)
    real_test_idx = _subset(len(real_test.images), n_test, rng)
    return DetectData(real_train.images[real_train_idx], fake_train[fake_train_idx],
                      real_test.images[real_test_idx], fake_test,
                      real_test.labels[real_test_idx], fake_test_labels)


def _discriminator(path: str | os.PathLike[str], data: DetectData, device: torch.device
                   ) -> tuple[torch.nn.Module, bool]:
    from pipeline.models import load_discriminator

    D, meta = load_discriminator(path, device)
    c, h, w = meta["image_shape"]
    if (h, w, c) != data.real_test.shape[1:]:
        raise UserError(f"{path}: discriminator expects (H, W, C) {(h, w, c)}, the test images "
                        f"are {data.real_test.shape[1:]}")
    conditional = bool(meta["model_config"].get("conditional")) and meta["num_classes"] > 0
    if conditional and (data.fake_test_labels < 0).any():
        raise UserError(f"{path}: conditional discriminator, but the fakes have no labels "
                        "(-1); rerun generate with this model's generator")
    return D, conditional


def _auc(real: np.ndarray, fake: np.ndarray, where: str) -> float:
    labels, scores = check_scores(np.r_[np.zeros(len(real)), np.ones(len(fake))],
                                  np.r_[real, fake], where)
    return float(roc_auc_score(labels, scores))


def run_detect(data: DetectData, discriminator_path: str | os.PathLike[str], cfg: DetectConfig,
               seed: int, device: torch.device, log: bool = True) -> DetectResult:
    """Train the detector, score it and both baselines on the test sets, perturbed and not."""
    exact_fp32(device)
    D, conditional = _discriminator(discriminator_path, data, device)  # validate before training
    model = train_detector(data.real_train, data.fake_train, cfg, seed, device, log=log)
    spectrum = SpectrumDetector(seed).fit(data.real_train, data.fake_train)

    def score_all(real: np.ndarray, fake: np.ndarray) -> dict[str, tuple[np.ndarray, ...]]:
        """{detector: (P(fake) of real, P(fake) of fake)}, same images for all three."""
        rl, fl = (data.real_test_labels, data.fake_test_labels) if conditional else (None, None)
        return {
            "detector": (predict(model, real, cfg.batch_size, device),
                         predict(model, fake, cfg.batch_size, device)),
            "discriminator": (discriminator_scores(D, real, rl, cfg.batch_size, device),
                              discriminator_scores(D, fake, fl, cfg.batch_size, device)),
            "spectrum": (spectrum.predict(real), spectrum.predict(fake)),
        }

    labels = np.r_[np.zeros(len(data.real_test)), np.ones(len(data.fake_test))]
    metrics: dict[str, Any] = {}
    curves = {}
    clean = score_all(data.real_test, data.fake_test)
    for name, (real_s, fake_s) in clean.items():
        scores = np.r_[real_s, fake_s]
        metrics.update({f"{name}_{k}": v for k, v in
                        summarize(labels, scores, f"{name} scores").items()})
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)  # downsampled later
        curves[name] = (fpr, tpr)
    # Real and fake alike: a platform recompresses every upload, not only the forgeries.
    for tag, transform in perturbations(cfg.jpeg_quality, cfg.blur_sigma).items():
        perturbed = score_all(transform(data.real_test), transform(data.fake_test))
        for name, (real_s, fake_s) in perturbed.items():
            metrics[f"{name}_auc_{tag}"] = _auc(real_s, fake_s, f"{name} scores ({tag})")
        metrics[f"detector_auc_{tag}_fakes_only"] = _auc(
            clean["detector"][0], perturbed["detector"][1], f"detector scores ({tag})")
    metrics = {k: round(float(v), 6) for k, v in metrics.items()}
    metrics.update(n_train_real=len(data.real_train), n_train_fake=len(data.fake_train),
                   n_test_real=len(data.real_test), n_test_fake=len(data.fake_test),
                   device=device.type)
    h, w, c = data.real_test.shape[1:]
    return DetectResult(model, metrics, curves, (c, h, w))


def roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], metrics: dict[str, Any],
             path: Path) -> None:
    """The detectors' ROC curves in one PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {metrics[f'{name}_auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="chance")
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fakes caught)")
    ax.set_title(f"real vs fake, {metrics['n_test_real']} + {metrics['n_test_fake']} test images")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result: DetectResult, cfg: DetectConfig, model_path: str | os.PathLike[str],
                  metrics_path: str | os.PathLike[str], roc_path: str | os.PathLike[str],
                  plots_dir: str | os.PathLike[str]) -> None:
    """models/detector.pt, metrics/detector.json, metrics/roc.csv, metrics/detector/roc.png;
    each atomically."""
    save_detector(model_path, result.model, {"width": cfg.width}, result.image_shape,
                  result.metrics)
    write_json(metrics_path, result.metrics)
    fpr, tpr = downsample_roc(*result.curves["detector"])
    write_text(roc_path, "fpr,tpr\n" + "".join(f"{f:.6f},{t:.6f}\n" for f, t in zip(fpr, tpr,
                                                                                    strict=True)))
    with atomic_dir(plots_dir) as tmp:
        roc_plot(result.curves, result.metrics, tmp / "roc.png")
