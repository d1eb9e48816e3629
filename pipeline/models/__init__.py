"""DCGAN models and their checkpoints (see `dcgan.py`, `checkpoint.py`)."""

from pipeline.models.checkpoint import (
    load_checkpoint,
    load_discriminator,
    load_generator,
    make_checkpoint,
    save_checkpoint,
    unwrap,
)
from pipeline.models.dcgan import Discriminator, Generator, build_models, weights_init

__all__ = [
    "Discriminator", "Generator", "build_models", "load_checkpoint", "load_discriminator",
    "load_generator", "make_checkpoint", "save_checkpoint", "unwrap", "weights_init",
]
