"""The training objectives, chosen by `train.loss`, and the R1 penalty (`train.r1_gamma`).

- `ns`: the non-saturating loss of Goodfellow et al. 2014 (what DCGAN trains with):
  D minimises softplus(-D(x)) + softplus(D(G(z))), G minimises softplus(-D(G(z))).
- `hinge`: Lim & Ye 2017 / Miyato et al. 2018: D minimises relu(1 - D(x)) + relu(1 + D(G(z))),
  G minimises -D(G(z)).
- `wgan-gp`: Gulrajani et al. 2017, "Improved Training of Wasserstein GANs": the critic
  minimises D(G(z)) - D(x) + GP, G minimises -D(G(z)); `gradient_penalty` is GP, lambda 10
  (the paper's, for every dataset there).
- `elbo`: the VAE's negative evidence lower bound (Kingma & Welling 2014), per image in nats:
  `vae_reconstruction` (Bernoulli) + `vae_kl` (closed form against N(0, I)).
- R1 (Mescheder et al. 2018, "Which training methods for GANs do actually converge?"):
  gamma / 2 * E ||grad_x D(x)||^2 on real images, added to D's loss.
- Mode seeking (Mao et al. 2019, "Mode Seeking GANs", `train.mode_seeking`): G's batch in two
  halves z1, z2; 1 / (mean |G(z1) - G(z2)| / mean |z1 - z2| + 1e-5), added to G's loss.

The GAN losses take D's logits (B,) (a critic's scores for wgan-gp) and return a float32
scalar.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def d_loss_terms(kind: str, logits_real: torch.Tensor, logits_fake: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """D's loss image by image: float32 terms (B_real,) and (B_fake,) whose means add up to
    `d_loss` (DP-SGD clips each image's gradient, so it needs them one by one)."""
    real, fake = logits_real.float(), logits_fake.float()
    if kind == "hinge":
        return F.relu(1 - real), F.relu(1 + fake)
    if kind == "wgan-gp":  # the penalty is added by the caller, as R1 is
        return -real, fake
    return F.softplus(-real), F.softplus(fake)


def d_loss(kind: str, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    real, fake = d_loss_terms(kind, logits_real, logits_fake)
    return real.mean() + fake.mean()


def g_loss(kind: str, logits_fake: torch.Tensor) -> torch.Tensor:
    fake = logits_fake.float()
    return -fake.mean() if kind in ("hinge", "wgan-gp") else F.softplus(-fake).mean()


def r1_penalty(logits_real: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma/2 * mean over the batch of ||d logits / d real||^2; `real` must require grad.
    The gradient keeps its graph, so D's backward also trains against the penalty."""
    (grad,) = torch.autograd.grad(logits_real.float().sum(), real, create_graph=True)
    return 0.5 * gamma * grad.pow(2).flatten(1).sum(1).mean()


def mode_seeking_loss(images: torch.Tensor, z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MSGAN's term over a batch's halves paired row by row, images (B, ...) from z (B, latent):
    the inverse of how far the images move per unit of z (mean absolute differences); B >= 2,
    an odd last row is left out. Small when distinct noise gives distinct images."""
    half = images.size(0) // 2
    if half == 0:
        raise ValueError("mode seeking needs a batch of at least 2 images")
    image_gap = (images[:half].float() - images[half:2 * half].float()).abs().mean()
    z_gap = (z[:half].float() - z[half:2 * half].float()).abs().mean()
    return 1.0 / (image_gap / z_gap + eps)


GP_LAMBDA = 10.0  # Gulrajani et al. 2017, Algorithm 1


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, eps: torch.Tensor, weight: float = GP_LAMBDA
                     ) -> torch.Tensor:
    """weight * E (||grad_x critic(x_hat)||_2 - 1)^2 at x_hat = eps * real + (1 - eps) * fake,
    eps (B, 1, 1, 1) ~ U(0, 1): the critic is pushed towards 1-Lipschitz on the lines between
    real and fake images. The gradient keeps its graph (the critic's backward trains on it)."""
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).float().sum(), x_hat, create_graph=True)
    return weight * (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def vae_reconstruction(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) under independent Bernoullis with these logits, summed over the pixels of
    each image and averaged over the batch; `images` in [-1, 1] are the targets (x + 1) / 2."""
    target = (images.float() + 1) / 2
    nll = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return nll.flatten(1).sum(1).mean()


def vae_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) = 1/2 sum(mu^2 + exp(logvar) - logvar - 1),
    summed over the latent dimensions, averaged over the batch (B, latent) -> scalar."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1).mean()
