"""Training techniques as params (issue 11): DiffAugment, losses, R1, EMA, G/D variants.

Each is checked against a closed form or an independent computation, then all of them
together through the in-process training loop (resume included).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import ModelConfig, TrainConfig
from pipeline.models import build_models, load_checkpoint
from pipeline.models.dcgan import ConditionalBatchNorm2d
from pipeline.train.augment import color, cutout, diff_augment, translation
from pipeline.train.ema import GeneratorEMA
from pipeline.train.loop import STATE_FILE, LocalHooks, WorkerConfig, train_worker
from pipeline.train.objective import d_loss, g_loss, mode_seeking_loss, r1_penalty
from pipeline.train.steps import GanStep


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- DiffAugment --------------------------------------------------------------------------------
def test_translation_is_an_integer_shift_with_zero_fill() -> None:
    x = torch.rand(64, 2, 16, 16) + 1  # strictly positive: shifted-in zeros are visible
    out = translation(x, gen(), ratio=0.125)
    for i in range(64):
        # Find the shift that reproduces the output exactly: exactly one does, within +-2 px.
        hits = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.zeros_like(x[i])
                ys, xs = slice(max(0, -dy), 16 - max(0, dy)), slice(max(0, -dx), 16 - max(0, dx))
                ysrc = slice(max(0, dy), 16 - max(0, -dy))
                xsrc = slice(max(0, dx), 16 - max(0, -dx))
                ref[:, ys, xs] = x[i][:, ysrc, xsrc]
                hits += [(dy, dx)] if torch.equal(out[i], ref) else []
        assert len(hits) == 1, (i, hits)
    assert translation(x, gen(3)).equal(translation(x, gen(3)))  # reproducible


def test_cutout_zeroes_one_square_of_half_the_side() -> None:
    out = cutout(torch.ones(500, 1, 16, 16), gen())
    zeros = (out == 0).squeeze(1)  # (B, H, W)
    frac = zeros.float().mean(dim=(1, 2))
    assert frac.max() == pytest.approx(0.25)  # a whole 8x8 square when it fits
    assert frac.min() > 0 and frac.mean() > 0.12  # clipped at the border, never absent
    for mask in zeros[:50]:  # the zeroed region is one axis-aligned rectangle
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert int(mask.sum()) == len(rows) * len(cols)


def test_color_brightness_and_contrast_bounds() -> None:
    x = torch.linspace(-1, 1, 28 * 28).view(1, 1, 28, 28).repeat(400, 1, 1, 1)
    out = color(x, gen())
    shift = out.mean(dim=(1, 2, 3)) - x.mean()  # contrast keeps the mean: brightness only
    assert shift.abs().max() <= 0.5 + 1e-5 and shift.std() > 0.2
    scale = out.std(dim=(1, 2, 3)) / x.std()
    assert scale.min() >= 0.5 - 1e-3 and scale.max() <= 1.5 + 1e-3  # float32 std


def test_diffaugment_keeps_shape_and_gradients() -> None:
    x = torch.randn(8, 3, 28, 28, requires_grad=True)
    out = diff_augment(x, ("color", "translation", "cutout"), gen())
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert diff_augment(x, (), gen()) is x


# -- losses and R1 ------------------------------------------------------------------------------
def test_ns_loss_is_bce_with_logits_and_hinge_closed_form() -> None:
    r, f = torch.randn(32), torch.randn(32)
    bce = nn.BCEWithLogitsLoss()
    assert d_loss("ns", r, f).item() == pytest.approx(
        (bce(r, torch.ones(32)) + bce(f, torch.zeros(32))).item(), rel=1e-6)
    assert g_loss("ns", f).item() == pytest.approx(bce(f, torch.ones(32)).item(), rel=1e-6)
    r = torch.tensor([2.0, 0.5, -1.0])
    f = torch.tensor([-2.0, 0.0, 3.0])
    assert d_loss("hinge", r, f).item() == pytest.approx((0 + 0.5 + 2) / 3 + (0 + 1 + 4) / 3)
    assert g_loss("hinge", f).item() == pytest.approx(-1 / 3)


def test_r1_of_a_linear_critic_is_gamma_half_norm_squared() -> None:
    w = torch.randn(1, 1, 4, 4)
    real = torch.randn(6, 1, 4, 4, requires_grad=True)
    logits = (real * w).flatten(1).sum(1)  # D(x) = <w, x>: grad = w for every image
    assert r1_penalty(logits, real, gamma=10.0).item() == pytest.approx(
        5.0 * float(w.pow(2).sum()), rel=1e-5)


def test_mode_seeking_is_the_inverse_image_gap_per_latent_gap() -> None:
    z = torch.zeros(5, 4)
    z[2:4] = 0.5  # pairs (0, 2) and (1, 3): |z1 - z2| = 0.5 everywhere; row 4 is left out
    images = torch.zeros(5, 1, 3, 3)
    images[2:4] = 0.25
    images[4] = 100.0  # the odd row: not in any pair
    assert mode_seeking_loss(images, z).item() == pytest.approx(1 / (0.25 / 0.5 + 1e-5))
    with pytest.raises(ValueError, match="at least 2"):
        mode_seeking_loss(images[:1], z[:1])


class _LabelSpy(nn.Module):
    """A conditional G that records the labels of every call."""

    def __init__(self, G: nn.Module) -> None:
        super().__init__()
        self.G, self.num_classes, self.seen = G, G.num_classes, []

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.seen.append(labels.clone())
        return self.G(z, labels)


def _pair_gap(weight: float, steps: int = 6) -> tuple[float, list[torch.Tensor]]:
    """Mean |G(z1, c) - G(z2, c)| of a tiny conditional G after `steps` GAN steps with
    mode seeking at `weight` (same init, data and noise for every weight), and its labels."""
    torch.manual_seed(0)
    G, D = build_models({"latent_dim": 8, "g_features": 8, "d_features": 8,
                         "conditional": True, "d_conditioning": "projection"}, (1, 28, 28), 10)
    spy = _LabelSpy(G)
    step = GanStep(spy, D, torch.optim.Adam(G.parameters(), 1e-2, betas=(0.5, 0.999)),
                   torch.optim.Adam(D.parameters(), 1e-3, betas=(0.5, 0.999)), loss="ns",
                   latent_dim=8, noise=gen(1), device=torch.device("cpu"), num_classes=10,
                   mode_seeking=weight)
    real = torch.rand(32, 1, 28, 28, generator=gen(2)) * 2 - 1
    labels = torch.randint(0, 10, (32,), generator=gen(3))
    for _ in range(steps):
        step(real, labels)
    z, c = torch.randn(2, 256, 8, generator=gen(4)), torch.randint(0, 10, (256,), generator=gen(5))
    with torch.no_grad():
        return float((G(z[0], c) - G(z[1], c)).abs().mean()), spy.seen


def test_mode_seeking_pairs_one_class_and_spreads_g() -> None:
    plain, plain_labels = _pair_gap(0.0)
    seeking, labels = _pair_gap(10.0)
    for seen in labels:  # every fake batch: rows i and i + 16 share a class
        assert torch.equal(seen[:16], seen[16:])
    assert not all(torch.equal(seen[:16], seen[16:]) for seen in plain_labels)
    assert seeking > 1.5 * plain, (seeking, plain)  # distinct z, more distinct images



def test_g_s_phase_computes_no_gradient_of_d_and_leaves_d_trainable() -> None:
    """D is a fixed function in G's phase: each D parameter gets one gradient per step (its
    own phase's), and trains again in the next step."""
    torch.manual_seed(0)
    G, D = build_models({"latent_dim": 8, "g_features": 8, "d_features": 8,
                         "conditional": True, "d_conditioning": "projection"}, (1, 28, 28), 10)
    computed: dict[str, int] = {}
    for name, p in D.named_parameters():
        p.register_hook(lambda g, name=name: computed.update({name: computed.get(name, 0) + 1}))
    step = GanStep(G, D, torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters()),
                   loss="ns", latent_dim=8, noise=gen(1), device=torch.device("cpu"),
                   num_classes=10)
    real = torch.rand(16, 1, 28, 28, generator=gen(2)) * 2 - 1
    labels = torch.randint(0, 10, (16,), generator=gen(3))
    g_before = [p.detach().clone() for p in G.parameters()]
    for steps in (1, 2):
        step(real, labels, g_step=True)
        assert computed == {name: steps for name, _ in D.named_parameters()}
        assert all(p.requires_grad for p in D.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(g_before, G.parameters(), strict=True))

