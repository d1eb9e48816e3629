"""Guard against silent quality regressions: a briefly trained G (the `digits_gan` fixture, the
real worker loop) must beat the same G untrained by a clear margin, measured the way the
evaluate stage measures it (FeatureNet features, `space_metrics`: FID, KID, precision/recall
beside the real-vs-real floor).

Margins from what this test measured with the fixture trained from seeds 0-3: trained FID
22-38 vs 365 untrained (ratio <= 0.11), KID ratio <= 0.04, recall 0.44-0.57 vs 0.00; the
real-vs-real floor is FID 2.2, recall 0.93; a G collapsed to 10 of its images scores FID 75-90
(ratio >= 0.2), recall 0.00. So a loop that stops learning, a G that collapses, or a broken
metric fails. Precision is not guarded: an untrained G's near-constant output can land inside
the real manifold (precision 1.0 on 1 seed of 6 in an earlier sweep), and a collapsed G keeps
0.4-0.6; recall carries the check.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.metrics.evaluate import real_subsets, space_metrics
from pipeline.metrics.featurenet import save_featurenet, train_featurenet
from pipeline.metrics.features import domain_extractor
from pipeline.metrics.registry import MetricOptions, metric_key

torch.set_num_threads(1)
N = 500
VALUES = ("fid", "kid_mean", "precision", "recall")


def test_trained_generator_clearly_beats_an_untrained_one(digits_gan, tmp_path) -> None:
    rows = digits_gan.train_rows
    train, labels = digits_gan.images[rows], digits_gan.labels[rows]
    held_out = (digits_gan.images[:rows.start], digits_gan.labels[:rows.start])
    featurenet, history = train_featurenet((train, labels), held_out, 10, width=8, epochs=3,
                                           batch_size=64, lr=3e-3, seed=0, log=lambda _: None)
    assert history[-1]["val_accuracy"] > 0.8  # a feature space that knows digits
    save_featurenet(tmp_path / "fn.pt", featurenet, {"width": 8}, train.shape[1:],
                    history[-1]["val_accuracy"])
    ex = domain_extractor(tmp_path / "fn.pt", "cpu")
    # As the evaluate stage: reference and floor are disjoint real sets of G's training data.
    reference, floor, _ = real_subsets(train, None, N, 0, "digits")
    opts = MetricOptions(kid_subsets=10, kid_subset_size=100, seed=0)

    def quality(fakes: np.ndarray) -> dict[str, float]:
        m = space_metrics(ex, reference, floor, fakes, opts, 500, cache_dir=None)
        return {**{v: m[metric_key(v, "domain", N)] for v in VALUES},
                **{f"floor_{v}": m[metric_key(v, "domain", N, True)] for v in VALUES}}

    fakes = digits_gan.fakes(N, seed=1)
    trained = quality(fakes)
    untrained = quality(digits_gan.fakes(N, seed=1, trained=False))
    report = f"trained {trained}\nuntrained {untrained}"
    assert trained["fid"] < 0.15 * untrained["fid"], report
    assert trained["kid_mean"] < 0.1 * untrained["kid_mean"], report
    assert trained["recall"] > untrained["recall"] + 0.3, report
    assert trained["floor_fid"] < trained["fid"], report  # fakes are not copies of the reference

    # The recall margin catches mode collapse: a G that only draws 10 images covers no real.
    collapsed = quality(np.repeat(fakes[:10], N // 10, axis=0))
    assert collapsed["recall"] < trained["recall"] - 0.3, f"collapsed {collapsed}\n{report}"
