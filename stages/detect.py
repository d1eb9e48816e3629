"""DVC stage `detect`: train the shipped detector on real images against every zoo family's
fakes, calibrate its threshold, score it beside two baselines.

    python stages/detect.py --real data/prepared --fake data/generated \
        --discriminator models/dcgan/discriminator.pt --run models/dcgan/run.json \
        --model models/detector.pt --metrics metrics/detector.json --roc metrics/roc.csv \
        --plots metrics/detector

The families are params.yaml's `zoo` (their fakes in data/generated/<family>/). The protocol
(balanced seeded subsets, disjoint sets, the threshold calibrated on validation, robustness
transforms applied to real and fake test images alike) is documented in pipeline/detect/run.py. On
CUDA, TF32 is off (pipeline/device.py); metrics/detector.json records the `device`. Files are
written first, then logged to the model's MLflow run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_params
from pipeline.errors import run_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, what in (("--real", "prepared dir"), ("--fake", "generated dir, one per family"),
                       ("--discriminator", "the default model's discriminator.pt (baseline)"),
                       ("--run", "the default model's run.json (MLflow run)"),
                       ("--model", "detector to write"),
                       ("--metrics", "metrics JSON"), ("--roc", "ROC CSV (DVC plot)"),
                       ("--plots", "plots directory")):
        parser.add_argument(flag, type=Path, required=True, help=what)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    from pipeline.detect.run import load_detect_data, run_detect, write_outputs  # torch
    from pipeline.device import resolve_device
    from pipeline.run_page import detect_summary
    from pipeline.tracking import Tracker

    params = load_params(args.params)
    device = resolve_device(params.detect.device, "detect.device")
    data = load_detect_data(args.real, args.fake, list(params.zoo), params.seed,
                            params.detect.num_train)
    result = run_detect(data, args.discriminator, params.detect, params.seed, device)
    write_outputs(result, params.detect, args.model, args.metrics, args.roc, args.plots)
    m = result.metrics
    print(f"{'detector':<14}{'AUC':>7}{'AP':>7}{'acc':>7}{'EER':>7}{'TPR@1%':>8}")
    for name in ("detector", "discriminator", "spectrum"):
        if f"{name}_auc" in m:
            print(f"{name:<14}" + "".join(f"{m[f'{name}_{k}']:>{w}.3f}" for k, w in
                                          (("auc", 7), ("ap", 7), ("accuracy", 7), ("eer", 7),
                                           ("tpr_at_1fpr", 8))))
    print(f"detector: calibrated threshold {m['detector_threshold']:.3f} -> accuracy "
          f"{m['detector_calibrated_accuracy']:.3f}; source accuracy "
          f"{m['detector_source_accuracy']:.3f}; per family AUC: " + ", ".join(
              f"{f} {v['auc']:.3f}" for f, v in m["per_family"].items()))
    print(f"test: {m['n_test_real']} real + {m['n_test_fake']} fake; robustness: " + ", ".join(
        f"{k[len('detector_auc_'):]} {v:.3f}" for k, v in m.items()
        if k.startswith("detector_auc_")))
    # Files first (above): a tracking failure below loses nothing.
    if args.run.is_file():
        # Closed FINISHED, or FAILED/KILLED on an error: the model's run is never left RUNNING.
        with Tracker.reopen(params.mlflow, args.run).closing() as tracker:
            tracker.log_summary(detect_summary(m))  # a few metrics, counts as tags, the table
            for path in (args.metrics, args.roc, args.plots / "roc.png"):
                tracker.log_artifact(path, "detect")
            tracker.tag_model_version({k: f"{m[k]:.4g}" for k in
                                       ("detector_auc", "detector_eer", "detector_tpr_at_1fpr")})


if __name__ == "__main__":
    run_cli(main)
