"""The frozen-feature probe: crossgen's detector recipe for forgers it never saw.

    featurize = Featurizer(("cooccurrence",))             # + featurenet=... when named
    probe = train_probe([real_uint8, fake_uint8], featurize, c=0.01)
    p_fake = probe(images)                                # (N,) in [0, 1]
    names = train_probe([real, dcgan_fakes, vae_fakes], featurize).class_probs(images)  # (N, 3)

UnivFD (Ojha et al. CVPR 2023): fixed features, never trained to tell real from fake, read by a
linear classifier, generalise to unseen generators far better than a CNN trained end to end,
which learns the artefacts of the forgers it was shown. The features here:
- `histogram`: the log share of each of the 256 pixel values, per channel. Generators put too
  few pixels on the exact values real photographs pile up on (a flat black background is
  exactly 0; a tanh output rarely rounds to it): the saturation cue of McCloskey & Albright
  (ICIP 2019);
- `featurenet`: the penultimate layer of the domain FeatureNet (trained to classify real images
  only, `pipeline.metrics.featurenet`);
- `spectrum`: the log power spectrum of the channel mean (up-sampling leaves periodic peaks:
  Durall et al. CVPR 2020, Frank et al. ICML 2020);
- `cooccurrence`: the log share of each pair of successive differences between neighbouring
  pixels, clipped to [-3, 3], along rows, columns and both diagonals, per channel (first-order
  SPAM: Pevny, Bas & Fridrich, IEEE TIFS 2010, the steganalysis feature forensics borrowed).
  It counts the local texture of a camera or a generator's last layers: the tiny steps and flat
  runs real photographs have, and which every generator family renders in its own way.
Each is standardised, then read by an L2-regularised (multinomial) logistic regression (sklearn)
of inverse strength `c`. Features are cheap (FeatureNet is a forward pass); no weights are
trained but the linear layer. Which features serve which task is measured, not assumed
(`benchmarks/forensics_ablation.py`): `cooccurrence` catches unseen families best, and the
spectrum's generator-specific peaks help name a family it has seen (attribution) and hurt on a
family it has not (leave-one-out); README "Results" has the figures.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.config import ProbeFeature
from pipeline.errors import UserError
from pipeline.metrics.features import Extractor, extract

PROBE_FEATURES = typing.get_args(ProbeFeature)  # the names params.yaml may give
COOCCURRENCE_T = 3  # pixel differences are clipped to [-T, T]: (2T + 1)^2 pairs a direction
DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))  # (dy, dx): right, down, both diagonals


def counts_per_row(codes: np.ndarray, bins: int) -> np.ndarray:
    """Integer codes (R, M) in [0, bins) -> int64 (R, bins): how often each code occurs in each
    row (one bincount over all rows, each row's codes shifted into its own range)."""
    rows = len(codes)
    offsets = bins * np.arange(rows, dtype=np.int64)[:, None]
    counts = np.bincount((codes.astype(np.int64) + offsets).ravel(), minlength=bins * rows)
    return counts.reshape(rows, bins)


def pixel_histogram(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, 256 * C): log(share of pixels at each value + 1e-3),
    channel by channel."""
    n, h, w, c = images.shape
    flat = images.reshape(n, h * w, c).transpose(0, 2, 1).reshape(n * c, h * w)  # (N*C, HW)
    share = counts_per_row(flat, 256).reshape(n, c * 256).astype(np.float32) / (h * w)
    return np.log(share + 1e-3)


def log_spectrum(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, H * W): log power spectrum of the channel mean in
    [-1, 1], zero frequency centred."""
    x = images.astype(np.float32).mean(axis=-1) / 127.5 - 1.0  # (N, H, W)
    power = np.abs(np.fft.fftshift(np.fft.fft2(x), axes=(-2, -1))) ** 2
    return np.log(power + 1e-3).astype(np.float32).reshape(len(images), -1)


def _step(x: np.ndarray, dy: int, dx: int, k: int) -> np.ndarray:
    """x (..., H, W) at p + k * (dy, dx), over the pixels p whose p + 2 * (dy, dx) is inside."""
    h, w = x.shape[-2:]
    rows = slice(k * dy, h - (2 - k) * dy)
    cols = slice(k * dx, w - (2 - k) * dx) if dx >= 0 else slice((2 - k) * -dx, w + k * dx)
    return x[..., rows, cols]


def residual_cooccurrence(images: np.ndarray, t: int = COOCCURRENCE_T) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, C * 4 * (2t + 1)^2): per channel and direction v of
    DIRECTIONS, the log(share + 1e-3) of each pair (x[p+v] - x[p], x[p+2v] - x[p+v]), both
    differences clipped to [-t, t] (H, W >= 3)."""
    n, h, w, c = images.shape
    x = images.astype(np.int16).transpose(0, 3, 1, 2)  # (N, C, H, W)
    k = 2 * t + 1
    out = []
    for dy, dx in DIRECTIONS:
        x0, x1, x2 = (_step(x, dy, dx, i) for i in range(3))
        a, b = np.clip(x1 - x0, -t, t) + t, np.clip(x2 - x1, -t, t) + t
        codes = (a * k + b).reshape(n * c, -1)
        out.append(counts_per_row(codes, k * k).reshape(n, c, k * k) / codes.shape[1])
    share = np.stack(out, axis=2).reshape(n, -1)  # channel, then direction, then pair
    return np.log(share + 1e-3).astype(np.float32)


class Featurizer:
    """uint8 (N, H, W, C) -> float32 (N, D): the named features side by side. `featurenet`:
    an `pipeline.metrics.features.Extractor` (or any callable images -> (N, D)), needed when
    "featurenet" is named."""

    def __init__(self, names: Sequence[str],
                 featurenet: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        unknown = [n for n in names if n not in PROBE_FEATURES]
        if not names or unknown or len(set(names)) != len(names):
            raise UserError(f"probe features must be distinct names from {list(PROBE_FEATURES)},"
                            f" got {list(names)}")
        if "featurenet" in names and featurenet is None:
            raise UserError("the probe's featurenet features need the FeatureNet (run the "
                            "featurenet stage: dvc repro featurenet)")
        self.names = tuple(names)
        self._fns = {"histogram": pixel_histogram, "spectrum": log_spectrum,
                     "cooccurrence": residual_cooccurrence, "featurenet": featurenet}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(self._fns[n](images), np.float32)
                               for n in self.names], axis=1)


def extractor_features(ex: Extractor) -> Callable[[np.ndarray], np.ndarray]:
    """A Featurizer's `featurenet` from a feature `Extractor` (the domain one)."""
    return lambda images: extract(images, ex, batch_size=2000)  # quiet: no bar under 3 batches


