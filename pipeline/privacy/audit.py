"""Membership-inference audit of one trained zoo family (the audit stage's core).

Queries: `num_members` images the family's G learned from (drawn from exactly its
`train.num_images` subset, `pipeline.train.data.member_indices`) and as many held-out test
images. Attacks, each scoring "member" higher:

- `white_box_d`: the family's discriminator logit on the query (LOGAN, Hayes et al. 2019);
- `black_box_pixel` / `black_box_feature`: minus the distance from the query to its nearest
  generated sample, in pixel space / in the domain FeatureNet's feature space (GAN-Leaks full
  black-box, Chen et al. 2020);
- `<attack>_calibrated`: the same score minus the reference model's (a family trained on the
  disjoint val split): what the query's "typicality" alone explains is subtracted.

Each attack is reported by `attacks.report` (AUC, bootstrap 95 % CI, TPR at 1 % / 0.1 % FPR).
The memorisation view pairs generated samples with their nearest training and nearest test
image, from pools of equal size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.detect.baselines import discriminator_logits
from pipeline.errors import UserError
from pipeline.generate import sample, split_seed
from pipeline.privacy.attacks import nearest_distance, report

Features = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, C) -> (N, D) float


@dataclass(frozen=True)
class Queries:
    """Members then non-members: images uint8 (2N, H, W, C), labels (2N,), is_member (2N,)."""

    images: np.ndarray
    labels: np.ndarray
    is_member: np.ndarray


@dataclass(frozen=True)
class AuditedModel:
    """What the attacks read of one trained family: its samples and its D (None: a VAE)."""

    name: str
    generated: np.ndarray  # uint8 (num_generated, H, W, C)
    discriminator: torch.nn.Module | None
    conditional: bool  # D takes the query's class
    num_train_images: int  # how many images it learned from


def draw_queries(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 members_of: np.ndarray, n: int, seed: int) -> Queries:
    """`n` members drawn from `train[members_of]` and `n` non-members from `test`."""
    if n > len(members_of) or n > len(test[0]):
        raise UserError(f"privacy.num_members: {n} is more than the {len(members_of)} training "
                        f"images of the model or the {len(test[0])} test images")
    rng = np.random.default_rng(seed)
    m = np.sort(rng.choice(members_of, n, replace=False))
    t = np.sort(rng.choice(len(test[0]), n, replace=False))
    return Queries(np.concatenate([train[0][m], test[0][t]]),
                   np.concatenate([train[1][m], test[1][t]]).astype(np.int64),
                   np.r_[np.ones(n, bool), np.zeros(n, bool)])


def load_model(models_dir: Path, name: str, num_generated: int, seed: int, num_train: int,
               device: torch.device) -> AuditedModel:
    """Family `name`'s G sampled `num_generated` times (a noise stream of the audit's own) and
    its D, from `models_dir/<name>/`."""
    from pipeline.models import load_discriminator, load_generator

    path = models_dir / name
    G, meta = load_generator(path / "generator.pt", "cpu")
    generated, _ = sample(G, meta, num_generated, split_seed(seed, f"audit/{name}"),
                          desc=f"sample {name}")
    D, d_meta = load_discriminator(path / "discriminator.pt", device)
    conditional = bool(d_meta["model_config"].get("conditional")) if D is not None else False
    return AuditedModel(name, generated, D, conditional, num_train)


def discriminator_scores(model: AuditedModel, queries: Queries, batch_size: int = 500
                         ) -> np.ndarray:
    """D's logits on the queries (D in eval mode: BatchNorm with its running statistics)."""
    D = model.discriminator
    assert D is not None
    return discriminator_logits(D, queries.images,
                                queries.labels if model.conditional else None, batch_size,
                                next(D.parameters()).device)


def attack_scores(queries: Queries, target: AuditedModel, reference: AuditedModel | None,
                  features: Features) -> dict[str, np.ndarray]:
    """{attack name: score per query} (higher = more likely a member)."""
    query_feats = features(queries.images)

    def per_model(model: AuditedModel) -> dict[str, np.ndarray]:
        scores = {"black_box_pixel": -nearest_distance(queries.images, model.generated),
                  "black_box_feature": -nearest_distance(query_feats,
                                                         features(model.generated))}
        if model.discriminator is not None:
            scores = {"white_box_d": discriminator_scores(model, queries), **scores}
        return scores

    own = per_model(target)
    ref = per_model(reference) if reference is not None else {}
    out = {}
    for name, score in own.items():
        out[name] = score
        if name in ref:
            out[f"{name}_calibrated"] = score - ref[name]
    return out


def memorisation(generated: np.ndarray, train_pool: np.ndarray, test_pool: np.ndarray,
                 rows: int) -> tuple[dict[str, Any], tuple[np.ndarray, ...]]:
    """Each generated sample's nearest-neighbour distance (pixels) to the training pool and to
    the test pool, of equal sizes. A G that copies training images has samples much closer to
    a training image than to any test image (ratio well below 1); one that generalises has a
    ratio near 1. Returns (the summary, the grid's columns: the `rows` samples closest to a
    training image, their nearest training image, their nearest test image)."""
    if len(train_pool) != len(test_pool):
        raise ValueError("the training and test pools must have equal sizes")
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32)  # noqa: E731
    g, tr, te = flat(generated), flat(train_pool), flat(test_pool)
    d_train, d_test = nearest_distance(g, tr), nearest_distance(g, te)
    ratio = d_train / np.maximum(d_test, 1e-9)
    closest = np.argsort(d_train)[:rows]
    nn_train = [int(np.argmin(((tr - g[i]) ** 2).sum(1))) for i in closest]
    nn_test = [int(np.argmin(((te - g[i]) ** 2).sum(1))) for i in closest]
    return {
        "pool_size": len(train_pool),
        "median_nn_train": float(np.median(d_train)),
        "median_nn_test": float(np.median(d_test)),
        "median_ratio": float(np.median(ratio)),
        "fraction_closer_to_train": float((d_train < d_test).mean()),
        "closest": [{"nn_train": float(d_train[i]), "nn_test": float(d_test[i])}
                    for i in closest],
    }, (generated[closest], train_pool[nn_train], test_pool[nn_test])


def audit_family(queries: Queries, target: AuditedModel, reference: AuditedModel | None,
                 features: Features, bootstrap: int, seed: int
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(the family's audit table, the raw scores per attack for the ROC plot)."""
    scores = attack_scores(queries, target, reference, features)
    attacks = {name: report(s[queries.is_member], s[~queries.is_member], bootstrap, seed)
               for name, s in scores.items()}
    best = max(attacks, key=lambda k: (attacks[k]["tpr_at_1pct_fpr"], attacks[k]["auc"]))
    return {"num_train_images": target.num_train_images, "attacks": attacks,
            "best_attack": best, "best_auc": attacks[best]["auc"],
            "best_tpr_at_1pct_fpr": attacks[best]["tpr_at_1pct_fpr"]}, scores
