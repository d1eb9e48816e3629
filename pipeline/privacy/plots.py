"""Figures of the privacy audit (matplotlib, Agg), written atomically:

- `roc_<family>.png`: every attack's ROC on log-log axes (the low-FPR region is what matters,
  Carlini et al. 2022), chance as the diagonal;
- `memorisation_<family>.png`: generated samples closest to a training image, beside that
  training image and the nearest test image, with both distances;
- `size_curve.png`: best attack AUC and TPR at 1 % FPR against the training-set size.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from pipeline.io import atomic_path


def _pyplot():  # -> matplotlib.pyplot with the Agg backend (no display)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)


def roc_plot(scores: dict[str, np.ndarray], is_member: np.ndarray, title: str,
             path: str | os.PathLike[str]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    floor = 1 / max(int((~is_member).sum()), 1)
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(is_member, s)
        ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), label=name,
                ls="--" if name.endswith("_calibrated") else "-")
    ax.plot([floor, 1], [floor, 1], color="gray", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlabel="false positive rate (non-members called members)",
           ylabel="true positive rate", title=title)
    ax.axvline(0.01, color="gray", ls=":", lw=0.8)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def memorisation_grid(columns: tuple[np.ndarray, np.ndarray, np.ndarray],
                      closest: list[dict[str, float]], title: str,
                      path: str | os.PathLike[str]) -> None:
    plt = _pyplot()
    generated, train, test = columns
    rows = len(generated)
    fig, axes = plt.subplots(rows, 3, figsize=(4.6, 1.45 * rows + 0.6), squeeze=False)
    heads = ("generated", "nearest training", "nearest test")
    for r in range(rows):
        for c, (images, head) in enumerate(zip((generated, train, test), heads, strict=True)):
            ax = axes[r, c]
            img = images[r]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(head, fontsize=8)
            if c:
                d = closest[r]["nn_train" if c == 1 else "nn_test"]
                ax.set_xlabel(f"d = {d:.0f}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def size_curve(families: dict[str, dict[str, Any]], path: str | os.PathLike[str]) -> None:
    plt = _pyplot()
    rows = sorted(families.items(), key=lambda kv: kv[1]["num_train_images"])
    n = [r["num_train_images"] for _, r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(n, [r["best_auc"] for _, r in rows], "o-", label="best attack AUC")
    ax.plot(n, [r["best_tpr_at_1pct_fpr"] for _, r in rows], "s-",
            label="best attack TPR at 1 % FPR")
    for (name, _), x, y in zip(rows, n, [r["best_auc"] for _, r in rows], strict=True):
        ax.annotate(name, (x, y), fontsize=7, textcoords="offset points", xytext=(3, 4))
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.axhline(0.01, color="gray", lw=0.8, ls=":")
    ax.set(xscale="log", ylim=(0, 1.02), xlabel="training images of G (n)",
           ylabel="membership inference", title="Leakage against training-set size")
    ax.legend(fontsize=8)
    _save(fig, path)
