"""The crossgen stage's image sets: real train/val/test (`data/prepared`) and each family's
detector sets (`data/generated/<family>/detector_{train,val,test}.npz`), as seeded subsets of the
sizes params.yaml `crossgen` asks for.

    real, fakes = load_crossgen_sets("data/prepared", "data/generated", ["dcgan", "vae"],
                                     params.crossgen, params.seed)

The sets are disjoint by construction (prepare's splits; one noise seed per generated split,
checked) and every subset is drawn without replacement. Smaller files are used whole.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.config import CrossgenConfig as CrossgenParams
from pipeline.data.arrays import load_split
from pipeline.detect.run import FAKE_SPLITS, load_family_fakes
from pipeline.forensics.crossgen import Split, take


def load_crossgen_sets(real_dir: str | os.PathLike[str], fake_root: str | os.PathLike[str],
                       families: list[str], cfg: CrossgenParams, seed: int
                       ) -> tuple[Split, dict[str, Split]]:
    """(real, {family: its fakes}), each split cut to cfg.num_train / num_val / num_test."""
    real_dir, fake_root = Path(real_dir), Path(fake_root)
    sizes = dict(zip(FAKE_SPLITS, (cfg.num_train, cfg.num_val, cfg.num_test), strict=True))
    rng = np.random.default_rng([seed, 11])
    real_full = {s: load_split(real_dir / f"{s}.npz").images for s in FAKE_SPLITS}
    real = Split(*(take(real_full[s], sizes[s], rng) for s in FAKE_SPLITS))
    shape = real.train.shape[1:]
    fakes = {}
    for name in families:
        sets = load_family_fakes(fake_root / name, shape)
        fakes[name] = Split(*(take(sets[s], sizes[s], rng) for s in FAKE_SPLITS))
    return real, fakes
