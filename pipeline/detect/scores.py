"""Detection scores from labels (1 = fake, 0 = real) and scores (higher = more likely fake).

    from pipeline.detect.scores import summarize
    summarize(labels, p_fake)  # {"auc", "ap", "eer", "tpr_at_1fpr", "accuracy"}

The ROC curve, its area and average precision come from `sklearn.metrics` (`roc_curve` with
`drop_intermediate=False`: one point per distinct threshold, ties as one step). Here are only
what sklearn lacks, tested against closed-form cases:
- EER, the error rate where false-positive rate = false-negative rate, interpolated linearly
  between ROC points (the biometrics / deepfake-detection convention).
- TPR at 1 % FPR: the best true-positive rate among operating points whose FPR is <= 1 %, no
  interpolation (a threshold that actually exists; forensic tools report this low-FPR regime).
- A threshold calibrated on validation (`calibrate_threshold`) and the accuracy at it
  (`score_set`).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve

from pipeline.errors import UserError


def check_scores(labels: np.ndarray, scores: np.ndarray, where: str = "scores"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Validated (labels int in {0, 1}, scores float64), both classes present, no NaN/inf."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise UserError(f"{where}: labels {labels.shape} and scores {scores.shape} must be "
                        "equal 1-D shapes")
    if not np.isfinite(scores).all():
        raise UserError(f"{where}: {int((~np.isfinite(scores)).sum())} scores are NaN or "
                        "infinite (did training diverge? lower detect.lr)")
    if not np.isin(labels, (0, 1)).all() or len(np.unique(labels)) != 2:
        raise UserError(f"{where}: labels must contain both 0 (real) and 1 (fake)")
    return labels.astype(np.int64), scores


def eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: where FPR = FNR (= 1 - TPR), interpolated on the segment that crosses.
    `fpr`, `tpr`: a whole ROC curve from (0, 0) to (1, 1), as `sklearn.metrics.roc_curve`."""
    diff = (1 - tpr) - fpr  # FNR - FPR: starts at 1 (threshold +inf), ends at -1
    i = int(np.flatnonzero(diff <= 0)[0])  # the first point where FPR >= FNR
    if i == 0 or diff[i] == 0:
        return float(fpr[i])
    # Linear interpolation of both rates between points i-1 and i: solve FNR(t) = FPR(t).
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float = 0.01) -> float:
    """The highest TPR among ROC points with FPR <= max_fpr (an operating point that exists)."""
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def summarize(labels: np.ndarray, scores: np.ndarray, where: str = "scores",
              threshold: float | None = 0.5) -> dict[str, float]:
    """auc, ap (average precision, fakes as positives), eer, tpr_at_1fpr, and accuracy at
    `threshold` (score >= threshold is fake) when scores are probabilities."""
    labels, scores = check_scores(labels, scores, where)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    out = {"auc": float(roc_auc_score(labels, scores)),
           "ap": float(average_precision_score(labels, scores)),
           "eer": eer(fpr, tpr), "tpr_at_1fpr": tpr_at_fpr(fpr, tpr)}
    if threshold is not None:
        out["accuracy"] = float(accuracy_score(labels, (scores >= threshold).astype(np.int64)))
    return out


def downsample_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 200
                   ) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` ROC points, evenly spaced along the curve's length (keeps its shape
    and both ends), for a small DVC plot file."""
    if len(fpr) <= max_points:
        return fpr, tpr
    length = np.r_[0.0, np.cumsum(np.hypot(np.diff(fpr), np.diff(tpr)))]
    idx = np.searchsorted(length, np.linspace(0, length[-1], max_points))
    idx = np.unique(np.clip(np.r_[0, idx, len(fpr) - 1], 0, len(fpr) - 1))
    return fpr[idx], tpr[idx]


# Accuracy at a threshold chosen on a separate validation split. CNNDetection (Wang et al. CVPR
# 2020) showed AP staying high on unseen generators while accuracy at 0.5 collapses: the ranking
# survives, the threshold does not. The calibrated threshold maximises balanced accuracy on
# validation (the mean of the real and fake hit rates, so an unbalanced split cannot pull it),
# and is then applied unchanged to the test split.

def balanced_accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Mean of TPR and TNR when `score >= threshold` is called fake."""
    pred = scores >= threshold
    return float(0.5 * (pred[labels == 1].mean() + (~pred[labels == 0]).mean()))


def calibrate_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising balanced accuracy on (labels, scores).

    Candidates are the midpoints between consecutive distinct scores, plus one below the lowest
    and one above the highest (all fake / all real); the first best in ascending order wins.
    """
    labels, scores = check_scores(labels, scores, "calibration scores")
    s = np.unique(scores)  # sorted
    candidates = np.r_[s[0] - 1.0, (s[:-1] + s[1:]) / 2, s[-1] + 1.0]
    pred = scores[None, :] >= candidates[:, None]  # (T, N)
    tpr = pred[:, labels == 1].mean(axis=1)
    tnr = (~pred[:, labels == 0]).mean(axis=1)
    return float(candidates[int(np.argmax(tpr + tnr))])


def score_set(labels: np.ndarray, scores: np.ndarray, threshold: float,
              where: str = "scores") -> dict[str, float]:
    """summarize's auc, ap, eer, tpr_at_1fpr, accuracy (at 0.5), plus calibrated_accuracy
    (plain accuracy at `threshold`, chosen elsewhere) and calibrated_threshold."""
    out = summarize(labels, scores, where, threshold=0.5)
    labels, scores = check_scores(labels, scores, where)
    out["calibrated_accuracy"] = float(((scores >= threshold) == (labels == 1)).mean())
    out["calibrated_threshold"] = float(threshold)
    return out
