"""DVC stage `audit`: what do the trained generators leak about their training images, and how
useful are conditional ones' samples?

    python stages/audit.py --data data/prepared --models models \
        --featurenet models/featurenet.pt --metrics metrics/privacy.json --plots metrics/privacy

For each zoo family in `privacy.families`: membership-inference attacks (pipeline/privacy/
audit.py: white-box D score, black-box nearest generated sample in pixel and feature space,
each calibrated by `privacy.reference`), each with AUC, its bootstrap 95 % CI and TPR at 1 % and
0.1 % FPR, and the memorisation view. For each family in `privacy.tstr`: TSTR beside TRTR.
Writes metrics/privacy.json and its plots, then logs them into each family's MLflow run
(models/<family>/run.json). Files first: a tracking failure loses nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from pipeline.config import load_params
from pipeline.errors import UserError, run_cli


def _log(args: argparse.Namespace, params: Any, result: dict[str, Any]) -> None:
    """Each audited family's metrics and plots into its own model run; TSTR into the tstr
    families' runs."""
    from pipeline.tracking import Tracker

    per_run: dict[str, dict[str, float]] = {}
    for name, table in result["families"].items():  # the headline; privacy.json has it all
        per_run[name] = {"privacy/best_auc": table["best_auc"],
                         "privacy/best_tpr_at_1pct_fpr": table["best_tpr_at_1pct_fpr"],
                         "privacy/memorisation_median_ratio":
                             table["memorisation"]["median_ratio"]}
    tstr = result.get("tstr") or {}
    for name, r in tstr.get("families", {}).items():
        per_run.setdefault(name, {}).update({"privacy/tstr_accuracy": r["tstr_accuracy"],
                                             "privacy/tstr_over_trtr": r["tstr_over_trtr"]})
    for name, metrics in per_run.items():
        tracker = Tracker.reopen(params.mlflow, args.models / name / "run.json")
        tracker.log_metrics(metrics)
        tracker.log_artifact(args.metrics, "privacy")
        for png in sorted(args.plots.glob(f"*_{name}.png")) + sorted(
                args.plots.glob("size_curve.png")):
            tracker.log_artifact(png, "privacy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, what in (("--data", "prepared dir (train/val/test.npz)"),
                       ("--models", "models dir: <family>/generator.pt, discriminator.pt"),
                       ("--featurenet", "the domain feature net"),
                       ("--metrics", "privacy JSON to write"),
                       ("--plots", "plots directory to write")):
        parser.add_argument(flag, type=Path, required=True, help=what)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    from pipeline.device import resolve_device  # torch: after argument errors
    from pipeline.io import atomic_dir, write_json
    from pipeline.privacy.run import AuditInputs, run_audit

    params = load_params(args.params)
    pc = params.privacy
    device = resolve_device(pc.device, "privacy.device")
    for name in [*pc.families, *([pc.reference] if pc.reference else []), *pc.tstr]:
        if not (args.models / name / "generator.pt").is_file():
            raise UserError(f"{args.models / name}/generator.pt: not found; run "
                            f"`dvc repro train@{name}`")
    start = time.monotonic()
    inputs = AuditInputs(args.data, args.models, args.featurenet,
                         lambda name: load_params(args.params, family=name))
    with atomic_dir(args.plots) as tmp:
        result = run_audit(inputs, params, device, tmp)
    result["seconds"] = round(time.monotonic() - start, 1)
    write_json(args.metrics, result)
    _log(args, params, result)


if __name__ == "__main__":
    run_cli(main)
