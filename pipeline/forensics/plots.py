"""Figures of a crossgen result (matplotlib, Agg): heat maps of the matrix and of attribution's
confusion, and the robustness curves.

    write_plots(result, "metrics/crossgen")  # matrix_auc.png, matrix_ap.png,
                                             # attribution.png, robustness.png
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import atomic_path


def _pyplot():  # -> matplotlib.pyplot, imported late: Agg before pyplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(values: np.ndarray, rows: list[str], cols: list[str], title: str, xlabel: str,
            ylabel: str, path: str | os.PathLike[str], fmt: str = "{:.3f}",
            vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis"
            ) -> None:
    """One annotated heat map PNG (rows top to bottom), written atomically."""
    plt = _pyplot()
    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2.4, 1.0 * len(rows) + 1.8))
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            r, g, b, _ = im.cmap(im.norm(values[i, j]))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # white text on dark cells
            ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center",
                    color="white" if dark else "black", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def plot_matrix(result: dict[str, Any], metric: str, path: str | os.PathLike[str]) -> None:
    """The matrix's `metric` (auc, ap, ...): rows = trained on, cols = tested on. Diverging
    colours centred on chance (0.5 on balanced sets): blue catches, red is inverted."""
    families = list(result["matrix"])
    values = [[result["matrix"][tr][te][metric] for te in families] for tr in families]
    heatmap(np.array(values), families, families, f"crossgen {metric.upper()} (real vs family)",
            "tested on family", "trained on family", path, vmin=0.0, vmax=1.0, cmap="RdBu")


def plot_confusion(att: dict[str, Any], path: str | os.PathLike[str], title: str = "attribution"
                   ) -> None:
    """An attribution's confusion counts: rows = true source, cols = predicted."""
    heatmap(np.array(att["confusion"]), att["classes"], att["classes"],
            f"{title}, accuracy {att['accuracy']:.3f}", "predicted source", "true source",
            path, fmt="{:.0f}", vmin=0, cmap="Blues")


def plot_robustness(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """AP (and AUC, dashed) vs JPEG quality and vs blur sigma; the down-up AP as a dotted line."""
    plt = _pyplot()
    rob = result["robustness"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, kind, xlabel in ((axes[0], "jpeg", "JPEG quality (lower = stronger)"),
                             (axes[1], "blur", "Gaussian blur sigma (px)")):
        levels = [r["level"] for r in rob[kind]]
        ax.plot(levels, [r["ap"] for r in rob[kind]], "o-", label="AP")
        ax.plot(levels, [r["auc"] for r in rob[kind]], "s--", label="AUC", alpha=0.7)
        for r in rob.get("down_up", []):
            ax.axhline(r["ap"], color="gray", linestyle=":",
                       label=f"{r['level']}x down-up AP {r['ap']:.3f}")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    axes[0].invert_xaxis()  # the sweep runs from clean (q 100) to harsh (q 30)
    axes[0].set_ylabel("score (real and fake perturbed alike)")
    lowest = min(r[k] for rows in rob.values() for r in rows for k in ("ap", "auc"))
    axes[0].set_ylim(min(0.4, lowest - 0.05), 1.02)
    fig.suptitle("detector robustness")
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_plots(result: dict[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """matrix_auc.png, matrix_ap.png, attribution.png, robustness.png in out_dir, and
    attribution_seed_pair.png when the result has a seed pair."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "matrix_auc.png", out / "matrix_ap.png", out / "attribution.png",
             out / "robustness.png"]
    plot_matrix(result, "auc", paths[0])
    plot_matrix(result, "ap", paths[1])
    plot_confusion(result["attribution"], paths[2])
    plot_robustness(result, paths[3])
    if "seed_pair" in result["attribution"]:
        paths.append(out / "attribution_seed_pair.png")
        plot_confusion(result["attribution"]["seed_pair"], paths[-1],
                       "seed-level attribution")
    return paths
