"""GAN checkpoints: plain dicts of state_dicts + config, saved atomically, loaded weights-only.

One format serves Ray Train's per-epoch checkpoints (G, D, both Adam states, epoch, step, RNG,
epoch history) and the DVC outs `models/generator.pt` / `models/discriminator.pt` (one model each):

    {"format": FORMAT, "model_config": {...}, "image_shape": [C, H, W], "num_classes": int,
     "class_names": [...], "epoch": int, "step": int, "generator": state_dict, ...}

Other stages load a model with `load_generator(path)` / `load_discriminator(path)`. Every
family of the zoo uses this format (`model_config["arch"]`, dcgan when absent); a VAE's
`discriminator` weights are its encoder's, and `load_discriminator` refuses them.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from pipeline.checkpoints import load_state, save_state
from pipeline.errors import UserError
from pipeline.models.zoo import GAN_ARCHS, build_models

FORMAT = "gan-forensics/dcgan-v1"
META_KEYS = ("format", "model_config", "image_shape", "num_classes", "class_names", "epoch",
             "step")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under a DDP wrapper (what checkpoints store)."""
    return getattr(model, "module", model)


def make_checkpoint(*, model_config: dict, image_shape: tuple[int, int, int], num_classes: int,
                    class_names: list[str] | None = None, epoch: int = 0, step: int = 0,
                    **parts: Any) -> dict[str, Any]:
    """A checkpoint dict; `parts` are e.g. generator=..., discriminator=..., opt_g=..., rng=..."""
    ckpt: dict[str, Any] = {
        "format": FORMAT, "model_config": dict(model_config), "image_shape": list(image_shape),
        "num_classes": int(num_classes), "class_names": list(class_names or []),
        "epoch": int(epoch), "step": int(step),
    }
    for key, value in parts.items():
        ckpt[key] = value.state_dict() if isinstance(value, nn.Module | torch.optim.Optimizer) \
            else value
    return ckpt


def save_checkpoint(path: str | os.PathLike[str], ckpt: dict[str, Any]) -> None:
    """Write atomically, every tensor on the CPU (`pipeline.checkpoints.save_state`)."""
    save_state(path, ckpt)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint dict weights-only; a bad file is a one-line `UserError`."""
    return load_state(path, FORMAT, "checkpoint", hint="run the train stage")


def _load(path: str | os.PathLike[str], key: str,
          device: str | torch.device) -> tuple[nn.Module, dict[str, Any]]:
    ckpt = load_checkpoint(path)
    if key not in ckpt:
        raise UserError(f"{path}: checkpoint has no {key} weights")
    arch = ckpt["model_config"].get("arch", "dcgan")
    if key == "discriminator" and arch not in GAN_ARCHS:
        raise UserError(f"{path}: model.arch {arch} has no discriminator (this file holds its "
                        "encoder); its fakes have no D score")
    try:
        G, D = build_models(ckpt["model_config"], tuple(ckpt["image_shape"]),
                            ckpt["num_classes"])
    except ValueError as exc:  # e.g. an arch this code does not know
        raise UserError(f"{path}: {exc}") from None
    model = G if key == "generator" else D
    model.load_state_dict(ckpt[key])
    meta = {k: ckpt[k] for k in META_KEYS}
    return model.to(device).eval(), meta


def load_generator(path: str | os.PathLike[str],
                   device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(G in eval mode, meta). meta: model_config (arch, latent_dim, conditional, ...),
    image_shape [C, H, W], num_classes, class_names, epoch, step. G(z, labels) returns images
    in [-1, 1] for every `model.arch` (a VAE's G is its decoder)."""
    return _load(path, "generator", device)


def load_discriminator(path: str | os.PathLike[str],
                       device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(D in eval mode, meta); D(x in [-1, 1], labels) returns logits (B,). A family without a
    discriminator (vae: the file holds its encoder) is a `UserError`."""
    return _load(path, "discriminator", device)
