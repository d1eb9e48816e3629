"""Cross-generator detection: the numbers that say whether a detector catches forgers it never
saw, whether it can name the forger, and how processing hurts it.

    real = Split(train, val, test)                     # uint8 (N, H, W, C) each
    fakes = {"dcgan": Split(...), "vae": Split(...)}    # held-out fakes per family
    result = run_crossgen(real, fakes, CrossgenConfig())  # JSON-able dict

Protocol (what each key of the result means):
- `matrix[train][test]`: a detector trained on real vs family `train` alone, its threshold
  calibrated on real val vs `train`'s val fakes (the deployer knows only the family trained on),
  tested on real test vs `test`'s test fakes: `pipeline.detect.scores.score_set`. The diagonal
  is the seen forger, off-diagonal cells are unseen ones.
- `leave_one_out[family]`: trained (and calibrated) on real vs every other family, an equal
  share of each; tested on real vs `family`. `mean_ap` and `mean_calibrated_accuracy` average
  over families: the honest "unseen forger" figure (CNNDetection's best: AP 92.6, acc 80.0).
- `attribution`: one classifier over ["real", *families], equal images per class in train and
  test; `confusion[i][j]` counts test images of class i predicted as j. `attribution.seed_pair`
  (when two families that differ only in their seed are given): the same over ["real", a, b],
  plus `fake_accuracy`, the share of the pair's test fakes given to the right seed (a fake
  called real counts as wrong), and `seed_accuracy_given_fake`, the same among the fakes it
  gave to either seed (chance 0.5): does it tell the seeds apart once it calls an image fake.
- `robustness`: a detector (given, else trained on real vs all families with
  `config.robustness_aug_prob`) scored on real test vs all families' test fakes, both perturbed
  alike, per JPEG quality, blur sigma and down-up scale.
- Every test set is balanced: the larger side is a seeded subset, drawn without replacement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix

from pipeline.detect.model import class_probs, predict
from pipeline.detect.scores import calibrate_threshold, score_set, summarize
from pipeline.detect.train import TrainSpec, train_attributor, train_detector
from pipeline.errors import UserError
from pipeline.forensics.perturbations import (
    BLUR_SIGMAS,
    DOWN_UP_SCALES,
    JPEG_QUALITIES,
    robustness_levels,
)


@dataclass(frozen=True)
class Split:
    """One source's disjoint uint8 (N, H, W, C) image sets."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class CrossgenConfig:
    detector: TrainSpec = field(default_factory=TrainSpec)  # matrix and leave-one-out detectors
    attributor: TrainSpec = field(default_factory=TrainSpec)  # the {real, families} classifier
    robustness_aug_prob: float = 0.5  # augmentation of the robustness detector when none given
    jpeg_qualities: tuple[int, ...] = JPEG_QUALITIES
    blur_sigmas: tuple[float, ...] = BLUR_SIGMAS
    down_up_scales: tuple[float, ...] = DOWN_UP_SCALES
    seed: int = 0  # subsets that balance the sets


def _take(images: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded subset of n images (all of them, in order, when n == len)."""
    if n == len(images):
        return images
    return images[np.sort(rng.choice(len(images), size=n, replace=False))]


def _shares(sets: list[np.ndarray], n_real: int, rng: np.random.Generator
            ) -> tuple[int, np.ndarray]:
    """(n, fakes): an equal share of each set, n fakes in all with n <= n_real."""
    per = min(n_real // len(sets), *(len(s) for s in sets))
    if per == 0:
        raise UserError("crossgen: too few images to balance real against the families")
    fakes = np.concatenate([_take(s, per, rng) for s in sets])
    return len(fakes), fakes


def _pair(real: np.ndarray, fakes: list[np.ndarray], rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """Balanced (real, fake) from real and equal shares of the fake sets."""
    n, fake = _shares(fakes, len(real), rng)
    return _take(real, n, rng), fake


def _scores(model: torch.nn.Module, real: np.ndarray, fake: np.ndarray, batch: int,
            device: torch.device | str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.r_[np.zeros(len(real)), np.ones(len(fake))]
    scores = np.r_[predict(model, real, batch, device), predict(model, fake, batch, device)]
    return labels, scores


def _detector_on(real: Split, fakes: list[Split], spec: TrainSpec, seed: int,
                 device: torch.device | str) -> tuple[torch.nn.Module, float]:
    """A detector trained on real vs equal shares of `fakes`, and its calibrated threshold."""
    rng = np.random.default_rng([seed, 1])
    model = train_detector(*_pair(real.train, [f.train for f in fakes], rng), spec, device)
    vr, vf = _pair(real.val, [f.val for f in fakes], rng)
    return model, calibrate_threshold(*_scores(model, vr, vf, spec.batch_size, device))


def _test_sets(real: Split, fakes: dict[str, Split], seed: int
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per family, the balanced (real test, family test fakes) every detector is scored on."""
    rng = np.random.default_rng([seed, 2])
    return {name: _pair(real.test, [s.test], rng) for name, s in fakes.items()}


def robustness_table(model: torch.nn.Module, real: np.ndarray, fake: np.ndarray,
                     config: CrossgenConfig | None = None,
                     device: torch.device | str = "cpu") -> dict[str, list[dict[str, float]]]:
    """{"jpeg": [{"level": q, "ap", "auc"}], "blur": [...sigma], "down_up": [...scale]} of a
    binary detector on real vs fake, both perturbed alike (levels: `config`, default all)."""
    config = config or CrossgenConfig()
    out: dict[str, list[dict[str, float]]] = {}
    for kind, level, transform in robustness_levels(config.jpeg_qualities, config.blur_sigmas,
                                                    config.down_up_scales):
        labels, scores = _scores(model, transform(real), transform(fake),
                                 config.detector.batch_size, device)
        s = summarize(labels, scores, f"robustness {kind} {level}", threshold=None)
        out.setdefault(kind, []).append({"level": level, "ap": s["ap"], "auc": s["auc"]})
    return out


def _attribution(real: Split, fakes: dict[str, Split], spec: TrainSpec, seed: int,
                 device: torch.device | str) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 3])
    sources = [real, *fakes.values()]
    n_train = min(len(s.train) for s in sources)
    n_test = min(len(s.test) for s in sources)
    model = train_attributor([_take(s.train, n_train, rng) for s in sources], spec, device)
    test = [_take(s.test, n_test, rng) for s in sources]
    labels = np.concatenate([np.full(len(t), k) for k, t in enumerate(test)])
    pred = class_probs(model, np.concatenate(test), spec.batch_size, device).argmax(axis=1)
    confusion = confusion_matrix(labels, pred, labels=np.arange(len(sources)))
    return {"classes": ["real", *fakes], "accuracy": float((pred == labels).mean()),
            "confusion": confusion.astype(int).tolist(), "n_test_per_class": n_test,
            "n_train_per_class": n_train}


