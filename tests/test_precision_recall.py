"""Precision/recall with k-NN manifolds on cases whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics.precision_recall import knn_radii, precision_recall


def brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def cover(p, m, r):
        return float((np.linalg.norm(p[:, None] - m[None], axis=-1) <= r[None]).any(1).mean())

    return cover(fake, real, radii(real)), cover(real, fake, radii(fake))


def clusters(seed: int, n: int = 30, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 100.0


def test_identical_sets_are_full_precision_and_recall():
    a, _ = clusters(0)
    assert precision_recall(a, a.copy(), k=3) == (1.0, 1.0)


def test_far_apart_clusters_are_zero_and_zero():
    a, b = clusters(1)
    assert precision_recall(a, b, k=3) == (0.0, 0.0)


def test_fake_covering_half_of_real_modes():
    a, b = clusters(2)
    real = np.concatenate([a, b])
    precision, recall = precision_recall(real, a, k=3, batch_size=7)  # batches cross rows
    assert precision == 1.0
    assert recall == pytest.approx(0.5)


def test_matches_brute_force_on_overlapping_gaussians():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(60, 5)), rng.normal(size=(50, 5)) * 1.5 + 0.5
    got = precision_recall(real, fake, k=3, batch_size=16)
    want = brute_force(real, fake, 3)
    assert got == pytest.approx(want, abs=1e-6)
    assert 0 < got[0] < 1 and 0 < got[1] < 1


def test_knn_radius_is_kth_other_point():
    import torch

    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_radii(x, 2, batch_size=3).tolist() == [3.0, 2.0, 3.0, 5.0]
    with pytest.raises(ValueError, match="k must be"):
        knn_radii(x, 4)
