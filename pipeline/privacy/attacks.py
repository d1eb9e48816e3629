"""Membership-inference attack scores and how they are reported.

Convention: a score is higher for "more likely a member" (an image G was trained on). An
attack is judged on equal numbers of members and non-members by its ROC AUC with a bootstrap
95 % interval, and by its TPR at a low FPR (Carlini et al. 2022: a few confidently identified
members matter more than an average-case AUC). Pure functions of arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

LOW_FPRS = (0.01, 0.001)  # the reported operating points: TPR at 1 % and at 0.1 % FPR


def nearest_distance(queries: np.ndarray, samples: np.ndarray, batch_size: int = 1024
                     ) -> np.ndarray:
    """Euclidean distance from each query row to its nearest row of `samples`, (Q,) float64.
    Rows are flattened (an image is its pixel vector)."""
    q = torch.from_numpy(np.asarray(queries, np.float32).reshape(len(queries), -1))
    s = torch.from_numpy(np.asarray(samples, np.float32).reshape(len(samples), -1))
    if q.shape[1] != s.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dims, samples {s.shape[1]}")
    s_sq = (s * s).sum(1)
    out = []
    for i in range(0, len(q), batch_size):
        qb = q[i:i + batch_size]
        # |q - s|^2 = |q|^2 - 2 q.s + |s|^2, clamped at 0 against rounding
        d2 = (qb * qb).sum(1, keepdim=True) - 2 * qb @ s.T + s_sq
        out.append(d2.min(1).values.clamp_min(0).sqrt())
    return torch.cat(out).double().numpy()


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The highest TPR whose FPR is at most `fpr` (members = label 1); 0 when none is."""
    fprs, tprs, _ = roc_curve(labels, scores)
    ok = fprs <= fpr + 1e-12
    return float(tprs[ok].max()) if ok.any() else 0.0


def bootstrap_auc(members: np.ndarray, nonmembers: np.ndarray, rounds: int, seed: int,
                  level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC: both groups resampled with replacement, each
    on its own (the counts stay fixed, as in the experiment). A resample is a vector of
    multinomial counts, so every round's AUC (Mann-Whitney: P(member > non-member) + P(tie)/2)
    comes from one cumulative sum over the sorted non-members, all rounds at once."""
    rng = np.random.default_rng(seed)
    n1, n0 = len(members), len(nonmembers)
    order = np.sort(nonmembers)
    below = np.searchsorted(order, members, side="left")  # non-members < member i
    upto = np.searchsorted(order, members, side="right")  # ... <= member i
    aucs = np.empty(rounds)
    chunk = max(1, 2_000_000 // max(n0, n1))  # rounds per block: bounded memory
    for start in range(0, rounds, chunk):
        r = min(chunk, rounds - start)
        w = rng.multinomial(n1, np.full(n1, 1 / n1), size=r)  # (r, n1) member counts
        v = rng.multinomial(n0, np.full(n0, 1 / n0), size=r)  # (r, n0) per sorted non-member
        cum = np.concatenate([np.zeros((r, 1)), v.cumsum(1)], axis=1)  # (r, n0 + 1)
        wins = cum[:, below] + 0.5 * (cum[:, upto] - cum[:, below])  # (r, n1)
        aucs[start:start + r] = (w * wins).sum(1) / (n1 * n0)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(aucs, [tail, 100 - tail])
    return float(lo), float(hi)


def report(members: np.ndarray, nonmembers: np.ndarray, rounds: int = 1000, seed: int = 0
           ) -> dict[str, float | list[float] | int]:
    """{auc, auc_ci95 [lo, hi], tpr_at_1pct_fpr, tpr_at_0.1pct_fpr, num_members,
    num_nonmembers} of an attack's scores on members and non-members."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    if len(members) < 2 or len(nonmembers) < 2:
        raise ValueError("an attack needs at least 2 members and 2 non-members")
    if not (np.isfinite(members).all() and np.isfinite(nonmembers).all()):
        raise ValueError("attack scores must be finite")
    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    scores = np.r_[members, nonmembers]
    out: dict[str, float | list[float] | int] = {
        "auc": float(roc_auc_score(labels, scores)),
        "auc_ci95": list(bootstrap_auc(members, nonmembers, rounds, seed)),
    }
    for fpr in LOW_FPRS:
        out[f"tpr_at_{fpr * 100:g}pct_fpr"] = tpr_at_fpr(labels, scores, fpr)
    out["num_members"], out["num_nonmembers"] = len(members), len(nonmembers)
    return out
