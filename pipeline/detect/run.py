"""The detect stage's work: the shipped detector (`models/detector.pt`, what `gan-forensics
detect` loads), trained on real images against every zoo family's fakes and scored beside two
baselines (called by `stages/detect.py`).

Protocol (what `metrics/detector.json` means):
- classes ["real", *families]: one `SourceDetector` trained on real `train.npz` against each
  family's `detector_train.npz`: half the images real, the other half an equal share of each
  family (seeded subsets, `detect.num_train` real images at most), with CNNDetection's
  Blur+JPEG augmentation (`detect.aug_prob`). P(fake) = 1 - P(real);
- `detector_threshold`: the P(fake) threshold that maximises balanced accuracy on real
  `val.npz` against the families' `detector_val.npz` (equal shares); it is stored in the
  checkpoint and is the CLI's verdict threshold;
- test: real `test.npz` against the families' `detector_test.npz`, as many real images as fakes,
  an equal share per family. `detector_*`: auc, ap, eer, tpr_at_1fpr, accuracy (at 0.5),
  calibrated_accuracy (at the threshold); `detector_source_accuracy`: the share of test fakes
  whose likeliest family is the one that made them; `per_family.<name>.{auc, ap}`: real test
  images (as many) against that family's test fakes;
- no image is used twice by construction: real train/val/test come from prepare's disjoint
  splits, each family's fake splits from different noise seeds (checked via each file's
  `noise_seed`), and subsets are drawn without replacement;
- baselines on the same test images: the default model's discriminator (`discriminator_*`; a
  conditional D scores every image by its most "real" class, on the clean images only) and the
  spectrum detector
  (`spectrum_*`, fitted on the same training images);
- robustness (`*_auc_jpeg75`, `*_auc_blur1.0`): the real AND the fake test images go through
  the same transform (`robustness.py`); only `detector_auc_<t>_fakes_only` perturbs the fakes
  alone (clean reals), for comparison. The crossgen stage sweeps JPEG quality, blur and resize;
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
from pipeline.detect.model import SourceDetector, class_probs, predict, save_detector
from pipeline.detect.robustness import perturbations
from pipeline.detect.scores import (
    calibrate_threshold,
    check_scores,
    downsample_roc,
    score_set,
    summarize,
)
from pipeline.detect.train import TrainSpec, train_attributor
from pipeline.device import exact_fp32
from pipeline.errors import UserError
from pipeline.io import atomic_dir, write_json, write_text

FAKE_SPLITS = ("train", "val", "test")  # data/generated/<family>/detector_<split>.npz


@dataclass
class DetectData:
    """Balanced, disjoint uint8 (N, H, W, C) image sets; fakes per family, in `families` order,
    equal counts within a split."""

    families: list[str]
    real_train: np.ndarray
    real_val: np.ndarray
    real_test: np.ndarray
    fake_train: list[np.ndarray]
    fake_val: list[np.ndarray]
    fake_test: list[np.ndarray]


@dataclass
class DetectResult:
    model: SourceDetector
    classes: list[str]  # ["real", *families]
    threshold: float  # calibrated on validation
    metrics: dict[str, Any]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # detector name -> (fpr, tpr)
    image_shape: tuple[int, int, int]  # (C, H, W)


def _load_fakes(path: Path) -> tuple[np.ndarray, int | None]:
    """(images, noise_seed or None) of a generated .npz."""
    from pipeline.data.arrays import load_images

    images = load_images(path)
    if len(images) == 0:
        raise UserError(f"{path}: no images; set generate.num_* > 0 and rerun generate")
    with np.load(path, allow_pickle=False) as npz:
        seed = int(npz["noise_seed"]) if "noise_seed" in npz.files else None
    return images, seed


def _subset(n_total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.sort(rng.choice(n_total, size=n, replace=False))
    assert len(np.unique(idx)) == n  # without replacement: no image twice
    return idx


def load_family_fakes(fake_dir: Path, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """{split: images} of one family's detector sets, shapes and noise seeds checked."""
    out, seeds = {}, {}
    for split in FAKE_SPLITS:
        path = fake_dir / f"detector_{split}.npz"
        images, seeds[split] = _load_fakes(path)
        if images.shape[1:] != shape:
            raise UserError(f"{path}: images are (H, W, C) {images.shape[1:]} but the real "
                            f"ones are {shape}; rerun generate/prepare with the same "
                            "data.image_size and data.channels")
        out[split] = images
    known = [s for s in seeds.values() if s is not None]
    if len(set(known)) != len(known):
        raise UserError(f"{fake_dir}: two detector_*.npz sets share a noise seed, the fakes "
                        "overlap; rerun the generate stage")
    return out


