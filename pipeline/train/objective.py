"""The GAN losses, chosen by `train.loss`, and the R1 penalty (`train.r1_gamma`).

- `ns`: the non-saturating loss of Goodfellow et al. 2014 (what DCGAN trains with):
  D minimises softplus(-D(x)) + softplus(D(G(z))), G minimises softplus(-D(G(z))).
- `hinge`: Lim & Ye 2017 / Miyato et al. 2018: D minimises relu(1 - D(x)) + relu(1 + D(G(z))),
  G minimises -D(G(z)).
- R1 (Mescheder et al. 2018, "Which training methods for GANs do actually converge?"):
  gamma / 2 * E ||grad_x D(x)||^2 on real images, added to D's loss.

All take D's logits (B,) and return a scalar in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss(kind: str, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    real, fake = logits_real.float(), logits_fake.float()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def g_loss(kind: str, logits_fake: torch.Tensor) -> torch.Tensor:
    fake = logits_fake.float()
    return -fake.mean() if kind == "hinge" else F.softplus(-fake).mean()


def r1_penalty(logits_real: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma/2 * mean over the batch of ||d logits / d real||^2; `real` must require grad.
    The gradient keeps its graph, so D's backward also trains against the penalty."""
    (grad,) = torch.autograd.grad(logits_real.float().sum(), real, create_graph=True)
    return 0.5 * gamma * grad.pow(2).flatten(1).sum(1).mean()
