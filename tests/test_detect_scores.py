"""Detection scores: the EER and TPR-at-FPR helpers on closed-form cases, and `summarize`'s keys
and values where the answer is known (the ROC curve and AUC themselves are sklearn's)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc, roc_curve

from pipeline.detect.scores import downsample_roc, eer, summarize, tpr_at_fpr
from pipeline.errors import UserError


def _uniform_overlap(n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """real ~ U(0, 1), fake ~ U(0.5, 1.5) on a fine grid: for t in [0.5, 1], FPR(t) = 1 - t and
    FNR(t) = t - 0.5."""
    grid = (np.arange(n) + 0.5) / n
    return np.r_[np.zeros(n), np.ones(n)], np.r_[grid, grid + 0.5]


def test_perfect_separation() -> None:
    labels = np.r_[np.zeros(50), np.ones(50)]
    scores = np.r_[np.linspace(0, 0.4, 50), np.linspace(0.6, 1, 50)]
    out = summarize(labels, scores)
    assert out == {"auc": 1.0, "ap": 1.0, "eer": 0.0, "tpr_at_1fpr": 1.0, "accuracy": 1.0}
    inverted = summarize(labels, 1 - scores)
    assert inverted["auc"] == 0.0 and inverted["eer"] == 1.0 and inverted["accuracy"] == 0.0
    assert inverted["tpr_at_1fpr"] == 0.0


def test_identical_distributions_are_chance() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(5000), np.ones(5000)]
    out = summarize(labels, rng.random(10000))
    assert out["auc"] == pytest.approx(0.5, abs=0.02)
    assert out["ap"] == pytest.approx(0.5, abs=0.02)  # AP of a random ranking = prevalence
    assert out["eer"] == pytest.approx(0.5, abs=0.02)
    assert out["tpr_at_1fpr"] == pytest.approx(0.01, abs=0.01)
    # Constant scores: one tied threshold, the diagonal from (0, 0) to (1, 1).
    const = summarize(labels, np.full(10000, 0.3), threshold=None)
    assert const["auc"] == 0.5 and const["eer"] == pytest.approx(0.5)
    assert const["tpr_at_1fpr"] == 0.0 and "accuracy" not in const


def test_eer_and_tpr_closed_form_uniform_overlap() -> None:
    # FPR = FNR at t = 0.75 -> EER = 0.25; FPR <= 1 % needs t >= 0.99 -> TPR = 1.5 - 0.99.
    labels, scores = _uniform_overlap()
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert eer(fpr, tpr) == pytest.approx(0.25, abs=1e-3)
    assert tpr_at_fpr(fpr, tpr, 0.01) == pytest.approx(0.51, abs=1e-3)
    assert tpr_at_fpr(fpr, tpr, 0.1) == pytest.approx(0.6, abs=1e-3)
    out = summarize(labels, scores)
    assert out["eer"] == pytest.approx(0.25, abs=1e-3)
    assert out["tpr_at_1fpr"] == pytest.approx(0.51, abs=1e-3)
    assert out["auc"] == pytest.approx(1 - 0.5 * 0.5 * 0.5, abs=1e-3)  # 0.875
    # At 0.5 every fake is caught and the reals in [0.5, 1) are false alarms: 3/4 right.
    assert out["accuracy"] == pytest.approx(0.75, abs=1e-3)


def test_eer_interpolates_between_points() -> None:
    # Hand-made ROC: FNR - FPR goes from 0.5 to -0.5 on the segment (0, 0.5) -> (0.5, 1).
    fpr, tpr = np.array([0.0, 0.0, 0.5, 1.0]), np.array([0.0, 0.5, 1.0, 1.0])
    assert eer(fpr, tpr) == pytest.approx(0.25)
    # A point exactly on FPR = FNR is returned as it is.
    assert eer(np.array([0.0, 0.2, 1.0]), np.array([0.0, 0.8, 1.0])) == pytest.approx(0.2)


def test_tpr_at_fpr_takes_an_existing_point_not_an_interpolation() -> None:
    fpr, tpr = np.array([0.0, 0.0, 0.005, 0.02, 1.0]), np.array([0.0, 0.4, 0.6, 0.9, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.6  # not 0.7 on the segment to (0.02, 0.9)
    assert tpr_at_fpr(fpr, tpr, 0.02) == 0.9  # the bound itself is allowed
    assert tpr_at_fpr(fpr, tpr, 0.0) == 0.4


def test_summarize_counts_ties_as_one_threshold() -> None:
    # Scores 0 (2 real), 1 (1 real, 1 fake), 2 (2 fake): the tie is one step from
    # (FPR, TPR) = (0, 2/3) to (1/3, 1); AUC = P(fake > real) + P(tie) / 2 = 8/9 + (1/9) / 2.
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    out = summarize(labels, scores, threshold=1.0)
    assert out["auc"] == pytest.approx(17 / 18)
    # FNR - FPR goes 1/3 -> -1/3 along that step: equal halfway, at FPR = 1/6.
    assert out["eer"] == pytest.approx(1 / 6)
    assert out["tpr_at_1fpr"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(5 / 6)  # the real scored 1.0 is called fake


def test_downsample_keeps_ends_and_shape() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 5000)
    fpr, tpr, _ = roc_curve(labels, rng.normal(labels * 0.8, 1.0), drop_intermediate=False)
    small_fpr, small_tpr = downsample_roc(fpr, tpr, 200)
    assert len(small_fpr) <= 200
    assert (small_fpr[0], small_tpr[0], small_fpr[-1], small_tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(small_fpr) >= 0) and np.all(np.diff(small_tpr) >= 0)
    assert auc(small_fpr, small_tpr) == pytest.approx(auc(fpr, tpr), abs=0.01)
    short = downsample_roc(fpr[:50], tpr[:50], 200)  # already small: unchanged
    assert np.array_equal(short[0], fpr[:50]) and np.array_equal(short[1], tpr[:50])


@pytest.mark.parametrize("labels, scores, match", [
    (np.r_[0, 1, 1], np.r_[0.1, np.nan, 0.3], "NaN"),
    (np.r_[1, 1, 1], np.r_[0.1, 0.2, 0.3], "both"),
    (np.r_[0, 1], np.r_[0.1, 0.2, 0.3], "shapes"),
])
def test_bad_inputs_are_user_errors(labels: np.ndarray, scores: np.ndarray, match: str) -> None:
    with pytest.raises(UserError, match=match):
        summarize(labels, scores)
