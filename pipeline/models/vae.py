"""A small convolutional VAE: the zoo's non-GAN forger (Kingma & Welling 2014, arXiv:1312.6114).

The decoder plays G's part: `decoder(z)` maps z ~ N(0, I) (B, latent_dim) to images in [-1, 1],
so the generate stage, the MLflow sampler and the sample grids call it exactly like a GAN's G.
The encoder sits in D's slot of the checkpoint (`discriminator` weights, second optimizer) and
maps images to the posterior q(z|x) = N(mu, diag(exp(logvar))); it scores nothing.

The likelihood is Bernoulli per pixel on (x + 1) / 2, as for (Fashion-)MNIST in the paper:
the decoder computes logits l, its image is the Bernoulli mean sigmoid(l) rescaled to [-1, 1],
which is tanh(l / 2). Training (`pipeline.train.steps.vae_step`) asks for the logits directly.

    dec, enc = build_vae({"latent_dim": 32, "g_features": 32, "d_features": 32, ...},
                         (1, 28, 28), 10)
    mu, logvar = enc(x)                                 # (B, 32) each
    images = dec(torch.randn(16, 32))                   # (16, 1, 28, 28) in [-1, 1]
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.dcgan import LatentProjection, _norm, _plan, upsampler


class Decoder(nn.Module):
    """z (B, latent_dim) -> images (B, C, H, W) in [-1, 1] (or their logits, `logits=True`).

    Same layout as the DCGAN G but without BatchNorm: training decodes posterior samples and
    sampling decodes prior ones, and BatchNorm statistics of the one would not fit the other."""

    def __init__(self, latent_dim: int, features: int, channels: int, image_size: int,
                 upsample: str = "deconv") -> None:
        super().__init__()
        start, ups = _plan(image_size)
        up = upsampler(upsample)
        self.latent_dim, self.num_classes = latent_dim, 0
        width = features * 2 ** (ups - 1)
        layers: list[nn.Module] = [
            LatentProjection(latent_dim, width, start, bias=True), nn.ReLU(True)]  # (B, w, s, s)
        for _ in range(ups - 1):
            layers += [*up(width, width // 2, bias=True), nn.ReLU(True)]
            width //= 2
        layers += up(width, channels, bias=True)  # (B, C, H, W) Bernoulli logits
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, *,
                logits: bool = False) -> torch.Tensor:
        if labels is not None:
            raise ValueError("the VAE is unconditional")
        out = self.net(z[:, :, None, None])  # (B, C, H, W)
        return out if logits else torch.tanh(out / 2)  # = 2 sigmoid(out) - 1


class Encoder(nn.Module):
    """images (B, C, H, W) in [-1, 1] -> (mu, logvar), each (B, latent_dim)."""

    def __init__(self, latent_dim: int, features: int, channels: int, image_size: int,
                 norm: str = "batch") -> None:
        super().__init__()
        start, downs = _plan(image_size)
        sn = nn.utils.parametrizations.spectral_norm if norm == "spectral" else (lambda m: m)
        self.latent_dim, self.num_classes = latent_dim, 0
        width = features
        layers: list[nn.Module] = [sn(nn.Conv2d(channels, width, 4, 2, 1)),
                                   nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(downs - 1):
            layers += [sn(nn.Conv2d(width, width * 2, 4, 2, 1)),  # side / 2
                       *_norm(norm, width * 2), nn.LeakyReLU(0.2, inplace=True)]
            width *= 2
        layers += [nn.Conv2d(width, 2 * latent_dim, start, 1, 0)]  # (B, 2 latent, 1, 1)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).flatten(1).chunk(2, dim=1)  # (B, latent) each
        return mu, logvar


def build_vae(model_cfg: dict, image_shape: tuple[int, int, int],
              num_classes: int) -> tuple[Decoder, Encoder]:
    """(decoder, encoder) from a plain model config dict, with PyTorch's default init."""
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"images must be square, got {height}x{width}")
    if model_cfg.get("conditional"):
        raise ValueError("model.conditional: model.arch vae is unconditional")
    latent = int(model_cfg["latent_dim"])
    dec = Decoder(latent, int(model_cfg["g_features"]), channels, height,
                  model_cfg.get("g_upsample", "deconv"))
    enc = Encoder(latent, int(model_cfg["d_features"]), channels, height,
                  model_cfg.get("d_norm", "batch"))
    return dec, enc
