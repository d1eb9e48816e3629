"""One training step of each kind of forger: `GanStep` (dcgan, sngan, wgan-gp) and `VaeStep`.

`run_epoch` (loop.py) draws the batches and calls one step per batch; a step updates the
models and returns its statistics (4,) on the device, in `stats.STAT_NAMES` order
(loss_d, loss_g, d_real, d_fake), which `RunningStats` reduces without a host sync per step:

- GAN: D's loss (without R1 / gradient penalty), G's loss, and D's mean output on real and on
  fake images: sigmoid(logit), i.e. D(x) and D(G(z)), for ns and hinge; the raw critic score
  for wgan-gp (so -loss_d = d_real - d_fake is the critic's Wasserstein estimate).
- DP (`train.dp`, a `PrivateDiscriminator` given): D's loss is over real and fake rows of ONE
  forward, and D(x) of an empty Poisson batch counts as 0 (pipeline/privacy/dp.py).
- VAE: loss_d = the KL term, loss_g = the whole negative ELBO (reconstruction + KL), nats per
  image; d_real and d_fake do not exist (0 here; `train_worker` reports them as None).

    step = GanStep(G, D, opt_g, opt_d, loss="ns", latent_dim=100, noise=gen, device=dev)
    values = step(real, labels, g_step=True)          # (4,) on the device
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline.models import unwrap
from pipeline.train.augment import diff_augment
from pipeline.train.ema import GeneratorEMA
from pipeline.train.objective import (
    d_loss,
    d_loss_terms,
    g_loss,
    gradient_penalty,
    mode_seeking_loss,
    r1_penalty,
    vae_kl,
    vae_reconstruction,
)

if TYPE_CHECKING:  # Opacus is imported only when DP is on
    from pipeline.privacy.dp import PrivateDiscriminator


def _no_sync(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """DDP's no_sync (skip the gradient all-reduce) or nothing for a bare module."""
    return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """`model` as a fixed function: its trainable parameters need no gradient inside (a
    backward through it computes its input's gradient only), and need one again after."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":  # valid on CPU too (slow there; the GPU profile's choice)
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class GanStep:
    """D phase, then (on a G step) G phase. With `n_critic` > 1 the caller makes every
    n_critic-th batch a G step; the others update D (the critic) alone. With `dp`, D's phase
    is DP-SGD (`_private_d_phase`), each step draws `dp.batch_size` fakes whatever the real
    batch's size, and G's phase sees D frozen (`dp.frozen`)."""

    def __init__(self, G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer, *, loss: str, latent_dim: int,
                 noise: torch.Generator, device: torch.device, num_classes: int = 0,
                 precision: str = "fp32", r1_gamma: float = 0.0,
                 diffaugment: Sequence[str] = (), ema: GeneratorEMA | None = None,
                 mode_seeking: float = 0.0, dp: PrivateDiscriminator | None = None) -> None:
        self.G, self.D, self.opt_g, self.opt_d, self.dp = G, D, opt_g, opt_d, dp
        self.loss, self.latent_dim, self.noise, self.device = loss, latent_dim, noise, device
        self.num_classes = num_classes
        self.conditional = num_classes > 0 and getattr(unwrap(G), "num_classes", 0) > 0
        self.precision, self.r1_gamma, self.diffaugment, self.ema = (
            precision, r1_gamma, diffaugment, ema)
        self.mode_seeking = mode_seeking
        self.loss_g: torch.Tensor | None = None  # the last G step's, logged on critic steps

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.diffaugment, self.noise) if self.diffaugment else x

    def __call__(self, real: torch.Tensor, labels: torch.Tensor,
                 g_step: bool = True) -> torch.Tensor:
        G, D, noise, device, cond = self.G, self.D, self.noise, self.device, self.conditional
        wgan = self.loss == "wgan-gp"
        b = real.size(0) if self.dp is None else self.dp.batch_size  # fakes
        z = torch.randn(b, self.latent_dim, generator=noise, device=device)  # (B, latent)
        # A conditional critic's penalty needs one label per interpolate: fakes take the real
        # batch's labels there; other GANs draw their fakes' labels uniformly.
        fake_labels = (labels if wgan else torch.randint(
            0, self.num_classes, (b,), generator=noise, device=device)) if cond else None
        if self.mode_seeking and cond and not wgan:  # its pairs (i, i + B/2): one class each
            half = b // 2
            fake_labels[half:2 * half] = fake_labels[:half]

        # (1) Update D: tell real from G(z). Real and fake go through D in separate forwards
        # (as in the DCGAN paper's code): D's BatchNorm then normalises each batch by its own
        # statistics, in this phase and in (2) alike. One mixed forward lets BatchNorm leak
        # batch-level real/fake information, and G then collapses onto a few modes
        # (measured: tops only on Fashion-MNIST, recall 0.09). A DP D has no BatchNorm and
        # takes both in one forward (`_private_d_phase`).
        # A critic-only step needs no graph in G.
        with _autocast(self.precision, device), torch.set_grad_enabled(g_step):
            fake = G(z, fake_labels) if cond else G(z)  # (B, C, H, W)
        if self.dp is not None:
            logits_real, logits_fake, loss_d = self._private_d_phase(
                real, labels, fake.detach().to(real.dtype), fake_labels)
        else:
            with _autocast(self.precision, device):
                real_in = self.augment(real).requires_grad_(self.r1_gamma > 0)
                logits_real = D(real_in, labels) if cond else D(real_in)  # (B,)
                detached = self.augment(fake.detach().to(real.dtype))
                logits_fake = D(detached, fake_labels) if cond else D(detached)  # (B,)
                loss_d = d_loss(self.loss, logits_real, logits_fake)
                if wgan:  # the critic's gradient penalty on real-fake interpolates
                    eps = torch.rand(b, 1, 1, 1, generator=noise, device=device,
                                     dtype=real.dtype)
                    penalty = gradient_penalty(
                        (lambda x: D(x, labels)) if cond else D, real_in, detached, eps)
            total_d = (loss_d + r1_penalty(logits_real, real_in, self.r1_gamma)
                       if self.r1_gamma else loss_d)
            if wgan:
                total_d = total_d + penalty
            self.opt_d.zero_grad(set_to_none=True)
            total_d.backward()
            self.opt_d.step()

        if g_step:
            # (2) Update G: make D call G(z) real, through a frozen D: the backward computes
            # no gradient of D's parameters, which D's next step would discard (8 % of a
            # step's FLOP in the default DCGAN; D's forward + backward here took 1.45x as long
            # with them, `benchmarks/step_anatomy.py`), and DDP has none to all-reduce
            # (no_sync: its forward would otherwise wait for them). A DP D also stops Opacus'
            # hooks.
            with self.dp.frozen() if self.dp is not None else frozen(D), _no_sync(D):
                with _autocast(self.precision, device):
                    fake_in = self.augment(fake.to(real.dtype))
                    logits_g = D(fake_in, fake_labels) if cond else D(fake_in)  # (B,)
                    loss_g = g_loss(self.loss, logits_g)
                    total_g = (loss_g + self.mode_seeking * mode_seeking_loss(fake, z)
                               if self.mode_seeking else loss_g)  # loss_g is what is logged
                self.opt_g.zero_grad(set_to_none=True)
                total_g.backward()
            self.opt_g.step()
            if self.ema is not None:
                self.ema.update(unwrap(G))
            self.loss_g = loss_g
        assert self.loss_g is not None, "the first step of an epoch is a G step"

        with torch.no_grad():  # (4,) on the device: no host sync here
            if wgan:  # raw critic scores: their difference estimates the Wasserstein distance
                d_real, d_fake = logits_real.float().mean(), logits_fake.float().mean()
            else:  # D(x), D(G(z))
                d_real = (torch.sigmoid(logits_real.float()).mean() if logits_real.numel()
                          else logits_fake.new_zeros((), dtype=torch.float32))
                d_fake = torch.sigmoid(logits_fake.float()).mean()
            return torch.stack([loss_d.float(), self.loss_g.float(), d_real, d_fake])

    def _private_d_phase(self, real: torch.Tensor, labels: torch.Tensor, fake: torch.Tensor,
                         fake_labels: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DP-SGD's D update (pipeline/privacy/dp.py): real (B_real, maybe 0) and fake rows in
        one forward, D's loss the mean of their per-row terms, so that Opacus' per-sample
        gradient of a row is that image's alone. Returns D's logits on real and fake and
        loss_d as `d_loss` defines it (an empty real batch adds 0)."""
        assert self.dp is not None
        n_real, cond = real.size(0), self.conditional
        x = self.augment(torch.cat([real, fake]))  # (B_real + B, C, H, W): per-row transforms
        with _autocast(self.precision, self.device):
            if cond and fake_labels is not None:
                logits = self.D(x, torch.cat([labels, fake_labels]))  # (B_real + B,)
            else:
                logits = self.D(x)
        logits_real, logits_fake = logits[:n_real], logits[n_real:]
        terms_real, terms_fake = d_loss_terms(self.loss, logits_real, logits_fake)
        self.dp.step(torch.cat([terms_real, terms_fake]).mean())
        loss_d = terms_real.detach().sum() / max(n_real, 1) + terms_fake.detach().mean()
        return logits_real.detach(), logits_fake.detach(), loss_d


