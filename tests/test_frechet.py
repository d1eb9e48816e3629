"""Fréchet distance: closed forms on Gaussians, symmetry, zero, and a scipy.sqrtm reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from pipeline.metrics.frechet import feature_stats, fid_from_features, frechet_distance


def random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def sqrtm_reference(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's general matrix square root, float64."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_one_dimensional_closed_form():
    # N(m1, v1) vs N(m2, v2): (m1 - m2)^2 + (sqrt(v1) - sqrt(v2))^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1)
    assert frechet_distance(0.5, 0.25, 0.5, 0.25) == pytest.approx(0.0, abs=1e-12)


def test_commuting_non_diagonal_covariances_closed_form():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # shared eigenbasis, non-diagonal matrices
    l1, l2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("d", [2, 7, 32])
def test_matches_scipy_sqrtm_reference_and_is_symmetric(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_cov(rng, d), random_cov(rng, d)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(sqrtm_reference(mu1, s1, mu2, s2), rel=1e-8)
    assert ours == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)


def test_identical_stats_and_features_give_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    mu, sigma = feature_stats(x)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    assert fid_from_features(x, x.copy()) == pytest.approx(0.0, abs=1e-8)


def test_rank_deficient_covariances_stay_finite_and_nonnegative():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(10, 64)), rng.normal(size=(10, 64)) + 1.0  # N < D: singular
    d = fid_from_features(a, b)
    assert np.isfinite(d) and d > 0
    assert d == pytest.approx(sqrtm_reference(*feature_stats(a), *feature_stats(b)), rel=1e-6)


def test_feature_stats_are_float64_mean_and_unbiased_cov():
    x = np.array([[0, 0], [2, 0], [0, 2], [2, 2]], dtype=np.float32)
    mu, sigma = feature_stats(x)
    assert mu.dtype == np.float64 and np.allclose(mu, [1, 1])
    assert np.allclose(sigma, np.eye(2) * 4 / 3)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_sample_space_path_equals_covariance_path():
    # N < D takes the nuclear-norm route; the (D, D) eigen route must agree.
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(40, 100)), rng.normal(size=(30, 100)) * 1.3 + 0.2
    fast = fid_from_features(a, b)
    assert fast == pytest.approx(frechet_distance(*feature_stats(a), *feature_stats(b)),
                                 rel=1e-7)  # clamped round-off of the singular S
