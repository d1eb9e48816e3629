"""Cross-generator detection: the numbers that say whether a detector catches forgers it never
saw, whether it can name the forger, and how processing hurts it.

    real = Split(train, val, test)                     # uint8 (N, H, W, C) each
    fakes = {"dcgan": Split(...), "vae": Split(...)}    # held-out fakes per family
    result = run_crossgen(real, fakes, CrossgenConfig())  # JSON-able dict

Protocol (what each key of the result means):
- The matrix and leave-one-out detectors follow `config.recipe`: "probe" (frozen
  `config.probe_features` + a logistic regression, `pipeline.forensics.probe`: UnivFD's recipe
  for unseen forgers) or "cnn" (the shipped detector's CNN trained end to end, with
  `config.detector`'s Blur+JPEG).
- `matrix[train][test]`: a detector trained on real vs family `train` alone, its threshold
  calibrated on real val vs `train`'s val fakes (the deployer knows only the family trained on),
  tested on real test vs `test`'s test fakes: `pipeline.detect.scores.score_set`. The diagonal
  is the seen forger, off-diagonal cells are unseen ones.
- `leave_one_out[family]`: trained (and calibrated) on real vs every other family, an equal
  share of each; tested on real vs `family`. `mean_ap` and `mean_calibrated_accuracy` average
  over families: the honest "unseen forger" figure (CNNDetection's best: AP 92.6, acc 80.0).
  `leave_one_out.detector` names the recipe; `leave_one_out.compare[recipe]` holds the same
  protocol for each recipe of `config.compare`, side by side.
- `attribution`: one classifier over ["real", *families] (`config.attributor_recipe`: a probe
  on `config.attributor_features`, or the CNN by `config.attributor`; `attribution.attributor`
  names it), equal images per class in train and test; `confusion[i][j]` counts test images
  of class i predicted as j. `attribution.seed_pair` (when two families that differ only in
  their seed are given): the same over ["real", a, b], plus `fake_accuracy`, the share of the
  pair's test fakes given to the right seed (a fake called real counts as wrong), and
  `seed_accuracy_given_fake`, the same among the fakes it gave to either seed (chance 0.5):
  does it tell the seeds apart once it calls an image fake.
- `robustness`: a detector (given, else trained on real vs all families with
  `config.robustness_aug_prob`) scored on real test vs all families' test fakes, both perturbed
  alike, per JPEG quality, blur sigma and down-up scale.
- Every test set is balanced: the larger side is a seeded subset, drawn without replacement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
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
from pipeline.forensics.probe import Featurizer, train_probe

RECIPES = ("probe", "cnn")
Scorer = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, C) -> P(fake) (N,)


@dataclass(frozen=True)
class Split:
    """One source's disjoint uint8 (N, H, W, C) image sets."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class CrossgenConfig:
    recipe: str = "probe"  # the matrix and leave-one-out detectors: one of RECIPES
    compare: tuple[str, ...] = ()  # other recipes whose leave-one-out is reported beside
    probe_features: tuple[str, ...] = ("cooccurrence",)  # the probe recipe's
    probe_c: float = 0.01  # the probe's inverse L2 strength
    attributor_recipe: str = "probe"  # the {real, families} classifier: one of RECIPES
    attributor_features: tuple[str, ...] = ("histogram", "featurenet", "spectrum",
                                            "cooccurrence")
    detector: TrainSpec = field(default_factory=TrainSpec)  # the cnn recipe's training
    attributor: TrainSpec = field(default_factory=TrainSpec)  # the cnn attributor's training
    robustness_aug_prob: float = 0.5  # augmentation of the robustness detector when none given
    jpeg_qualities: tuple[int, ...] = JPEG_QUALITIES
    blur_sigmas: tuple[float, ...] = BLUR_SIGMAS
    down_up_scales: tuple[float, ...] = DOWN_UP_SCALES
    seed: int = 0  # subsets that balance the sets


