"""Improved precision and recall with k-NN manifolds.

Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative
Models" (NeurIPS), https://arxiv.org/abs/1904.06991 : each set's manifold is the union of balls
around its points with radius = distance to the point's k-th nearest neighbour in the same set.
precision = share of fake points inside the real manifold; recall = share of real points inside
the fake manifold. Pairwise distances in float32 with batched `torch.cdist`.
"""

from __future__ import annotations

import numpy as np
import torch


def knn_radii(x: torch.Tensor, k: int, batch_size: int = 1000) -> torch.Tensor:
    """Distance from each row of x (N, D) to its k-th nearest other row: (N,)."""
    if not 0 < k < len(x):
        raise ValueError(f"k must be in [1, {len(x) - 1}], got {k}")
    out = [torch.cdist(x[i : i + batch_size], x).kthvalue(k + 1, dim=1).values  # +1: self
           for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def coverage(points: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor,
             batch_size: int = 1000) -> float:
    """Share of `points` (N, D) inside any ball (manifold[j], radii[j])."""
    inside = [(torch.cdist(points[i : i + batch_size], manifold) <= radii[None]).any(dim=1)
              for i in range(0, len(points), batch_size)]
    return float(torch.cat(inside).float().mean())


@torch.no_grad()
def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3,
                     batch_size: int = 1000) -> tuple[float, float]:
    """(precision, recall) of fake (M, D) against real (N, D) features, k-NN manifolds."""
    r = torch.as_tensor(np.asarray(real), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float32)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dims differ: {tuple(r.shape)} vs {tuple(f.shape)}")
    precision = coverage(f, r, knn_radii(r, k, batch_size), batch_size)
    recall = coverage(r, f, knn_radii(f, k, batch_size), batch_size)
    return precision, recall
