"""The audit stage's work: attack every audited family, run TSTR, draw the figures.

    result = run_audit(AuditInputs(data_dir, models_dir, featurenet, family_params), params,
                       device, plots_dir)   # -> metrics/privacy.json's content

`family_params(name)` is that zoo family's validated params (`load_params(family=name)`): its
seed and `train.num_images` say which training images were its members.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Params
from pipeline.data.arrays import Split, load_split
from pipeline.metrics.features import domain_extractor, extract
from pipeline.models import load_generator
from pipeline.privacy import plots as figures
from pipeline.privacy.audit import audit_family, draw_queries, load_model, memorisation
from pipeline.privacy.tstr import TstrSpec, trtr, tstr
from pipeline.train.data import member_indices


@dataclass(frozen=True)
class AuditInputs:
    data_dir: Path  # prepared train/val/test.npz
    models_dir: Path  # <family>/generator.pt, discriminator.pt
    featurenet: Path
    family_params: Callable[[str], Params]


def audit_families(inp: AuditInputs, params: Params, train: Split, test: Split,
                   device: torch.device, plots: Path) -> dict[str, Any]:
    """privacy.json's `families`: each audited family's table; its figures go into `plots`."""
    pc = params.privacy
    ex = domain_extractor(inp.featurenet, device)

    def features(images: np.ndarray) -> np.ndarray:
        return extract(images, ex, params.evaluate.batch_size)

    reference = None
    if pc.reference is not None:
        ref = inp.family_params(pc.reference)
        n_val = len(load_split(inp.data_dir / "val.npz").labels)
        reference = load_model(inp.models_dir, pc.reference, pc.num_generated, params.seed,
                               len(member_indices(n_val, ref.train.num_images, ref.seed)),
                               device)
    families: dict[str, Any] = {}
    for name in pc.families:
        fam = inp.family_params(name)
        members = member_indices(len(train.images), fam.train.num_images, fam.seed)
        # N per side: privacy.num_members, or all of a smaller training (or test) set.
        n = min(pc.num_members, len(members), len(test.images))
        queries = draw_queries((train.images, train.labels), (test.images, test.labels),
                               members, n, params.seed)
        target = load_model(inp.models_dir, name, pc.num_generated, params.seed, len(members),
                            device)
        table, scores = audit_family(queries, target, reference, features, pc.bootstrap,
                                     params.seed)
        table = {"num_members": n, "num_nonmembers": n, **table}
        rng = np.random.default_rng(params.seed)
        size = min(pc.pool_size, len(members), len(test.images))
        pool_train = train.images[rng.choice(members, size, replace=False)]
        pool_test = test.images[rng.choice(len(test.images), size, replace=False)]
        table["memorisation"], columns = memorisation(target.generated, pool_train, pool_test,
                                                      pc.grid_rows)
        families[name] = table
        figures.roc_plot(scores, queries.is_member,
                         f"Membership inference on {name} (n = {len(members)}, "
                         f"{n} + {n} queries)",
                         plots / f"roc_{name}.png")
        figures.memorisation_grid(columns, table["memorisation"]["closest"],
                                  f"{name}: samples closest to a training image",
                                  plots / f"memorisation_{name}.png")
        best = table["best_attack"]
        print(f"audit {name} (n = {len(members)}): best attack {best} AUC "
              f"{table['best_auc']:.3f}, TPR@1%FPR {table['best_tpr_at_1pct_fpr']:.3f}; "
              f"memorisation median ratio {table['memorisation']['median_ratio']:.3f}",
              flush=True)
    if len({f["num_train_images"] for f in families.values()}) > 1:
        figures.size_curve(families, plots / "size_curve.png")
    return families


def tstr_table(inp: AuditInputs, params: Params, train: Split, test: Split,
               device: torch.device) -> dict[str, Any]:
    """privacy.json's `tstr`: TRTR once, TSTR of each `privacy.tstr` family ({} if none)."""
    pc = params.privacy
    if not pc.tstr:
        return {}
    spec = TstrSpec.from_params(params, len(train.images))
    real_test = (test.images, test.labels)
    baseline = trtr((train.images, train.labels), real_test, len(train.class_names), spec,
                    device)
    out: dict[str, Any] = {"trtr_accuracy": baseline, "num_train": spec.num_train,
                           "num_test": len(test.images), "families": {}}
    for name in pc.tstr:
        G, meta = load_generator(inp.models_dir / name / "generator.pt", "cpu")
        acc = tstr(G, meta, real_test, spec, device, name)
        out["families"][name] = {"tstr_accuracy": acc, "tstr_over_trtr": acc / baseline}
        print(f"tstr {name}: {acc:.4f} (TRTR {baseline:.4f}, ratio {acc / baseline:.3f})",
              flush=True)
    return out


def run_audit(inp: AuditInputs, params: Params, device: torch.device, plots: Path
              ) -> dict[str, Any]:
    """metrics/privacy.json's content; figures written into `plots`."""
    train, test = load_split(inp.data_dir / "train.npz"), load_split(inp.data_dir / "test.npz")
    pc = params.privacy
    return {"num_members": pc.num_members, "num_nonmembers": pc.num_members,
            "num_generated": pc.num_generated, "reference": pc.reference,
            "families": audit_families(inp, params, train, test, device, plots),
            "tstr": tstr_table(inp, params, train, test, device)}
