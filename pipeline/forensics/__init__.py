"""Forensics beyond one forger: detectors judged on forger families they never saw, attribution
to a family, and robustness to the processing images meet on the way (issue 13).

    from pipeline.forensics import Split, CrossgenConfig, run_crossgen
    result = run_crossgen(real, {"dcgan": Split(...), "vae": Split(...)}, CrossgenConfig())

Modules, one job each: `perturbations` (JPEG, blur, down-up resize), `probe` (the
frozen-feature probe: pixel-value histogram, FeatureNet and spectrum features + a logistic
regression), `crossgen` (the matrix, leave-one-out, attribution and robustness tables), `data`
(the stage's image sets), `plots` (their heat maps and curves), `summary` (what the stage's
MLflow run shows). The CNN detectors, their Blur+JPEG training and the scores (the calibrated
threshold too) are `pipeline.detect`'s. The DVC stage is `stages/crossgen.py`.
"""

from pipeline.detect.train import TrainSpec, train_attributor, train_detector
from pipeline.forensics.crossgen import CrossgenConfig, Split, robustness_table, run_crossgen

__all__ = ["CrossgenConfig", "Split", "TrainSpec", "robustness_table", "run_crossgen",
           "train_attributor", "train_detector"]
