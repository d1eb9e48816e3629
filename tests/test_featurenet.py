"""FeatureNet: input scaling, shapes for every supported size, checkpoint round trip, and that
a few epochs on sklearn digits learn a usable classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.metrics.featurenet import (
    FeatureNet,
    accuracy,
    load_featurenet,
    save_featurenet,
    to_input,
    train_featurenet,
)

torch.set_num_threads(1)


def test_to_input_scales_uint8_nhwc_to_unit_range_nchw():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8).reshape(1, 1, 3, 1)
    y = to_input(x)
    assert y.shape == (1, 1, 1, 3)
    assert torch.allclose(y.flatten(), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-6)


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 1)])
def test_feature_and_logit_shapes(size, channels):
    net = FeatureNet(channels, num_classes=10, width=4, image_size=size).eval()
    x = torch.randn(2, channels, size, size)
    assert net.features(x).shape == (2, 16) and net(x).shape == (2, 10)
    assert (net.features(x) >= 0).all()


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    torch.manual_seed(0)
    net = FeatureNet(1, 3, width=4, image_size=16).eval()
    path = tmp_path / "fn.pt"
    save_featurenet(path, net, {"width": 4}, (16, 16, 1), 0.5)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"state_dict", "config", "image_shape", "num_classes", "accuracy"}
    loaded, meta = load_featurenet(path)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.features(x), net.features(x))
    assert meta["image_shape"] == [16, 16, 1] and meta["accuracy"] == 0.5
    assert not list(tmp_path.glob(".fn.pt.*"))  # no temp file left behind


def test_bad_or_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="featurenet stage"):
        load_featurenet(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="not a FeatureNet checkpoint"):
        load_featurenet(tmp_path / "bad.pt")


def test_training_on_digits_learns(digits):
    images, labels = digits[0][..., None], digits[1]
    lines: list[str] = []
    model, history = train_featurenet((images[:1200], labels[:1200]),
                                      (images[1200:1500], labels[1200:1500]), 10, width=8,
                                      epochs=3, batch_size=64, lr=3e-3, seed=0, log=lines.append)
    assert len(history) == 3 and len(lines) == 3 and "val acc" in lines[0]
    assert history[-1]["loss"] < history[0]["loss"]
    assert accuracy(model, images[1500:], labels[1500:]) > 0.8
    assert np.isfinite(history[-1]["val_accuracy"])
