"""The numbers for one detector on one test set, with its threshold calibrated on validation.

    thr = calibrate_threshold(val_labels, val_scores)
    score_set(test_labels, test_scores, thr)
    # {"auc", "ap", "eer", "tpr_at_1fpr", "accuracy" (at 0.5), "calibrated_accuracy",
    #  "calibrated_threshold"}

AUC, AP, EER and TPR at 1 % FPR come from `pipeline.detect.scores.summarize`. What is added:
accuracy at a threshold chosen on a separate validation split. CNNDetection (Wang et al. CVPR
2020) showed AP staying high on unseen generators while accuracy at 0.5 collapses: the ranking
survives, the threshold does not. The calibrated threshold maximises balanced accuracy on
validation (the mean of the real and fake hit rates, so an unbalanced split cannot pull it),
and is then applied unchanged to the test split.
"""

from __future__ import annotations

import numpy as np

from pipeline.detect.scores import check_scores, summarize


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