class VaeStep:
    """One ELBO step: encode, reparameterise, decode, and update encoder and decoder on
    reconstruction + KL (`G` is the decoder with `opt_g`, `D` the encoder with `opt_d`)."""

    def __init__(self, G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer, *, latent_dim: int, noise: torch.Generator,
                 device: torch.device, precision: str = "fp32",
                 ema: GeneratorEMA | None = None) -> None:
        self.G, self.D, self.opt_g, self.opt_d = G, D, opt_g, opt_d
        self.latent_dim, self.noise, self.device = latent_dim, noise, device
        self.precision, self.ema = precision, ema

    def __call__(self, real: torch.Tensor, labels: torch.Tensor,
                 g_step: bool = True) -> torch.Tensor:
        b = real.size(0)
        eps = torch.randn(b, self.latent_dim, generator=self.noise, device=self.device)
        with _autocast(self.precision, self.device):
            mu, logvar = self.D(real)  # (B, latent) each: q(z|x)
            z = mu + (0.5 * logvar).exp() * eps  # reparameterised sample of q(z|x)
            logits = self.G(z, logits=True)  # (B, C, H, W) Bernoulli logits of p(x|z)
            kl = vae_kl(mu, logvar)
            loss = vae_reconstruction(logits, real) + kl  # -ELBO, nats per image
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.opt_d.step()
        if self.ema is not None:
            self.ema.update(unwrap(self.G))
        with torch.no_grad():
            zero = torch.zeros((), device=loss.device)
            return torch.stack([kl.detach(), loss.detach(), zero, zero])
