"""Seeded, stratified hold-out splits (train/test for digits/folder, train/val in `prepare`)."""

from __future__ import annotations

import numpy as np


def split_indices(labels: np.ndarray, fraction: float, seed: int,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out) of `labels`, about `fraction` of every class held out.

    `round(fraction * n)` are held out in total (at least 1 and at most n - 1 when fraction > 0
    and n >= 2), shared between classes by largest remainder, chosen at random within each
    class. Both index arrays are sorted (the source's order); same inputs, same split.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    total = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        total = min(max(total, 1), n - 1)
    if n == 0 or total == 0:
        return np.arange(n), np.arange(0)
    counts = np.bincount(labels)
    quota = counts * (total / n)  # each class's share of `total`
    per_class = np.floor(quota).astype(np.int64)
    extra = np.argsort(-(quota - per_class), kind="stable")[: total - per_class.sum()]
    per_class[extra] += 1
    # A random order within each class: shuffle, then stable-sort by label.
    order = np.random.default_rng(seed).permutation(n)
    order = order[np.argsort(labels[order], kind="stable")]
    rank = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)  # position in class
    held = rank < per_class[labels[order]]
    return np.sort(order[~held]), np.sort(order[held])