# -- EMA ------------------------------------------------------------------------------------------
def test_ema_follows_the_formula_with_warm_up() -> None:
    model = nn.Linear(3, 2)
    ema = GeneratorEMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # step 1: decay = min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.model.weight, d * start + (1 - d) * model.weight)
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.model.weight, model.weight, atol=1e-6)  # converges to a constant G
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_recomputed_batchnorm_matches_the_inputs_statistics() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = GeneratorEMA(model, decay=0.99)
    batches = [torch.randn(64, 4) * 3 + 1 for _ in range(5)]
    it = iter(batches)
    ema.recompute_batchnorm(lambda: (next(it),), batches=5)
    with torch.no_grad():
        h = torch.cat([ema.model[0](b) for b in batches])  # (320, 3)
    bn = ema.model[1]
    assert torch.allclose(bn.running_mean, h.mean(0), atol=1e-5)
    # Cumulative average of the per-batch unbiased variances (what momentum=None keeps).
    per_batch = torch.stack([ema.model[0](b).detach().var(0, unbiased=True) for b in batches])
    assert torch.allclose(bn.running_var, per_batch.mean(0), rtol=1e-4)
    assert bn.momentum == 0.1 and not ema.model.training


# -- model variants -------------------------------------------------------------------------------
@pytest.mark.parametrize("upsample", ["deconv", "resize"])
@pytest.mark.parametrize("norm", ["batch", "spectral", "none"])
def test_model_variants(upsample: str, norm: str) -> None:
    torch.manual_seed(0)
    G, D = build_models({"latent_dim": 8, "g_features": 8, "d_features": 8,
                         "g_upsample": upsample, "d_norm": norm}, (1, 28, 28), 10)
    x = G(torch.randn(5, 8))
    assert x.shape == (5, 1, 28, 28) and x.abs().max() <= 1 and D(x).shape == (5,)
    kinds = {type(m).__name__ for m in D.modules()}
    assert ("BatchNorm2d" in kinds) == (norm == "batch")
    deconvs = sum(isinstance(m, nn.ConvTranspose2d) for m in G.modules())
    assert deconvs == (3 if upsample == "deconv" else 1)  # 1x1 -> 7x7 projection, then 2 x2s
    if norm == "spectral":
        for _ in range(30):  # each training forward runs one power iteration
            D(x.detach())
        conv = next(m for m in D.modules() if isinstance(m, nn.Conv2d))
        sigma = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, rel=0.02)  # largest singular value 1
        assert conv.parametrizations.weight.original.std().item() == pytest.approx(0.02, rel=0.2)


# -- conditional BatchNorm in G (model.g_conditioning: batchnorm) ----------------------------------
def test_conditional_batchnorm_is_batchnorm_times_one_plus_gain_plus_bias() -> None:
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(3, num_classes=4)
    x, y = torch.randn(6, 3, 5, 5) * 2 + 1, torch.tensor([0, 1, 2, 3, 0, 1])
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    w, b = cbn.norm.weight[None, :, None, None], cbn.norm.bias[None, :, None, None]
    normed = (x - mean) / torch.sqrt(var + cbn.norm.eps) * w + b  # BatchNorm, train mode
    torch.testing.assert_close(cbn(x, y), normed)  # gain and bias start at 0: plain BatchNorm
    with torch.no_grad():
        cbn.gain.weight.copy_(torch.randn(4, 3))
        cbn.bias.weight.copy_(torch.randn(4, 3))
    gain, bias = cbn.gain.weight[y][:, :, None, None], cbn.bias.weight[y][:, :, None, None]
    torch.testing.assert_close(cbn(x, y), normed * (1 + gain) + bias)
    cl = cbn(x.contiguous(memory_format=torch.channels_last), y)
    assert cl.is_contiguous(memory_format=torch.channels_last)  # no layout switch in G
    torch.testing.assert_close(cl, normed * (1 + gain) + bias)


