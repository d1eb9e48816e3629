"""Presentation of metrics/quality.json: a bar chart of each metric vs its real-vs-real floor
(metrics/quality/quality.png) and the summary table the evaluate stage prints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.io import atomic_dir
from pipeline.metrics.registry import format_n, metric_key

VALUES = ("fid", "kid_mean", "precision", "recall")


def rows(metrics: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(metric name, model value, floor value) for every space present in `metrics`."""
    out = []
    for space in ("domain", "inception"):
        n = metrics.get(f"n_{space}")
        if not n:
            continue
        for value in VALUES:
            key = metric_key(value, space, int(n))
            out.append((key, float(metrics[key]), float(metrics[metric_key(value, space,
                                                                             int(n), True)])))
    return out


def summary_table(metrics: dict[str, Any]) -> str:
    """Fixed-width table: metric, model, real-vs-real floor."""
    lines = [f"{'metric':<28}{'model':>12}{'real floor':>12}"]
    lines += [f"{key:<28}{model:>12.4f}{floor:>12.4f}" for key, model, floor in rows(metrics)]
    return "\n".join(lines)


def write_plots(metrics: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Replace `out_dir` with one PNG: a grid of bar pairs (model vs floor), row per space."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = rows(metrics)
    spaces = [s for s in ("domain", "inception") if metrics.get(f"n_{s}")]
    fig, axes = plt.subplots(len(spaces), len(VALUES), figsize=(3 * len(VALUES),
                                                                 2.6 * len(spaces)),
                             squeeze=False)
    for r, space in enumerate(spaces):
        for c, (key, model, floor) in enumerate(t for t in table if f"_{space}_" in t[0]):
            ax = axes[r][c]
            ax.bar(["model", "real floor"], [model, floor], color=["tab:orange", "tab:blue"])
            ax.set_title(key, fontsize=9)
            for x, v in enumerate((model, floor)):
                ax.annotate(f"{v:.3g}", (x, v), ha="center", va="bottom", fontsize=8)
        axes[r][0].set_ylabel(f"{space} (N={format_n(int(metrics[f'n_{space}']))})")
    fig.suptitle("Generated vs real, beside the real-vs-real floor at the same N")
    fig.tight_layout()
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        fig.savefig(tmp / "quality.png", dpi=100)
    plt.close(fig)
    return out_dir / "quality.png"
