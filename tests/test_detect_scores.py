"""Detection scores against sklearn.metrics (the reference) and closed-form cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from pipeline.detect.scores import (
    accuracy,
    auc,
    downsample_roc,
    eer,
    roc_auc,
    roc_curve,
    summarize,
    tpr_at_fpr,
)
from pipeline.errors import UserError


def _case(seed: int, n: int = 300, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = rng.normal(labels * 0.8, 1.0)
    if ties:  # coarse scores: many ties, inside and across classes
        scores = np.round(scores, 1)
    return labels, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_roc_matches_sklearn(seed: int, ties: bool) -> None:
    labels, scores = _case(seed, ties=ties)
    fpr, tpr, thr = roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_is_mann_whitney_probability() -> None:
    # AUC = P(fake score > real score) + P(tie) / 2, counted over all pairs.
    labels, scores = _case(5, n=80, ties=True)
    fake, real = scores[labels == 1], scores[labels == 0]
    pairs = (fake[:, None] > real[None, :]).mean() + 0.5 * (fake[:, None] == real[None, :]).mean()
    assert roc_auc(labels, scores) == pytest.approx(pairs, abs=1e-12)


def test_perfect_separation() -> None:
    labels = np.r_[np.zeros(50), np.ones(50)]
    scores = np.r_[np.linspace(0, 0.4, 50), np.linspace(0.6, 1, 50)]
    out = summarize(labels, scores)
    assert out == {"auc": 1.0, "eer": 0.0, "tpr_at_1fpr": 1.0, "accuracy": 1.0}
    inverted = summarize(labels, 1 - scores)
    assert inverted["auc"] == 0.0 and inverted["eer"] == 1.0 and inverted["accuracy"] == 0.0


def test_identical_distributions_are_chance() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(5000), np.ones(5000)]
    out = summarize(labels, rng.random(10000))
    assert out["auc"] == pytest.approx(0.5, abs=0.02)
    assert out["eer"] == pytest.approx(0.5, abs=0.02)
    assert out["tpr_at_1fpr"] == pytest.approx(0.01, abs=0.01)
    # Constant scores: one tied threshold, the diagonal; AUC exactly 1/2.
    assert roc_auc(labels, np.full(10000, 0.3)) == 0.5
    assert eer(*roc_curve(labels, np.full(10000, 0.3))[:2]) == pytest.approx(0.5)


def test_eer_closed_form_uniform_overlap() -> None:
    # real ~ U(0, 1), fake ~ U(0.5, 1.5) on a fine grid: FPR(t) = 1 - t, FNR(t) = t - 0.5,
    # equal at t = 0.75 -> EER = 0.25.
    grid = (np.arange(4000) + 0.5) / 4000
    labels = np.r_[np.zeros(4000), np.ones(4000)]
    fpr, tpr, _ = roc_curve(labels, np.r_[grid, grid + 0.5])
    assert eer(fpr, tpr) == pytest.approx(0.25, abs=1e-3)
    assert auc(fpr, tpr) == pytest.approx(1 - 0.5 * 0.5 * 0.5, abs=1e-3)  # 0.875


def test_eer_interpolates_between_points() -> None:
    # Hand-made ROC: FNR - FPR goes from 0.5 to -0.5 on the segment (0, 0.5) -> (0.5, 1).
    fpr, tpr = np.array([0.0, 0.0, 0.5, 1.0]), np.array([0.0, 0.5, 1.0, 1.0])
    assert eer(fpr, tpr) == pytest.approx(0.25)


def test_tpr_at_fpr_and_accuracy() -> None:
    labels, scores = _case(3, n=2000)
    fpr, tpr, _ = roc_curve(labels, scores)
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, scores)
    assert tpr_at_fpr(fpr, tpr, 0.01) == pytest.approx(sk_tpr[sk_fpr <= 0.01].max())
    assert accuracy(labels, scores, 0.4) == pytest.approx(np.mean((scores >= 0.4) == labels))


def test_downsample_keeps_ends_and_shape() -> None:
    labels, scores = _case(4, n=5000)
    fpr, tpr, _ = roc_curve(labels, scores)
    small_fpr, small_tpr = downsample_roc(fpr, tpr, 200)
    assert len(small_fpr) <= 200
    assert (small_fpr[0], small_tpr[0], small_fpr[-1], small_tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(small_fpr) >= 0) and np.all(np.diff(small_tpr) >= 0)
    assert auc(small_fpr, small_tpr) == pytest.approx(auc(fpr, tpr), abs=0.01)


@pytest.mark.parametrize("labels, scores, match", [
    (np.r_[0, 1, 1], np.r_[0.1, np.nan, 0.3], "NaN"),
    (np.r_[1, 1, 1], np.r_[0.1, 0.2, 0.3], "both"),
    (np.r_[0, 1], np.r_[0.1, 0.2, 0.3], "shapes"),
])
def test_bad_inputs_are_user_errors(labels: np.ndarray, scores: np.ndarray, match: str) -> None:
    with pytest.raises(UserError, match=match):
        summarize(labels, scores)
