"""DVC stage `evaluate`: FID/KID/precision/recall of the generated images, in domain and
Inception-v3 feature spaces, each beside the real-vs-real floor at the same N.

    python stages/evaluate.py --real data/prepared --fake data/generated/dcgan/eval.npz \
        --featurenet models/featurenet.pt --run models/dcgan/run.json \
        --metrics metrics/quality.json --plots metrics/quality

Files are written first (atomically); then, when --run exists, the metrics and files are added
to the model's MLflow run. Real-image features are cached in .cache/features/. On CUDA, TF32 is
off (pipeline/device.py), and metrics/quality.json records the `device` that measured it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_params
from pipeline.errors import run_cli
from pipeline.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, required=True, help="prepared data directory")
    parser.add_argument("--fake", type=Path, required=True, help="generated images .npz")
    parser.add_argument("--featurenet", type=Path, required=True, help="featurenet checkpoint")
    parser.add_argument("--run", type=Path, required=True, help="MLflow run file (train)")
    parser.add_argument("--metrics", type=Path, required=True, help="quality JSON to write")
    parser.add_argument("--plots", type=Path, required=True, help="plots directory to write")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    from pipeline.metrics.evaluate import evaluate_quality  # after argument errors: torch
    from pipeline.metrics.report import summary_table, write_plots

    params = load_params(args.params)
    metrics = evaluate_quality(args.real, args.fake, args.featurenet, params.evaluate,
                               params.seed)
    write_json(args.metrics, metrics)
    png = write_plots(metrics, args.plots)
    print(summary_table(metrics))
    if args.run.is_file():
        from pipeline.run_page import quality_summary
        from pipeline.tracking import Tracker

        # Closed FINISHED, or FAILED/KILLED on an error: the model's run is never left RUNNING.
        with Tracker.reopen(params.mlflow, args.run).closing() as tracker:
            tracker.log_summary(quality_summary(metrics))  # metrics, counts as tags, table
            for path in (args.metrics, png):
                tracker.log_artifact(path, "evaluate")
            tracker.tag_model_version({k: f"{v:.4g}" for k, v in metrics.items()
                                       if k.startswith(("fid_", "precision_", "recall_"))
                                       and "floor" not in k and isinstance(v, float)})
        print(f"logged to MLflow run {tracker.run_id}")


if __name__ == "__main__":
    run_cli(main)