def _seed_attribution(real: Split, pair: dict[str, Split], spec: TrainSpec, seed: int,
                      device: torch.device | str) -> dict[str, Any]:
    """Attribution over ["real", a, b] for two same-recipe families a, b of other seeds."""
    out = _attribution(real, pair, spec, seed, device)
    fakes = np.array(out["confusion"])[1:]  # rows: the pair's test fakes
    right = float(np.trace(fakes[:, 1:]))
    out["fake_accuracy"] = right / fakes.sum()
    out["seed_accuracy_given_fake"] = right / fakes[:, 1:].sum() if fakes[:, 1:].sum() else None
    return out


def run_crossgen(real: Split, fakes: dict[str, Split], config: CrossgenConfig | None = None,
                 detector: torch.nn.Module | None = None, device: torch.device | str = "cpu",
                 seed_pair: dict[str, Split] | None = None) -> dict[str, Any]:
    """matrix, leave_one_out, attribution, robustness (see the module docstring), plus the
    sizes and params used. `detector`: the one to sweep for robustness (e.g. the shipped one);
    `seed_pair`: two families that differ only in their seed (attribution's hard case)."""
    config = config or CrossgenConfig()
    if len(fakes) < 2:
        raise UserError(f"crossgen needs at least two families, got {sorted(fakes)}")
    spec = config.detector
    tests = _test_sets(real, fakes, config.seed)

    def cell(model: torch.nn.Module, threshold: float, family: str) -> dict[str, float]:
        labels, scores = _scores(model, *tests[family], spec.batch_size, device)
        return score_set(labels, scores, threshold, f"crossgen test on {family}")

    # (1) One detector per family, tested on every family.
    matrix = {}
    for name in fakes:
        model, thr = _detector_on(real, [fakes[name]], spec, config.seed, device)
        matrix[name] = {test: cell(model, thr, test) for test in fakes}

    # (2) Leave one family out: train on the others, test on it.
    loo: dict[str, Any] = {}
    for name in fakes:
        others = [s for other, s in fakes.items() if other != name]
        model, thr = _detector_on(real, others, spec, config.seed, device)
        loo[name] = cell(model, thr, name)
    leave_one_out = {"per_family": loo,
                     "mean_ap": float(np.mean([c["ap"] for c in loo.values()])),
                     "mean_calibrated_accuracy":
                         float(np.mean([c["calibrated_accuracy"] for c in loo.values()]))}

    # (3) Which source made it: real or one of the families.
    attribution = _attribution(real, fakes, config.attributor, config.seed, device)
    if seed_pair:
        if len(seed_pair) != 2:
            raise UserError(f"crossgen: seed_pair needs two families, got {sorted(seed_pair)}")
        attribution["seed_pair"] = _seed_attribution(real, seed_pair, config.attributor,
                                                     config.seed, device)

    # (4) Robustness of the given detector, else one trained on all families with augmentation.
    if detector is None:
        aug = replace(spec, aug_prob=config.robustness_aug_prob)
        detector, _ = _detector_on(real, list(fakes.values()), aug, config.seed, device)
    rob_real, rob_fake = _pair(real.test, [s.test for s in fakes.values()],
                               np.random.default_rng([config.seed, 4]))
    robustness = robustness_table(detector, rob_real, rob_fake, config, device)

    sizes = {"real": {k: len(getattr(real, k)) for k in ("train", "val", "test")},
             **{n: {k: len(getattr(s, k)) for k in ("train", "val", "test")}
                for n, s in fakes.items()},
             "matrix_test": {n: [len(r), len(f)] for n, (r, f) in tests.items()},
             "robustness_test": [len(rob_real), len(rob_fake)]}
    params = {"families": list(fakes), **asdict(config)}
    return {"matrix": matrix, "leave_one_out": leave_one_out, "attribution": attribution,
            "robustness": robustness, "sizes": sizes, "params": _jsonable(params)}


def _jsonable(obj: Any) -> Any:
    """Tuples to lists, recursively (asdict keeps tuples; json would too, but equality with a
    reloaded JSON would not hold)."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj
