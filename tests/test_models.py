"""DCGAN shapes, init statistics and checkpoint round-trips (fast, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.models import (
    Discriminator,
    Generator,
    build_models,
    load_checkpoint,
    load_discriminator,
    load_generator,
    make_checkpoint,
    save_checkpoint,
)
from pipeline.models.dcgan import ConditionalBatchNorm2d, LatentProjection

CFG = {"latent_dim": 12, "g_features": 8, "d_features": 8, "conditional": False, "embed_dim": 4}


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("conditional", "d_conditioning"),
                         [(False, "plane"), (True, "plane"), (True, "projection")])
def test_shapes_and_ranges(size: int, channels: int, conditional: bool,
                           d_conditioning: str) -> None:
    G, D = build_models({**CFG, "conditional": conditional, "d_conditioning": d_conditioning},
                        (channels, size, size), 10)
    labels = torch.tensor([0, 3, 9]) if conditional else None
    fake = G(torch.randn(3, 12), labels)
    assert fake.shape == (3, channels, size, size)
    assert fake.min() >= -1 and fake.max() <= 1  # tanh
    logits = D(fake, labels)
    assert logits.shape == (3,)
    # Logits, not probabilities: an input far from anything seen gives values outside [0, 1].
    assert not isinstance(D.net[-1], torch.nn.Sigmoid)


@pytest.mark.parametrize("d_conditioning", ["plane", "projection"])
def test_conditional_models_need_labels(d_conditioning: str) -> None:
    G, D = build_models({**CFG, "conditional": True, "d_conditioning": d_conditioning},
                        (1, 28, 28), 10)
    with pytest.raises(ValueError, match="labels"):
        G(torch.randn(2, 12))
    with pytest.raises(ValueError, match="labels"):
        D(torch.zeros(2, 1, 28, 28))


@pytest.mark.parametrize("d_norm", ["batch", "spectral", "layer"])
def test_a_projection_discriminator_adds_the_class_row_to_its_linear_head(d_norm: str) -> None:
    """logit(x, y) = <w, h(x)> + <E[y], h(x)> (Miyato & Koyama 2018), h the head's input: the
    class-free part is the head alone, and two classes differ by exactly <E[a] - E[b], h>."""
    torch.manual_seed(0)
    _, D = build_models({**CFG, "conditional": True, "d_conditioning": "projection",
                         "d_norm": d_norm}, (1, 28, 28), 10)
    D.eval()
    x = torch.randn(5, 1, 28, 28)
    a, b = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([9, 8, 7, 6, 5])
    with torch.no_grad():
        h = D.net[:-1](x).flatten(1)  # (5, 8 * 2 * 7 * 7)
        head = D.net[-1](D.net[:-1](x)).flatten()
        E = D.project.weight  # the spectral-normalised rows when d_norm is spectral
        torch.testing.assert_close(D(x, a), head + (E[a] * h).sum(1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(D(x, a) - D(x, b), ((E[a] - E[b]) * h).sum(1),
                                   rtol=1e-5, atol=1e-6)
    assert D.embed is None and D.net[0].in_channels == 1  # no label plane on the input
    init = (D.project.parametrizations.weight.original if d_norm == "spectral"
            else D.project.weight)  # the DCGAN init sits behind spectral normalisation
    assert abs(init.std().item() - 0.02) < 4e-3


def test_a_channels_last_projection_discriminator_keeps_its_layout_in_the_backward() -> None:
    """In channels_last, the projection D gives the NCHW model's logits, and the gradient that
    reaches the head's input keeps h's layout: a gradient in the other layout makes the
    elementwise backward ops after it (LeakyReLU's, the sum with the head's) ~25x slower."""
    torch.manual_seed(0)
    _, D = build_models({**CFG, "conditional": True, "d_conditioning": "projection"},
                        (1, 28, 28), 10)
    D_cl = copy.deepcopy(D).to(memory_format=torch.channels_last)
    x, y = torch.randn(6, 1, 28, 28), torch.arange(6)
    grads: list[torch.Tensor] = []

    def keep_grad(module: torch.nn.Module, args: object, h: torch.Tensor) -> None:
        h.register_hook(grads.append)  # the head's input h: its gradient, as it arrives

    D_cl.net[-2].register_forward_hook(keep_grad)
    logits = D_cl(x.contiguous(memory_format=torch.channels_last), y)
    torch.testing.assert_close(logits, D(x, y), rtol=1e-5, atol=1e-6)
    logits.sum().backward()
    (grad,) = grads
    assert not grad.is_contiguous() and grad.is_contiguous(memory_format=torch.channels_last)


def test_unsupported_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="image_size"):
        Generator(10, 8, 1, 48)


def test_weights_init_statistics() -> None:
    torch.manual_seed(0)
    G, D = build_models({**CFG, "g_features": 64, "d_features": 64}, (1, 64, 64), 10)
    convs = [m.weight for m in [*G.modules(), *D.modules()]
             if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    w = torch.cat([c.flatten() for c in convs])
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    bns = [m for m in [*G.modules(), *D.modules()] if isinstance(m, torch.nn.BatchNorm2d)]
    gamma = torch.cat([b.weight.flatten() for b in bns])
    assert abs(gamma.mean().item() - 1) < 5e-3 and abs(gamma.std().item() - 0.02) < 5e-3
    assert all((b.bias == 0).all() for b in bns)


# A config without g_conditioning is a checkpoint from before the key: it loads as "input".
@pytest.mark.parametrize("g_conditioning", [None, "batchnorm"])
def test_checkpoint_round_trip_weights_only(tmp_path, g_conditioning: str | None) -> None:
    cfg = {**CFG, "conditional": True,
           **({"g_conditioning": g_conditioning} if g_conditioning else {})}
    G, D = build_models(cfg, (3, 32, 32), 5)
    opt = torch.optim.Adam(G.parameters())
    G(torch.randn(4, 12), torch.arange(4)).mean().backward()
    opt.step()
    ckpt = make_checkpoint(model_config=cfg, image_shape=(3, 32, 32), num_classes=5,
                           class_names=list("abcde"), epoch=3, step=42, generator=G,
                           discriminator=D, opt_g=opt, rng_torch=torch.get_rng_state(),
                           history=[{"epoch": 1, "loss_d": 1.0}])
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, ckpt)
    assert list(tmp_path.iterdir()) == [path]  # atomic: no temp file left behind
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["epoch"] == 3 and raw["step"] == 42 and raw["history"][0]["loss_d"] == 1.0
    assert "state" in load_checkpoint(path)["opt_g"]

    G2, meta = load_generator(path)
    D2, _ = load_discriminator(path)
    assert isinstance(G2, Generator) and isinstance(D2, Discriminator)
    assert meta["image_shape"] == [3, 32, 32] and meta["class_names"] == list("abcde")
    assert meta["model_config"]["latent_dim"] == 12 and meta["epoch"] == 3
    cbn = [m for m in G2.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert len(cbn) == (3 if g_conditioning else 0)  # 32 px: 4 -> 8 -> 16, three BatchNorms
    assert all(m.gain.weight.abs().sum() > 0 for m in cbn)  # trained class gains came back
    G.eval()
    z, y = torch.randn(2, 12), torch.tensor([1, 4])
    torch.testing.assert_close(G2(z, y), G(z, y))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    D.eval()
    torch.testing.assert_close(D2(x, y), D(x, y))


def test_bad_checkpoints_are_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_generator(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_generator(tmp_path / "junk.pt")
    G, _ = build_models(CFG, (1, 28, 28), 10)
    save_checkpoint(tmp_path / "g.pt", make_checkpoint(model_config=CFG, image_shape=(1, 28, 28),
                                                       num_classes=10, generator=G))
    with pytest.raises(UserError, match="no discriminator"):
        load_discriminator(tmp_path / "g.pt")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bias", [False, True])
def test_the_latent_projection_is_its_transposed_conv_as_one_product(layout, bias) -> None:
    torch.manual_seed(0)
    layer = LatentProjection(12, 8, 7, bias=bias).to(memory_format=layout)
    if bias:
        nn.init.normal_(layer.bias)
    conv = nn.ConvTranspose2d(12, 8, 7, 1, 0, bias=bias).to(memory_format=layout)
    conv.load_state_dict(layer.state_dict())  # the same parameters under the same names
    x = torch.randn(5, 12, 1, 1, requires_grad=True)
    out, ref = layer(x), conv(x)  # (5, 8, 7, 7)
    torch.testing.assert_close(out, ref)
    assert out.is_contiguous(memory_format=layout)  # in the weight's layout, as the conv's
    grad = torch.randn_like(ref)
    for ours, theirs in zip(torch.autograd.grad(out, [x, *layer.parameters()], grad),
                            torch.autograd.grad(ref, [x, *conv.parameters()], grad), strict=True):
        torch.testing.assert_close(ours, theirs)
    wider = torch.randn(2, 12, 3, 3)  # not 1x1: the transposed conv itself
    torch.testing.assert_close(layer(wider), conv(wider))


def test_a_generator_names_its_bad_upsampling_or_conditioning() -> None:
    with pytest.raises(ValueError, match="upsample must be one of .*'bilinear'"):
        Generator(8, 8, 1, 28, upsample="bilinear")
    with pytest.raises(ValueError, match="conditioning must be input or batchnorm"):
        Generator(8, 8, 1, 28, num_classes=10, conditioning="plane")
    with pytest.raises(ValueError, match="upsample must be one of"):
        build_models({**CFG, "arch": "vae", "g_upsample": "bilinear"}, (1, 28, 28), 10)
