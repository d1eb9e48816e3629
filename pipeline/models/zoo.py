"""The forger zoo: every family chosen by `model.arch`, built by the one `build_models`.

| arch    | G (what samples)             | D slot                       | train.loss           |
|---------|------------------------------|------------------------------|----------------------|
| dcgan   | transposed-conv G, BatchNorm | strided-conv D, BatchNorm    | ns (or hinge)        |
| sngan   | nearest upsample + conv G    | spectral-norm D              | hinge                |
| wgan-gp | transposed-conv G, BatchNorm | critic, layer norm (or none) | wgan-gp, n_critic 5  |
| vae     | decoder z -> image (tanh)    | encoder image -> mu, logvar  | elbo                 |

What each family fixes is `pipeline.config.ARCH_PRESETS`; the widths are `model.g_features`,
`model.d_features` and `model.latent_dim` for all of them. Every G maps z (B, latent_dim)
[+ labels] to images in [-1, 1], so training, checkpoints, the generate stage and serving treat
all families alike:

    G, D = build_models({"arch": "vae", "latent_dim": 32, ...}, (1, 28, 28), num_classes=10)
"""

from __future__ import annotations

from typing import get_args

from torch import nn

from pipeline.config import ModelConfig
from pipeline.models.dcgan import build_gan
from pipeline.models.vae import build_vae

ARCHS: tuple[str, ...] = get_args(ModelConfig.model_fields["arch"].annotation)
GAN_ARCHS = ("dcgan", "sngan", "wgan-gp")  # the families whose D slot holds a discriminator


def build_models(model_cfg: dict, image_shape: tuple[int, int, int],
                 num_classes: int) -> tuple[nn.Module, nn.Module]:
    """(G, D-slot model) of `model_cfg["arch"]` (default dcgan: configs from before the zoo)
    from a plain model config dict (`ModelConfig.model_dump()`), initialised from torch's RNG."""
    arch = model_cfg.get("arch", "dcgan")
    if arch in GAN_ARCHS:
        return build_gan(model_cfg, image_shape, num_classes)
    if arch == "vae":
        return build_vae(model_cfg, image_shape, num_classes)
    raise ValueError(f"model.arch: must be one of {', '.join(ARCHS)}, got {arch!r}")
