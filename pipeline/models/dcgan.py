"""DCGAN generator and discriminator for 28, 32 and 64 px images, optionally class-conditional.

Radford et al. 2015 (arXiv:1511.06434): transposed-conv generator with BatchNorm + ReLU and a tanh
output in [-1, 1]; strided-conv discriminator with LeakyReLU(0.2) and BatchNorm after its first
layer. The discriminator returns LOGITS (train it with `BCEWithLogitsLoss`). Conditional mode:
G sees `[z, embed(y)]` (and, with `model.g_conditioning: batchnorm`, the class also sets a
gain and a bias of every BatchNorm in G: conditional BatchNorm, de Vries et al. 2017, as in
SN-GAN's and BigGAN's generators); D reads the label by `model.d_conditioning`:
- `plane`: the image plus one extra channel, a learned per-class plane;
- `projection` (Miyato & Koyama, ICLR 2018): D's last layer is a linear head w on its final
  feature map h; the class adds its own learned row, logit = <w + E[y], h>.

Two variants, chosen by `model.*` params:
- `g_upsample: resize`: each x2 step is nearest-neighbour upsampling + 3x3 conv instead of a
  4x4 stride-2 transposed conv (Odena et al. 2016, "Deconvolution and checkerboard artifacts");
- `d_norm: spectral`: spectral normalisation of every D layer instead of BatchNorm (Miyato et
  al. 2018, ICLR); `layer`: GroupNorm with one group, a per-image layer norm (the WGAN-GP
  critic's, Gulrajani et al. 2017); or `none`: no normalisation in D (DP-SGD).

The SN-GAN and WGAN-GP families (`pipeline/models/zoo.py`) are these G and D with those options.

    G = Generator(latent_dim=100, features=64, channels=1, image_size=28)
    img = G(torch.randn(16, 100))                      # (16, 1, 28, 28) in [-1, 1]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from pipeline.config import IMAGE_SIZES


def _plan(image_size: int) -> tuple[int, int]:
    """(start side, number of x2 upsamplings): 28 = 7*2*2, 32 = 4*2^3, 64 = 4*2^4."""
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size}")
    start = 7 if image_size == 28 else 4
    return start, int(math.log2(image_size // start))


def _weight(module: nn.Module) -> torch.Tensor:
    """The parameter behind `module.weight` (a spectral-normalised layer computes `weight`)."""
    return (module.parametrizations.weight.original
            if nn.utils.parametrize.is_parametrized(module, "weight") else module.weight)


def weights_init(module: nn.Module) -> None:
    """DCGAN init: conv weights ~ N(0, 0.02); BatchNorm weights ~ N(1, 0.02), biases 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(_weight(module), 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _norm(kind: str, channels: int) -> list[nn.Module]:
    """D's normalisation after a strided conv: BatchNorm, a per-image layer norm, or none."""
    if kind == "batch":
        return [nn.BatchNorm2d(channels)]
    return [nn.GroupNorm(1, channels)] if kind == "layer" else []


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose affine output is modulated per class: BN(x) * (1 + gain[y]) + bias[y].
    gain and bias start at 0, so at init it is the plain (DCGAN-initialised) BatchNorm."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gain = self.gain(labels).to(x.dtype)[:, :, None, None]  # (B, C, 1, 1)
        bias = self.bias(labels).to(x.dtype)[:, :, None, None]
        return torch.addcmul(bias, self.norm(x), 1 + gain)  # keeps x's memory format


class LatentProjection(nn.ConvTranspose2d):
    """G's first layer, z (B, in, 1, 1) -> (B, out, side, side): a transposed conv of kernel
    `side` over a 1x1 input, which is one matrix product, (B, in) @ (in, out * side^2), and is
    computed as one. Same parameters as the conv (checkpoints are unchanged), same output to
    float rounding, in the weight's memory layout; any other input size takes the conv.
    oneDNN's transposed conv of a 1x1 input is slow on CPU (`benchmarks/step_anatomy.py`: in
    the default G, channels_last, forward + backward took 1.76x the product's time)."""

    def __init__(self, c_in: int, c_out: int, side: int, bias: bool = False) -> None:
        super().__init__(c_in, c_out, side, 1, 0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.shape[-2:] != (1, 1):
            return super().forward(x)
        w, b = self.weight, x.size(0)  # w: (in, out, side, side)
        c_out, side = w.size(1), w.size(2)
        if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
            # (in, side, side, out) in memory: the product lands in channels_last
            h = (x.flatten(1) @ w.permute(0, 2, 3, 1).reshape(w.size(0), -1))
            h = h.view(b, side, side, c_out).permute(0, 3, 1, 2)
        else:
            h = (x.flatten(1) @ w.reshape(w.size(0), -1)).view(b, c_out, side, side)
        return h if self.bias is None else h + self.bias.to(h.dtype)[:, None, None]


def _up_deconv(c_in: int, c_out: int, bias: bool = False) -> list[nn.Module]:
    return [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias)]  # side x2


def _up_resize(c_in: int, c_out: int, bias: bool = False) -> list[nn.Module]:
    return [nn.Upsample(scale_factor=2, mode="nearest"),  # side x2, no checkerboard
            nn.Conv2d(c_in, c_out, 3, 1, 1, bias=bias)]


def upsampler(kind: str) -> Callable[..., list[nn.Module]]:
    """The layers of one x2 step of a generator: `deconv` or `resize`."""
    ups = {"deconv": _up_deconv, "resize": _up_resize}
    if kind not in ups:
        raise ValueError(f"upsample must be one of {sorted(ups)}, got {kind!r}")
    return ups[kind]


class Generator(nn.Module):
    """z (B, latent_dim) [+ labels (B,)] -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, latent_dim: int, features: int, channels: int, image_size: int,
                 num_classes: int = 0, embed_dim: int = 16, upsample: str = "deconv",
                 conditioning: str = "input") -> None:
        super().__init__()
        if conditioning not in ("input", "batchnorm"):
            raise ValueError(f"conditioning must be input or batchnorm, got {conditioning!r}")
        start, ups = _plan(image_size)
        up = upsampler(upsample)
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        cbn = bool(num_classes) and conditioning == "batchnorm"

        def norm(channels: int) -> nn.Module:
            return (ConditionalBatchNorm2d(channels, num_classes) if cbn
                    else nn.BatchNorm2d(channels))

        in_dim = latent_dim + (embed_dim if num_classes else 0)
        width = features * 2 ** (ups - 1)  # halves at every upsampling, ends at `features`
        layers: list[nn.Module] = [
            LatentProjection(in_dim, width, start),  # (B, width, s, s)
            norm(width), nn.ReLU(True),
        ]
        for _ in range(ups - 1):
            layers += [*up(width, width // 2), norm(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [*up(width, channels), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is None:
            return self.net(z[:, :, None, None])  # (B, C, H, W)
        if labels is None:
            raise ValueError("conditional generator needs labels")
        x = torch.cat([z, self.embed(labels)], dim=1)[:, :, None, None]  # (B, latent + embed)
        for layer in self.net:
            x = layer(x, labels) if isinstance(layer, ConditionalBatchNorm2d) else layer(x)
        return x  # (B, C, H, W)


class Discriminator(nn.Module):
    """images (B, C, H, W) [+ labels (B,)] -> logits (B,)."""

    def __init__(self, features: int, channels: int, image_size: int,
                 num_classes: int = 0, embed_dim: int = 16, norm: str = "batch",
                 conditioning: str = "plane") -> None:
        super().__init__()
        if conditioning not in ("plane", "projection"):
            raise ValueError(f"conditioning must be plane or projection, got {conditioning!r}")
        start, downs = _plan(image_size)
        sn = nn.utils.parametrizations.spectral_norm if norm == "spectral" else (lambda m: m)
        self.image_size, self.num_classes = image_size, num_classes
        plane = bool(num_classes) and conditioning == "plane"
        # Plane: the label becomes one extra input plane (embedding -> H*W pixels).
        self.embed = (nn.Sequential(nn.Embedding(num_classes, embed_dim),
                                    nn.Linear(embed_dim, image_size * image_size))
                      if plane else None)
        width = features
        layers: list[nn.Module] = [
            sn(nn.Conv2d(channels + (1 if plane else 0), width, 4, 2, 1, bias=False)),
            nn.LeakyReLU(0.2, inplace=True),  # no BatchNorm on the input layer (DCGAN)
        ]
        for _ in range(downs - 1):
            layers += [sn(nn.Conv2d(width, width * 2, 4, 2, 1, bias=False)),  # side / 2
                       *_norm(norm, width * 2),
                       nn.LeakyReLU(0.2, inplace=True)]
            width *= 2
        layers += [sn(nn.Conv2d(width, 1, start, 1, 0, bias=False))]  # (B, 1, 1, 1) logits
        self.net = nn.Sequential(*layers)
        # Projection: E[y] has the head's shape (width x start x start, flattened), and its
        # init (N(0, 0.02), as the conv weights).
        self.project = None
        if num_classes and not plane:
            self.project = sn(nn.Embedding(num_classes, width * start * start))
            nn.init.normal_(_weight(self.project), 0.0, 0.02)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and labels is None:
            raise ValueError("conditional discriminator needs labels")
        if self.embed is not None:
            plane = self.embed(labels).view(-1, 1, self.image_size, self.image_size)
            x = torch.cat([x, plane.to(x.dtype)], dim=1)  # (B, C + 1, H, W)
        if self.project is None:
            return self.net(x).flatten()  # (B,)
        h = self.net[:-1](x)  # (B, width, start, start): what the head reads
        # <E[y], h> with E[y]'s row read as (width, start, start), laid out in memory as h is:
        # a channels_last h flattened, or mixed with an NCHW row, would send h's gradient back
        # in the other layout, and an elementwise op over two layouts (the gradient sum with
        # the head's, LeakyReLU's backward) runs ~20-30x slower than over one here.
        row = self.project(labels).to(h.dtype).view(h.shape)  # (B, width, start, start)
        if not h.is_contiguous() and h.is_contiguous(memory_format=torch.channels_last):
            row = row.contiguous(memory_format=torch.channels_last)
        return self.net[-1](h).flatten() + (row * h).sum(dim=(1, 2, 3))


def build_gan(model_cfg: dict, image_shape: tuple[int, int, int],
              num_classes: int) -> tuple[Generator, Discriminator]:
    """G and D from a plain model config dict (`ModelConfig.model_dump()`), DCGAN-initialised
    (dcgan, sngan, wgan-gp: the options above; `pipeline.models.build_models` dispatches)."""
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"images must be square, got {height}x{width}")
    classes = num_classes if model_cfg.get("conditional") else 0
    embed = int(model_cfg.get("embed_dim", 16))
    G = Generator(int(model_cfg["latent_dim"]), int(model_cfg["g_features"]), channels,
                  height, classes, embed, model_cfg.get("g_upsample", "deconv"),
                  model_cfg.get("g_conditioning", "input"))
    D = Discriminator(int(model_cfg["d_features"]), channels, height, classes, embed,
                      model_cfg.get("d_norm", "batch"), model_cfg.get("d_conditioning", "plane"))
    G.apply(weights_init)
    D.apply(weights_init)
    return G, D
