"""Figures of the privacy audit (matplotlib, Agg), written atomically:

- `roc_<family>.png`: every attack's ROC on log-log axes (the low-FPR region is what matters,
  Carlini et al. 2022), chance as the diagonal;
- `memorisation_<family>.png`: generated samples closest to a training image, beside that
  training image and the nearest test image, with both distances;
- `size_curve.png`: every attack's AUC (with its 95 % interval) and TPR at 1 % FPR, per audited
  family in order of its training-set size: each attack on its own, since at a few hundred
  queries the best one by TPR is mostly the luckiest.
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
    """One slot per family (sorted by n, named with it and with its queries N: the audit takes
    all of a training set smaller than `privacy.num_members`), every attack side by side."""
    plt = _pyplot()
    rows = sorted(families.items(), key=lambda kv: kv[1]["num_train_images"])
    attacks = list(rows[0][1]["attacks"])
    fig, (ax_auc, ax_tpr) = plt.subplots(1, 2, figsize=(12, 4.6), sharex=True)
    width = 0.8 / len(attacks)
    for k, attack in enumerate(attacks):
        x = np.arange(len(rows)) + (k - (len(attacks) - 1) / 2) * width
        res = [r["attacks"][attack] for _, r in rows]
        auc = np.array([a["auc"] for a in res])
        lo, hi = (np.array([a["auc_ci95"][i] for a in res]) for i in (0, 1))
        style = {"ls": "none", "marker": "o" if attack.endswith("_calibrated") else "s",
                 "ms": 4, "label": attack}
        ax_auc.errorbar(x, auc, yerr=[auc - lo, hi - auc], capsize=2, **style)
        ax_tpr.plot(x, [a["tpr_at_1pct_fpr"] for a in res], **style)
    names = [f"{name}\nn = {r['num_train_images']:,}\nN = {r['num_members']:,}"
             for name, r in rows]
    for ax, chance, label in ((ax_auc, 0.5, "AUC (95 % interval)"),
                              (ax_tpr, 0.01, "TPR at 1 % FPR")):
        ax.axhline(chance, color="gray", lw=0.8, ls=":")
        ax.set_xticks(np.arange(len(rows)), names, fontsize=7)
        ax.set(ylabel=label, xlabel="audited model, its training images n, queries N per side "
                                    "(chance dotted)")
    ax_auc.set(ylim=(0.3, 1.02), title="Membership inference against training-set size")
    ax_tpr.set(ylim=(0, max(0.1, ax_tpr.get_ylim()[1])), title="Low-FPR view")
    ax_tpr.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    _save(fig, path)