def load_detect_data(real_dir: str | os.PathLike[str], fake_root: str | os.PathLike[str],
                     families: list[str], seed: int, num_train: int | None = None
                     ) -> DetectData:
    """Read, validate and balance the sets (see the module docstring): per split, each family
    gets an equal share and the real side as many images as all the fakes."""
    real_dir, fake_root = Path(real_dir), Path(fake_root)
    if not families:
        raise UserError("detect: no families to detect (params.yaml zoo is empty)")
    real = {s: load_split(real_dir / f"{s}.npz") for s in FAKE_SPLITS}
    shape = real["train"].images.shape[1:]
    fakes = {f: load_family_fakes(fake_root / f, shape) for f in families}
    rng = np.random.default_rng([seed, 7])  # own stream: other stages' draws do not shift it
    k = len(families)
    picked: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}
    for split in FAKE_SPLITS:
        n_real = len(real[split].images)
        per = min(n_real // k, *(len(fakes[f][split]) for f in families))
        if split == "train" and num_train is not None:
            per = min(per, num_train // k)
        if per == 0 and split == "train" and num_train is not None and num_train < k:
            raise UserError(f"detect.num_train: {num_train} real images cannot balance {k} "
                            f"families; set it to at least {k}")
        if per == 0:
            hint = "; raise data.val_fraction" if split == "val" else ""
            raise UserError(f"{real_dir / f'{split}.npz'}: {n_real} real {split} images are too "
                            f"few to balance against {k} families (need >= {k}){hint}")
        real_idx = _subset(n_real, per * k, rng)
        fake_idx = [_subset(len(fakes[f][split]), per, rng) for f in families]
        picked[split] = (real_idx, [fakes[f][split][i] for f, i in zip(families, fake_idx,
                                                                          strict=True)])
    return DetectData(
        families=list(families),
        real_train=real["train"].images[picked["train"][0]],
        real_val=real["val"].images[picked["val"][0]],
        real_test=real["test"].images[picked["test"][0]],
        fake_train=picked["train"][1], fake_val=picked["val"][1], fake_test=picked["test"][1])


def _discriminator(path: str | os.PathLike[str], data: DetectData, device: torch.device
                   ) -> tuple[torch.nn.Module | None, int]:
    """The default model's D (None when there is none: a VAE) and, when it is conditional,
    its class count (0 otherwise)."""
    from pipeline.models import GAN_ARCHS, load_checkpoint, load_discriminator

    arch = load_checkpoint(path)["model_config"].get("arch", "dcgan")
    if arch not in GAN_ARCHS:
        print(f"note: {path} is a {arch}'s, not a discriminator: no discriminator baseline",
              flush=True)
        return None, 0
    D, meta = load_discriminator(path, device)
    c, h, w = meta["image_shape"]
    if (h, w, c) != data.real_test.shape[1:]:
        raise UserError(f"{path}: discriminator expects (H, W, C) {(h, w, c)}, the test images "
                        f"are {data.real_test.shape[1:]}")
    conditional = bool(meta["model_config"].get("conditional")) and meta["num_classes"] > 0
    return D, int(meta["num_classes"]) if conditional else 0


def _auc(real: np.ndarray, fake: np.ndarray, where: str) -> float:
    labels, scores = check_scores(np.r_[np.zeros(len(real)), np.ones(len(fake))],
                                  np.r_[real, fake], where)
    return float(roc_auc_score(labels, scores))


def _labels(n_real: int, n_fake: int) -> np.ndarray:
    return np.r_[np.zeros(n_real), np.ones(n_fake)]


def train_spec(cfg: DetectConfig, seed: int) -> TrainSpec:
    return TrainSpec(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                     lr_schedule=cfg.lr_schedule, width=cfg.width, aug_prob=cfg.aug_prob,
                     blur_max=cfg.blur_max, seed=seed)


def _per_family(model: SourceDetector, data: DetectData, real_scores: np.ndarray,
                fake_scores: np.ndarray, cfg: DetectConfig, device: torch.device
                ) -> tuple[dict[str, dict[str, float]], float]:
    """({family: {auc, ap}} on real test vs that family's test fakes, source accuracy), from
    the clean P(fake) of the real and of all test fakes (in `data.families` order)."""
    per: dict[str, dict[str, float]] = {}
    hits, start = 0, 0
    for k, (name, fakes) in enumerate(zip(data.families, data.fake_test, strict=True), start=1):
        family_scores, start = fake_scores[start:start + len(fakes)], start + len(fakes)
        s = summarize(_labels(len(fakes), len(fakes)),
                      np.r_[real_scores[:len(fakes)], family_scores], f"detector on {name}",
                      threshold=None)
        per[name] = {"auc": round(s["auc"], 6), "ap": round(s["ap"], 6)}
        probs = class_probs(model, fakes, cfg.batch_size, device)
        hits += int((probs[:, 1:].argmax(axis=1) + 1 == k).sum())
    return per, hits / sum(len(f) for f in data.fake_test)


def run_detect(data: DetectData, discriminator_path: str | os.PathLike[str], cfg: DetectConfig,
               seed: int, device: torch.device, log: bool = True) -> DetectResult:
    """Train the shipped detector, calibrate its threshold, score it and both baselines on the
    test sets, perturbed and not."""
    exact_fp32(device)
    D, num_classes = _discriminator(discriminator_path, data, device)  # validate before training
    fake_train, fake_val, fake_test = (np.concatenate(s) for s in
                                       (data.fake_train, data.fake_val, data.fake_test))
    model = train_attributor([data.real_train, *data.fake_train], train_spec(cfg, seed), device,
                             log=log)
    val_scores = np.r_[predict(model, data.real_val, cfg.batch_size, device),
                       predict(model, fake_val, cfg.batch_size, device)]
    threshold = calibrate_threshold(_labels(len(data.real_val), len(fake_val)), val_scores)
    spectrum = SpectrumDetector(seed).fit(data.real_train, fake_train)

    def score_all(real: np.ndarray, fake: np.ndarray, perturbed: bool = False
                  ) -> dict[str, tuple[np.ndarray, ...]]:
        """{detector: (P(fake) of real, P(fake) of fake)}, the same images for each."""
        scores = {"detector": (predict(model, real, cfg.batch_size, device),
                               predict(model, fake, cfg.batch_size, device))}
        # A conditional D is asked for its most "real" class of every image, real and fake
        # alike: the other families' fakes have no class, and the same rule for all keeps the
        # baseline from reading the true class of only some images. That costs a forward per
        # class, so a conditional D is scored on the clean test images only.
        if D is not None and not (perturbed and num_classes):
            scores["discriminator"] = tuple(
                discriminator_scores(D, images, None, cfg.batch_size, device, num_classes)
                for images in (real, fake))
        scores["spectrum"] = (spectrum.predict(real), spectrum.predict(fake))
        return scores

    labels = _labels(len(data.real_test), len(fake_test))
    metrics: dict[str, Any] = {}
    curves = {}
    clean = score_all(data.real_test, fake_test)
    for name, (real_s, fake_s) in clean.items():
        scores = np.r_[real_s, fake_s]
        summary = (score_set(labels, scores, threshold, f"{name} scores") if name == "detector"
                   else summarize(labels, scores, f"{name} scores"))
        metrics.update({f"{name}_{k}": v for k, v in summary.items()})
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)  # downsampled later
        curves[name] = (fpr, tpr)
    metrics["detector_threshold"] = metrics.pop("detector_calibrated_threshold")
    # Real and fake alike: a platform recompresses every upload, not only the forgeries.
    for tag, transform in perturbations(cfg.jpeg_quality, cfg.blur_sigma).items():
        perturbed = score_all(transform(data.real_test), transform(fake_test), perturbed=True)
        for name, (real_s, fake_s) in perturbed.items():
            metrics[f"{name}_auc_{tag}"] = _auc(real_s, fake_s, f"{name} scores ({tag})")
        metrics[f"detector_auc_{tag}_fakes_only"] = _auc(
            clean["detector"][0], perturbed["detector"][1], f"detector scores ({tag})")
    per_family, source_accuracy = _per_family(model, data, *clean["detector"], cfg, device)
    metrics["detector_source_accuracy"] = source_accuracy
    metrics = {k: round(float(v), 6) for k, v in metrics.items()}
    metrics.update(per_family=per_family, families=list(data.families),
                   n_train_real=len(data.real_train), n_train_fake=len(fake_train),
                   n_val_real=len(data.real_val), n_val_fake=len(fake_val),
                   n_test_real=len(data.real_test), n_test_fake=len(fake_test),
                   device=device.type)
    h, w, c = data.real_test.shape[1:]
    return DetectResult(model, ["real", *data.families], threshold, metrics, curves, (c, h, w))


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
    ax.set_title(f"real vs {len(metrics['families'])} families, {metrics['n_test_real']} + "
                 f"{metrics['n_test_fake']} test images", fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result: DetectResult, cfg: DetectConfig, model_path: str | os.PathLike[str],
                  metrics_path: str | os.PathLike[str], roc_path: str | os.PathLike[str],
                  plots_dir: str | os.PathLike[str]) -> None:
    """models/detector.pt, metrics/detector.json, metrics/roc.csv, metrics/detector/roc.png;
    each atomically."""
    save_detector(model_path, result.model, cfg.width, result.classes, result.threshold,
                  result.image_shape, result.metrics)
    write_json(metrics_path, result.metrics)
    fpr, tpr = downsample_roc(*result.curves["detector"])
    write_text(roc_path, "fpr,tpr\n" + "".join(f"{f:.6f},{t:.6f}\n" for f, t in zip(fpr, tpr,
                                                                                    strict=True)))
    with atomic_dir(plots_dir) as tmp:
        roc_plot(result.curves, result.metrics, tmp / "roc.png")