def take(images: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded subset of min(n, len) images, drawn without replacement (all of them, in
    order, when n >= len)."""
    if n >= len(images):
        return images
    return images[np.sort(rng.choice(len(images), size=n, replace=False))]


def _shares(sets: list[np.ndarray], n_real: int, rng: np.random.Generator
            ) -> tuple[int, np.ndarray]:
    """(n, fakes): an equal share of each set, n fakes in all with n <= n_real."""
    per = min(n_real // len(sets), *(len(s) for s in sets))
    if per == 0:
        raise UserError("crossgen: too few images to balance real against the families")
    fakes = np.concatenate([take(s, per, rng) for s in sets])
    return len(fakes), fakes


def _pair(real: np.ndarray, fakes: list[np.ndarray], rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """Balanced (real, fake) from real and equal shares of the fake sets."""
    n, fake = _shares(fakes, len(real), rng)
    return take(real, n, rng), fake


def _cnn_scorer(model: torch.nn.Module, batch: int, device: torch.device | str) -> Scorer:
    return lambda images: predict(model, images, batch, device)


def _scores(score: Scorer, real: np.ndarray, fake: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    return np.r_[np.zeros(len(real)), np.ones(len(fake))], np.r_[score(real), score(fake)]


def _detector_on(real: Split, fakes: list[Split], recipe: str, config: CrossgenConfig,
                 featurize: Featurizer | None, device: torch.device | str
                 ) -> tuple[Scorer, float]:
    """A `recipe` detector trained on real vs equal shares of `fakes` (the cnn one by
    `config.detector`), and its threshold calibrated on their val sets."""
    spec = config.detector
    rng = np.random.default_rng([config.seed, 1])
    real_train, fake_train = _pair(real.train, [f.train for f in fakes], rng)
    if recipe == "probe":
        score: Scorer = train_probe([real_train, fake_train], featurize, config.probe_c)
    else:
        score = _cnn_scorer(train_detector(real_train, fake_train, spec, device),
                            spec.batch_size, device)
    vr, vf = _pair(real.val, [f.val for f in fakes], rng)
    return score, calibrate_threshold(*_scores(score, vr, vf))


def _test_sets(real: Split, fakes: dict[str, Split], seed: int
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per family, the balanced (real test, family test fakes) every detector is scored on."""
    rng = np.random.default_rng([seed, 2])
    return {name: _pair(real.test, [s.test], rng) for name, s in fakes.items()}


def robustness_sets(real: Split, fakes: dict[str, Split], seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The robustness sweep's balanced (real test, equal shares of every family's test fakes)."""
    return _pair(real.test, [s.test for s in fakes.values()], np.random.default_rng([seed, 4]))


def robustness_table(model: torch.nn.Module, real: np.ndarray, fake: np.ndarray,
                     config: CrossgenConfig | None = None,
                     device: torch.device | str = "cpu") -> dict[str, list[dict[str, float]]]:
    """{"jpeg": [{"level": q, "ap", "auc"}], "blur": [...sigma], "down_up": [...scale]} of a
    binary detector on real vs fake, both perturbed alike (levels: `config`, default all)."""
    config = config or CrossgenConfig()
    out: dict[str, list[dict[str, float]]] = {}
    for kind, level, transform in robustness_levels(config.jpeg_qualities, config.blur_sigmas,
                                                    config.down_up_scales):
        labels, scores = _scores(_cnn_scorer(model, config.detector.batch_size, device),
                                 transform(real), transform(fake))
        s = summarize(labels, scores, f"robustness {kind} {level}", threshold=None)
        out.setdefault(kind, []).append({"level": level, "ap": s["ap"], "auc": s["auc"]})
    return out


ClassProbs = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, C) -> (N, K) probabilities


def _attributor_fit(config: CrossgenConfig, featurize: Featurizer | None,
                    device: torch.device | str) -> Callable[[list[np.ndarray]], ClassProbs]:
    """sets [real, *families] -> the class probabilities of an attributor fitted on them."""
    if config.attributor_recipe == "probe":
        return lambda sets: train_probe(sets, featurize, config.probe_c).class_probs
    spec = config.attributor
    return lambda sets: partial(class_probs, train_attributor(sets, spec, device),
                                batch_size=spec.batch_size, device=device)


def _attribution(real: Split, fakes: dict[str, Split], fit: Callable[[list[np.ndarray]],
                 ClassProbs], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 3])
    sources = [real, *fakes.values()]
    n_train = min(len(s.train) for s in sources)
    n_test = min(len(s.test) for s in sources)
    probs = fit([take(s.train, n_train, rng) for s in sources])
    test = [take(s.test, n_test, rng) for s in sources]
    labels = np.concatenate([np.full(len(t), k) for k, t in enumerate(test)])
    pred = probs(np.concatenate(test)).argmax(axis=1)
    confusion = confusion_matrix(labels, pred, labels=np.arange(len(sources)))
    return {"classes": ["real", *fakes], "accuracy": float((pred == labels).mean()),
            "confusion": confusion.astype(int).tolist(), "n_test_per_class": n_test,
            "n_train_per_class": n_train}


def _seed_attribution(real: Split, pair: dict[str, Split],
                      fit: Callable[[list[np.ndarray]], ClassProbs], seed: int
                      ) -> dict[str, Any]:
    """Attribution over ["real", a, b] for two same-recipe families a, b of other seeds."""
    out = _attribution(real, pair, fit, seed)
    fakes = np.array(out["confusion"])[1:]  # rows: the pair's test fakes
    right = float(np.trace(fakes[:, 1:]))
    out["fake_accuracy"] = right / fakes.sum()
    out["seed_accuracy_given_fake"] = right / fakes[:, 1:].sum() if fakes[:, 1:].sum() else None
    return out


def _leave_one_out(real: Split, fakes: dict[str, Split], recipe: str, config: CrossgenConfig,
                   featurize: Featurizer | None, tests: dict[str, tuple[np.ndarray, np.ndarray]],
                   device: torch.device | str) -> dict[str, Any]:
    """Per family, a `recipe` detector trained on the others and tested on it; the means."""
    per_family = {}
    for name in fakes:
        others = [s for other, s in fakes.items() if other != name]
        score, thr = _detector_on(real, others, recipe, config, featurize, device)
        per_family[name] = score_set(*_scores(score, *tests[name]), thr,
                                     f"crossgen {recipe} test on {name}")
    return {"per_family": per_family,
            "mean_ap": float(np.mean([c["ap"] for c in per_family.values()])),
            "mean_calibrated_accuracy":
                float(np.mean([c["calibrated_accuracy"] for c in per_family.values()]))}


def run_crossgen(real: Split, fakes: dict[str, Split], config: CrossgenConfig | None = None,
                 detector: torch.nn.Module | None = None, device: torch.device | str = "cpu",
                 seed_pair: dict[str, Split] | None = None,
                 featurenet: Callable[[np.ndarray], np.ndarray] | None = None
                 ) -> dict[str, Any]:
    """matrix, leave_one_out, attribution, robustness (see the module docstring), plus the
    sizes and params used. `detector`: the one to sweep for robustness (e.g. the shipped one);
    `seed_pair`: two families that differ only in their seed (attribution's hard case);
    `featurenet`: images -> domain features, for a probe that reads them
    (`pipeline.forensics.probe.extractor_features`)."""
    config = config or CrossgenConfig()
    if len(fakes) < 2:
        raise UserError(f"crossgen needs at least two families, got {sorted(fakes)}")
    recipes = (config.recipe, *config.compare)
    if any(r not in RECIPES for r in recipes) or len(set(recipes)) != len(recipes):
        raise UserError(f"crossgen: the detector recipe and those compared must be distinct "
                        f"names from {list(RECIPES)}, got {list(recipes)}")
    if config.attributor_recipe not in RECIPES:
        raise UserError(f"crossgen: attributor must be one of {list(RECIPES)}, got "
                        f"{config.attributor_recipe!r}")
    featurize = Featurizer(config.probe_features, featurenet) if "probe" in recipes else None
    attribute = (Featurizer(config.attributor_features, featurenet)
                 if config.attributor_recipe == "probe" else None)
    tests = _test_sets(real, fakes, config.seed)

    # (1) One detector per family, tested on every family.
    matrix = {}
    for name in fakes:
        score, thr = _detector_on(real, [fakes[name]], config.recipe, config, featurize,
                                  device)
        matrix[name] = {test: score_set(*_scores(score, *tests[test]), thr,
                                        f"crossgen test on {test}") for test in fakes}

    # (2) Leave one family out: train on the others, test on it; the same for each compared.
    leave_one_out = {"detector": config.recipe,
                     **_leave_one_out(real, fakes, config.recipe, config, featurize, tests,
                                      device),
                     "compare": {r: _leave_one_out(real, fakes, r, config, featurize, tests,
                                                   device) for r in config.compare}}

    # (3) Which source made it: real or one of the families.
    fit = _attributor_fit(config, attribute, device)
    attribution = {"attributor": config.attributor_recipe,
                   **_attribution(real, fakes, fit, config.seed)}
    if seed_pair:
        if len(seed_pair) != 2:
            raise UserError(f"crossgen: seed_pair needs two families, got {sorted(seed_pair)}")
        attribution["seed_pair"] = _seed_attribution(real, seed_pair, fit, config.seed)

    # (4) Robustness of the given detector, else one trained on all families with augmentation.
    if detector is None:
        aug = replace(config.detector, aug_prob=config.robustness_aug_prob)
        detector = train_detector(*_pair(real.train, [s.train for s in fakes.values()],
                                         np.random.default_rng([config.seed, 1])), aug, device)
    rob_real, rob_fake = robustness_sets(real, fakes, config.seed)
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
