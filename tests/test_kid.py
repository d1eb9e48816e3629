"""KID: unbiased MMD^2 with the cubic kernel, checked against a direct double loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.metrics.kid import kid, mmd2_unbiased


def direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Textbook unbiased MMD^2, one kernel evaluation at a time."""
    d, m = x.shape[1], len(x)

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    pairs = [(i, j) for i, j in itertools.product(range(m), repeat=2) if i != j]
    kxx = sum(k(x[i], x[j]) for i, j in pairs) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i, j in pairs) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


def test_mmd2_matches_direct_computation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(7, 5)) + 0.5
    assert mmd2_unbiased(x, y) == pytest.approx(direct_mmd2(x, y), rel=1e-12)


def test_kid_with_full_subsets_equals_direct_mmd2_and_has_no_std():
    # subset_size = n: every subset is the whole set, one value, so no spread to report (None,
    # not the ~1e-16 of round-off that permuted sums used to give).
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(9, 4)), rng.normal(size=(9, 4)) * 2
    mean, std = kid(a, b, subsets=5, subset_size=9, seed=3)
    assert mean == pytest.approx(direct_mmd2(a, b), rel=1e-10)
    assert std is None


def test_kid_std_exists_when_one_set_is_larger_than_the_subset():
    # a is used whole, b is subsampled: the subsets of b still differ, so the std is real.
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(9, 4)), rng.normal(size=(30, 4))
    mean, std = kid(a, b, subsets=5, subset_size=9, seed=3)
    assert isinstance(std, float) and std > 1e-6 and np.isfinite(mean)


def test_kid_subsets_are_seeded_and_separate_distributions():
    rng = np.random.default_rng(2)
    a, a2 = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    shifted = rng.normal(size=(200, 8)) + 1.0
    same = kid(a, a2, subsets=20, subset_size=50, seed=0)
    assert same == kid(a, a2, subsets=20, subset_size=50, seed=0)
    far = kid(a, shifted, subsets=20, subset_size=50, seed=0)
    assert abs(same[0]) < 3 * same[1] + 1e-3  # unbiased: ~0 for one distribution
    assert far[0] > 10 * abs(same[0]) and far[0] > 0


def test_kid_rejects_a_subset_larger_than_a_set():
    with pytest.raises(ValueError, match="subset_size"):
        kid(np.zeros((5, 2)), np.zeros((10, 2)), subsets=1, subset_size=6)


def test_precomputed_kernel_path_equals_per_subset_path(monkeypatch):
    import pipeline.metrics.kid as kid_module

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(50, 6)) + 0.3
    small = kid(a, b, subsets=8, subset_size=20, seed=1)  # 40 x 50 pairs: precomputed grams
    monkeypatch.setattr(kid_module, "GRAM_LIMIT", 0)
    assert kid(a, b, subsets=8, subset_size=20, seed=1) == pytest.approx(small, rel=1e-12)