def test_a_batchnorm_conditioned_generator_is_modulated_per_class() -> None:
    """Every BatchNorm of G becomes a ConditionalBatchNorm2d (only when G is conditional); its
    class gains reach G's output, and they train."""
    cfg = {"latent_dim": 8, "g_features": 8, "d_features": 8, "conditional": True,
           "embed_dim": 4, "g_conditioning": "batchnorm"}
    torch.manual_seed(0)
    G, _ = build_models(cfg, (1, 28, 28), 10)
    norms = [m for m in G.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert len(norms) == 2 and not any(isinstance(m, nn.BatchNorm2d) for m in G.net)
    unconditional, _ = build_models({**cfg, "conditional": False}, (1, 28, 28), 10)
    assert not any(isinstance(m, ConditionalBatchNorm2d) for m in unconditional.modules())
    G.eval()
    z, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    before = G(z, y)
    with torch.no_grad():
        norms[0].bias.weight[2] += 1.0  # class 2's bias of the first BatchNorm
    after = G(z, y)
    assert torch.equal(before[[0, 1, 3]], after[[0, 1, 3]]) and not torch.equal(before[2],
                                                                                  after[2])
    G.train()
    G(z, y).sum().backward()
    assert norms[1].gain.weight.grad[y].abs().sum() > 0  # the labels' rows get gradients
    assert norms[1].gain.weight.grad[4:].abs().sum() == 0  # the others none
    ema = GeneratorEMA(G, decay=0.99)  # the EMA re-estimates the statistics inside them
    ema.recompute_batchnorm(lambda: (torch.randn(64, 8), torch.randint(0, 10, (64,))), 2)
    assert not torch.equal(ema.model.net[1].norm.running_mean, norms[0].norm.running_mean)


# -- all together through the loop ---------------------------------------------------------------
@pytest.fixture(scope="module")
def digits28() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:, None].astype(np.float32) / 16.0)
    x = torch.nn.functional.interpolate(x, size=28, mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return images, d.target.astype(np.int64), [str(i) for i in range(10)]


def _cfg(epochs: int, conditional: bool = False) -> WorkerConfig:
    return WorkerConfig(
        model=ModelConfig(latent_dim=16, g_features=8, d_features=8, g_upsample="resize",
                          d_norm="spectral", conditional=conditional, embed_dim=4,
                          g_conditioning="batchnorm"),
        train=TrainConfig(epochs=epochs, batch_size=32, max_steps_per_epoch=4, grid_size=16,
                          loss="hinge", r1_gamma=1.0, ema_decay=0.99, mode_seeking=1.0,
                          diffaugment=["color", "translation", "cutout"]),
        seed=0)


@pytest.mark.parametrize("conditional", [False, True])
def test_every_technique_trains_and_resumes_exactly(tmp_path: Path, digits28,
                                                    conditional: bool) -> None:
    straight = LocalHooks(tmp_path / "straight")
    train_worker(_cfg(2, conditional), *digits28, straight)
    resumed = LocalHooks(tmp_path / "resumed")
    train_worker(_cfg(1, conditional), *digits28, resumed)
    train_worker(_cfg(2, conditional), *digits28, resumed)
    assert [r["epoch"] for r in resumed.reports] == [1, 2]
    assert resumed.reports[-1]["loss_d"] == straight.reports[-1]["loss_d"]
    a = load_checkpoint(tmp_path / "straight" / "epoch_002" / STATE_FILE)
    b = load_checkpoint(tmp_path / "resumed" / "epoch_002" / STATE_FILE)
    assert a["generator_ema"]["updates"] == 8 == b["generator_ema"]["updates"]
    for key, value in a["generator_ema"]["model"].items():  # the EMA resumed exactly too
        assert torch.equal(value, b["generator_ema"]["model"][key]), key
    # The EMA is a different model from the raw G (averaged, own BN statistics).
    stat = "net.1.norm.running_mean" if conditional else "net.1.running_mean"
    assert not torch.equal(a["generator_ema"]["model"][stat], a["generator"][stat])
