"""What the crossgen stage's own MLflow run shows (`zoo@crossgen`), as plain data: a few
`crossgen/` metrics, tags, and the description with the leave-one-out, matrix, attribution and
robustness tables (pure functions; `stages/crossgen.py` sends them with `pipeline.tracking`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.run_page import Summary


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}"


def crossgen_summary(result: Mapping[str, Any]) -> Summary:
    """metrics/crossgen.json -> the crossgen run's `crossgen/` metrics (leave-one-out means,
    attribution accuracies, the shipped detector's AP clean and at JPEG q75 / blur 1) and its
    description: the leave-one-out and matrix tables, attribution, robustness."""
    loo = result["leave_one_out"]
    att = result["attribution"]
    rob = {kind: {r["level"]: r for r in rows} for kind, rows in result["robustness"].items()}
    metrics: dict[str, float | None] = {
        "crossgen/loo_mean_ap": loo["mean_ap"],
        "crossgen/loo_mean_calibrated_accuracy": loo["mean_calibrated_accuracy"],
        "crossgen/attribution_accuracy": att["accuracy"]}
    compared = loo.get("compare") or {}
    for recipe, other in compared.items():
        metrics[f"crossgen/loo_mean_ap_{recipe}"] = other["mean_ap"]
        metrics[f"crossgen/loo_mean_calibrated_accuracy_{recipe}"] = \
            other["mean_calibrated_accuracy"]
    if "seed_pair" in att:
        metrics["crossgen/seed_pair_fake_accuracy"] = att["seed_pair"]["fake_accuracy"]
    for kind, level, name in (("jpeg", 100, "ap_clean"), ("jpeg", 75, "ap_jpeg75"),
                              ("blur", 1.0, "ap_blur1")):
        if level in rob.get(kind, {}):
            metrics[f"crossgen/detector_{name}"] = rob[kind][level]["ap"]
    families = list(result["matrix"])
    cols = ("auc", "ap", "accuracy", "calibrated_accuracy", "eer", "tpr_at_1fpr")
    recipe = loo.get("detector", "cnn")
    lines = [f"**Crossgen**: leave-one-out mean AP **{loo['mean_ap']:.4f}**, mean calibrated "
             f"accuracy **{loo['mean_calibrated_accuracy']:.4f}** ({recipe} detectors; "
             f"CNNDetection's best: AP 0.926, accuracy 0.800); attribution accuracy "
             f"**{att['accuracy']:.4f}** over {', '.join(att['classes'])}", ""]
    for r, o in compared.items():
        lines += [f"The same with {r} detectors: mean AP {o['mean_ap']:.4f}, mean calibrated "
                  f"accuracy {o['mean_calibrated_accuracy']:.4f}.", ""]
    lines += [f"Leave one family out ({recipe} detectors trained on the others, tested on "
              "it):", "",
             "| left out | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {f} | " + " | ".join(_num(loo["per_family"][f][c]) for c in cols) + " |"
              for f in families]
    lines += ["", "AUC of a detector trained on one family (rows), tested on each (columns):", "",
              "| trained on | " + " | ".join(families) + " |", "|---|" + "---:|" * len(families)]
    lines += [f"| {tr} | " + " | ".join(_num(result["matrix"][tr][te]["auc"])
                                        for te in families) + " |" for tr in families]
    if "seed_pair" in att:
        pair = att["seed_pair"]
        given = pair.get("seed_accuracy_given_fake")
        lines += ["", f"Seed-level attribution over {', '.join(pair['classes'])}: accuracy "
                  f"{pair['accuracy']:.4f}; the pair's fakes given to the right seed "
                  f"{pair['fake_accuracy']:.4f} ({_num(given)} of those called fake; chance "
                  "0.5)."]
    lines += ["", "The shipped detector under processing (real and fake alike), AP / AUC:", "",
              "| transform | level | AP | AUC |", "|---|---:|---:|---:|"]
    lines += [f"| {kind} | {r['level']} | {_num(r['ap'])} | {_num(r['auc'])} |"
              for kind, rows in result["robustness"].items() for r in rows]
    runs = result.get("model_runs") or {}
    if runs:
        lines += ["", "Model runs: " + ", ".join(f"{f} `{run}`" for f, run in runs.items())]
    tags = {"crossgen.families": ",".join(families),
            **{f"crossgen.n_{k}": str(v) for k, v in result["sizes"]["real"].items()}}
    return Summary(metrics, tags, "crossgen", "\n".join(lines))
