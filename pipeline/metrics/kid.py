"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, over subsets.

Bińkowski et al. 2018, "Demystifying MMD GANs" (ICLR), https://arxiv.org/abs/1801.01401 :
k(x, y) = (x·y / d + 1)^3, and for two subsets X, Y of size m

    MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1))
              - 2 sum_{i,j} k(x_i, y_j) / m^2

reported as mean ± std over `subsets` random subset pairs (drawn without replacement, seeded).
When both sets are no larger than the subset size, every "subset" is the whole set: there is
one value, no spread to report, so the std is None (not the 1e-16 of float round-off).
"""

from __future__ import annotations

import numpy as np

GRAM_LIMIT = 4_000_000  # a x b pairs up to which whole kernel matrices are precomputed


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x·y / d + 1)^3 for all pairs: (n, d), (m, d) -> (n, m)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_from_gram(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m = len(kxx)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / (m * m))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between equal-size samples x, y (m, d) under the cubic kernel."""
    return _mmd2_from_gram(polynomial_kernel(x, x), polynomial_kernel(y, y),
                           polynomial_kernel(x, y))


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float | None]:
    """(mean, std) of unbiased MMD^2 over `subsets` random subset pairs of `subset_size`.

    std is None when `subset_size` equals both set sizes (one possible value: the whole sets).
    Raises ValueError when either set is smaller than `subset_size` (callers pick the size).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape} vs {b.shape}")
    if subset_size < 2 or subset_size > min(len(a), len(b)):
        raise ValueError(f"subset_size {subset_size} must be in [2, {min(len(a), len(b))}]")
    if subset_size == len(a) == len(b):  # MMD^2 does not depend on the order: no subsets
        return mmd2_unbiased(a, b), None
    rng = np.random.default_rng(seed)
    draws = [(rng.choice(len(a), subset_size, replace=False),
              rng.choice(len(b), subset_size, replace=False)) for _ in range(subsets)]
    if len(a) * len(b) > GRAM_LIMIT:
        values = [mmd2_unbiased(a[i], b[j]) for i, j in draws]
    else:  # small sets (Inception at a CPU N): kernel matrices once, subsets index into them
        kaa, kbb, kab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
        values = [_mmd2_from_gram(kaa[np.ix_(i, i)], kbb[np.ix_(j, j)], kab[np.ix_(i, j)])
                  for i, j in draws]
    return float(np.mean(values)), float(np.std(values))
