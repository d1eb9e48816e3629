"""The learning-rate schedule (pipeline/train/schedule.py) against its closed form."""

from __future__ import annotations

import pytest
import torch

from pipeline.train.schedule import LinearDecay


def adam(lr: float) -> torch.optim.Adam:
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=lr)


@pytest.mark.parametrize("start,total,factors", [
    (0.0, 4, [1, 0.75, 0.5, 0.25]),
    (0.5, 10, [1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2]),
    (0.25, 7, [1, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]),
    (0.29, 100, [1] * 30 + [(100 - s) / 71 for s in range(30, 100)]),  # 0.29 x 100 is 28.99...
])
def test_factor_is_one_then_linear_to_zero_after_the_last_step(start, total, factors) -> None:
    decay = LinearDecay([(adam(1.0), 1.0)], start, total)
    assert [decay.factor(s) for s in range(total)] == pytest.approx(factors)
    assert decay.factor(total) == 0.0


def test_apply_sets_each_optimizers_own_base_rate_even_after_load_state_dict() -> None:
    g, d = adam(1e-3), adam(2e-3)
    decay = LinearDecay([(g, 1e-3), (d, 2e-3)], start=0.0, total_steps=4)
    decay.apply(2)
    assert g.param_groups[0]["lr"] == pytest.approx(0.5e-3)
    assert d.param_groups[0]["lr"] == pytest.approx(1e-3)
    # A resume loads a checkpointed state (its groups are new dicts) with a decayed rate.
    saved = g.state_dict()
    g.load_state_dict(saved)
    decay.apply(3)
    assert g.param_groups[0]["lr"] == pytest.approx(0.25e-3)


@pytest.mark.parametrize("start,total", [(1.0, 10), (-0.1, 10), (0.5, 0)])
def test_bad_arguments_are_refused(start, total) -> None:
    with pytest.raises(ValueError):
        LinearDecay([(adam(1.0), 1.0)], start, total)
