"""Detection scores from labels (1 = fake, 0 = real) and scores (higher = more likely fake).

    from pipeline.detect.scores import summarize
    summarize(labels, p_fake)  # {"auc", "accuracy", "eer", "tpr_at_1fpr"}

Small numpy functions, tested against `sklearn.metrics` and closed-form cases:
- ROC curve and its area (Fawcett 2006, "An introduction to ROC analysis", Pattern Recognition
  Letters 27): one point per distinct threshold, ties handled as one step (AUC counts them 1/2).
- EER, the error rate where false-positive rate = false-negative rate, interpolated linearly
  between ROC points (the biometrics / deepfake-detection convention).
- TPR at 1 % FPR: the best true-positive rate among operating points whose FPR is <= 1 %, no
  interpolation (a threshold that actually exists; forensic tools report this low-FPR regime).
"""

from __future__ import annotations

import numpy as np

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


def roc_curve(labels: np.ndarray, scores: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds decreasing, starting at (0, 0) with threshold +inf.
    Point i classifies `score >= thresholds[i]` as fake (sklearn's `drop_intermediate=False`)."""
    labels, scores = check_scores(labels, scores)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    # The last index of each run of equal scores: tied samples move together.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (len(y) - y.sum())]
    return fpr, tpr, np.r_[np.inf, s[last]]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC curve by the trapezoid rule (exact for the step curve with ties)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC = P(score of a random fake > score of a random real) + P(tie) / 2."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return auc(fpr, tpr)


def eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: where FPR = FNR (= 1 - TPR), interpolated on the segment that crosses."""
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


def accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """Share classified right when `score >= threshold` means fake."""
    labels, scores = check_scores(labels, scores)
    return float(np.mean((scores >= threshold) == (labels == 1)))


def summarize(labels: np.ndarray, scores: np.ndarray, where: str = "scores",
              threshold: float | None = 0.5) -> dict[str, float]:
    """auc, eer, tpr_at_1fpr (and accuracy at `threshold` when scores are probabilities)."""
    labels, scores = check_scores(labels, scores, where)
    fpr, tpr, _ = roc_curve(labels, scores)
    out = {"auc": auc(fpr, tpr), "eer": eer(fpr, tpr), "tpr_at_1fpr": tpr_at_fpr(fpr, tpr)}
    if threshold is not None:
        out["accuracy"] = accuracy(labels, scores, threshold)
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
