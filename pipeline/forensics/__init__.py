"""Forensics beyond one forger: detectors judged on forger families they never saw, attribution
to a family, and robustness to the processing images meet on the way (issue 13).

    from pipeline.forensics import Split, CrossgenConfig, run_crossgen
    result = run_crossgen(real, {"dcgan": Split(...), "vae": Split(...)}, CrossgenConfig())

Modules, one job each: `perturbations` (JPEG, blur, down-up resize), `scores` (the per-test-set
numbers, with a validation-calibrated threshold), `train` (a detector or attributor, optionally
with CNNDetection's blur+JPEG augmentation), `crossgen` (the matrix, leave-one-out, attribution
and robustness tables), `plots` (their heat maps and curves). No DVC stage calls them yet.
"""

from pipeline.forensics.crossgen import CrossgenConfig, Split, robustness_table, run_crossgen
from pipeline.forensics.train import TrainSpec, train_attributor, train_detector

__all__ = ["CrossgenConfig", "Split", "TrainSpec", "robustness_table", "run_crossgen",
           "train_attributor", "train_detector"]
