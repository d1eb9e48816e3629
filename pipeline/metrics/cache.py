"""Disk cache for real-image features, keyed by a hash of everything that produced them.

The key covers the data files' sha256, N, the seed and the subset's role, and the extractor's
identity, which `feature_source` builds from its weights (FeatureNet sha256 / Inception sha1),
the device that computed the features (`cpu` or `cuda:<GPU model>`) and the torch version:
the same weights give slightly different floats on another device or torch build, and a cached
CPU reference must not be compared with GPU fakes. `VERSION` is in every key (bump it when
preprocessing changes). Entries live in `.cache/features/<key>.npz` at the repository root
(gitignored) and are written atomically, so an interrupted run never leaves a truncated entry;
a second run loads them.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.io import atomic_path

VERSION = 1
DEFAULT_DIR = Path(".cache/features")


def device_name(device: torch.device) -> str:
    """`cpu`, or `cuda:<GPU model>` (GPU models differ in their kernels, so in the last bits)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def feature_source(weights: str, device: torch.device) -> str:
    """An extractor identity for cache keys: its weights, where they run, and the torch build."""
    return f"{weights} on {device_name(device)} with torch {torch.__version__}"


def cache_key(**parts: Any) -> str:
    """Stable hex key of JSON-able parts (order of keyword arguments does not matter)."""
    blob = json.dumps({"version": VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_features(key: str, compute: Callable[[], np.ndarray],
                    cache_dir: str | os.PathLike[str] | None = DEFAULT_DIR) -> np.ndarray:
    """Load features for `key` from the cache, or compute and store them. None = no cache."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return npz["features"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # unreadable entry: recompute and overwrite it
    feats = compute()
    with atomic_path(path, ".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, features=feats)
    return feats
