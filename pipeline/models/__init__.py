"""The forger families (`zoo.py`: dcgan, sngan, wgan-gp, vae) and their checkpoints."""

from pipeline.models.checkpoint import (
    load_checkpoint,
    load_discriminator,
    load_generator,
    make_checkpoint,
    save_checkpoint,
    unwrap,
)
from pipeline.models.dcgan import Discriminator, Generator, weights_init
from pipeline.models.zoo import ARCHS, GAN_ARCHS, build_models

__all__ = [
    "ARCHS", "GAN_ARCHS", "Discriminator", "Generator", "build_models", "load_checkpoint",
    "load_discriminator", "load_generator", "make_checkpoint", "save_checkpoint", "unwrap",
    "weights_init",
]