class Probe:
    """A fitted probe over classes 0 (real), 1, ..., K-1: uint8 (N, H, W, C) -> P(fake) float64
    (N,) = 1 - P(real), as `pipeline.detect.SourceDetector`; `class_probs` -> (N, K)."""

    def __init__(self, featurize: Featurizer, classifier: Pipeline) -> None:
        self.featurize, self.classifier = featurize, classifier

    def class_probs(self, images: np.ndarray) -> np.ndarray:
        k = len(self.classifier.classes_)
        if len(images) == 0:
            return np.zeros((0, k))
        return self.classifier.predict_proba(self.featurize(images)).astype(np.float64)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return 1.0 - self.class_probs(images)[:, 0]


def train_probe(sets: Sequence[np.ndarray], featurize: Featurizer, c: float = 0.01) -> Probe:
    """A probe fitted on uint8 image sets, set k labelled k (set 0 real: [real, fake] is a
    detector, [real, *families] an attributor); balance is the caller's job."""
    if len(sets) < 2 or any(len(s) == 0 for s in sets):
        raise UserError(f"probe training: needs at least two non-empty image sets, got sizes "
                        f"{[len(s) for s in sets]}")
    x = np.concatenate([featurize(s) for s in sets])
    y = np.concatenate([np.full(len(s), k) for k, s in enumerate(sets)])
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    return Probe(featurize, classifier.fit(x, y))
