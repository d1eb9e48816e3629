"""Sample the trained generator into the `.npz` sets later stages score (DVC stage `generate`).

    python stages/generate.py --generator models/dcgan/generator.pt \
        --run models/dcgan/run.json --out data/generated/dcgan

writes `data/generated/{eval,detector_train,detector_val,detector_test}.npz` and `grid.png` (one
such directory per zoo family: `generate@<family>` writes `data/generated/<family>/`). Each `.npz`
has the prepared-data layout: `images` uint8 (N, H, W, C), `labels` int64 (N,), `class_names`, plus
`noise_seed` (the seed its noise came from). Labels: a class-conditional G gets classes drawn
uniformly and they are stored; an unconditional G has no class, so its labels are -1 ("none"),
never a made-up class 0 that per-class code would silently trust. Read fakes with
`pipeline.data.arrays.load_images` (`load_split` rejects -1 labels on purpose).

Every split draws its noise from its own seed, `split_seed(seed, split)`, so no two splits share
a latent vector (the detector is never tested on a fake it trained on).

G always runs on the CPU, whatever GPUs the machine has (there is no device setting): it is
small (the default DCGAN makes thousands of images a second on 2 cores), and on a GPU the fakes
would change with TF32, cuDNN's choice of convolution algorithm and the GPU model, so every
later stage's numbers would too. On the CPU the fakes depend on the generator file, the seed
and the torch build only, not on the machine's GPU or on `generate.batch_size` (the noise is
drawn up front).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.config import GenerateConfig
from pipeline.errors import UserError
from pipeline.imaging import save_grid, to_uint8, to_unit_range
from pipeline.io import atomic_dir

SPLITS = ("eval", "detector_train", "detector_val", "detector_test")
NO_LABEL = -1  # label of a fake from an unconditional generator
GRID_IMAGES = 64


def split_seed(seed: int, split: str) -> int:
    """A 63-bit seed for one split, from a hash: distinct splits never share a noise stream."""
    digest = hashlib.sha256(f"gan-forensics/{seed}/{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@torch.no_grad()
def sample(G: torch.nn.Module, meta: dict[str, Any], n: int, seed: int, batch_size: int = 500,
           desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`n` fakes from G, on the CPU, as (uint8 (n, H, W, C), labels int64 (n,)); the same seed,
    the same images. `meta` is what `load_generator` returns (model_config, num_classes)."""
    cfg = meta["model_config"]
    conditional = bool(cfg.get("conditional")) and int(meta.get("num_classes", 0)) > 0
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, int(cfg["latent_dim"]), generator=gen)  # (n, latent), CPU
    labels = (torch.randint(0, int(meta["num_classes"]), (n,), generator=gen) if conditional
              else torch.full((n,), NO_LABEL, dtype=torch.int64))
    G = G.cpu().eval()
    chunks = []
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", leave=False,
                      disable=desc is None):
        zb = z[start:start + batch_size]
        out = G(zb, labels[start:start + batch_size]) if conditional else G(zb)
        chunks.append(to_uint8(out))  # (b, H, W, C)
    return np.concatenate(chunks), labels.numpy().astype(np.int64)


def _load(generator_path: str | os.PathLike[str]) -> tuple[torch.nn.Module, dict[str, Any]]:
    from pipeline.models import load_generator  # keeps `import pipeline.generate` light

    return load_generator(generator_path, "cpu")


def generate_splits(generator_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                    cfg: GenerateConfig, seed: int, splits: tuple[str, ...] = SPLITS
                    ) -> dict[str, Any]:
    """Write the fake sets `splits` (default: all of SPLITS) and `grid.png` (the first split's
    first images) into `out_dir` (replaced whole, atomically), sampling on the CPU. Returns a
    summary: counts per split, image_shape [H, W, C], conditional, seconds."""
    if not splits or set(splits) - set(SPLITS):
        raise ValueError(f"splits must be some of {SPLITS}, got {splits}")
    G, meta = _load(generator_path)
    counts = {"eval": cfg.num_eval, "detector_train": cfg.num_detector_train,
              "detector_val": cfg.num_detector_val, "detector_test": cfg.num_detector_test}
    class_names = np.array([str(c) for c in meta.get("class_names") or []], dtype=str)
    start = time.monotonic()
    summary: dict[str, Any] = {}
    with atomic_dir(out_dir) as tmp:
        for split in (s for s in SPLITS if s in splits):
            noise_seed = split_seed(seed, split)
            images, labels = sample(G, meta, counts[split], noise_seed, cfg.batch_size,
                                    desc=f"generate {split}")
            if "image_shape" not in summary:  # exact: uint8 -> [-1, 1] -> uint8, same pixels
                save_grid(to_unit_range(images[:GRID_IMAGES]), tmp / "grid.png")
            # Written straight into the temp dir: atomic_dir publishes all files or none.
            with open(tmp / f"{split}.npz", "wb") as fh:
                np.savez_compressed(fh, images=images, labels=labels, class_names=class_names,
                                    noise_seed=np.int64(noise_seed))
            summary[split] = len(images)
            summary["image_shape"] = list(images.shape[1:])
    summary["conditional"] = bool(meta["model_config"].get("conditional"))
    summary["seconds"] = round(time.monotonic() - start, 2)
    return summary


def sample_grid(generator_path: str | os.PathLike[str], n: int = 64, seed: int = 0,
                out: str | os.PathLike[str] = "samples.png") -> Path:
    """Write a PNG grid of `n` fakes (for `gan-forensics sample`; CPU, as `generate_splits`);
    returns its path."""
    if n <= 0:
        raise UserError(f"--n: must be > 0, got {n}")
    G, meta = _load(generator_path)
    images, _ = sample(G, meta, n, seed, batch_size=500)
    save_grid(to_unit_range(images), out)
    return Path(out)
