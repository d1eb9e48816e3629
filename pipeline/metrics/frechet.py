"""Fréchet distance between two Gaussians fitted to feature sets (the "F" in FID).

Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium" (NeurIPS), https://arxiv.org/abs/1706.08500 :

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

Computed in float64 without `scipy.linalg.sqrtm` (SciPy >= 1.18 dropped `disp=False`, and its
complex round-off needs patching): with R = S1^(1/2) from a symmetric eigendecomposition,
tr((S1 S2)^(1/2)) = sum(sqrt(eig(R S2 R))) because S1 S2 is similar to the symmetric PSD matrix
R S2 R. Tiny negative eigenvalues from round-off are clamped to 0.

With fewer samples than dimensions (Inception's 2048-d at a CPU N of 200) `fid_from_features`
uses the same quantity in sample space: with centred X1 (n1, D), X2 (n2, D),
tr((S1 S2)^(1/2)) = ||X1 X2^T||_* / sqrt((n1-1)(n2-1)) (nuclear norm: the singular values of
X1 X2^T are the square roots of the non-zero eigenvalues of S1 S2), an (n1, n2) SVD instead of
(D, D) eigendecompositions.
"""

from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be (N >= 2, D), got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off clamped)."""
    vals, vecs = np.linalg.eigh((s + s.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def sqrt_trace(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2."""
    r = _psd_sqrt(s1)
    m = r @ s2 @ r  # (D, D) symmetric PSD, similar to S1 S2
    vals = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(vals, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64, >= 0."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2,
                                                                                  np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2,
                                                                                   np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    d2 = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * sqrt_trace(s1, s2)
    return float(max(d2, 0.0))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two (N, D) feature sets."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if max(len(a), len(b)) >= a.shape[1]:
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"features must be (N >= 2, D) with equal D, got {a.shape}, {b.shape}")
    x1, x2 = a - a.mean(0), b - b.mean(0)  # (n1, D), (n2, D)
    n1, n2 = len(a) - 1, len(b) - 1
    traces = (x1 * x1).sum() / n1 + (x2 * x2).sum() / n2  # tr(S1) + tr(S2)
    cross = np.linalg.svd(x1 @ x2.T, compute_uv=False).sum() / np.sqrt(n1 * n2)
    diff = a.mean(0) - b.mean(0)
    return float(max(diff @ diff + traces - 2.0 * cross, 0.0))
