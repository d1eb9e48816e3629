"""FeatureNet: shapes for every supported size, checkpoint round trip, that a few epochs on
sklearn digits learn a usable classifier, and that cached real features are keyed by the device
and torch build that computed them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import UserError
from pipeline.metrics.cache import cache_key, feature_source
from pipeline.metrics.featurenet import (
    FORMAT,
    FeatureNet,
    accuracy,
    load_featurenet,
    save_featurenet,
    train_featurenet,
)
from pipeline.metrics.features import domain_extractor

torch.set_num_threads(1)


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
    assert set(ckpt) == {"format", "state_dict", "config", "image_shape", "num_classes",
                         "accuracy"}
    loaded, meta = load_featurenet(path)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.features(x), net.features(x))
    assert meta["image_shape"] == [16, 16, 1] and meta["accuracy"] == 0.5
    assert not list(tmp_path.glob(".fn.pt.*"))  # no temp file left behind


def test_bad_or_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="FeatureNet checkpoint not found .run the featurenet"):
        load_featurenet(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "bad.pt")  # no format: e.g. another model's
    with pytest.raises(UserError, match="bad.pt: not a gan-forensics/featurenet-v1 checkpoint"):
        load_featurenet(tmp_path / "bad.pt")
    torch.save({"format": FORMAT, "state_dict": {}}, tmp_path / "broken.pt")
    with pytest.raises(UserError, match="broken.pt: not a FeatureNet checkpoint .no 'image_shape'"):
        load_featurenet(tmp_path / "broken.pt")


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


def test_feature_cache_key_differs_between_devices_and_torch_builds(tmp_path, monkeypatch):
    # No GPU here: name one, as torch.cuda would on a machine with an A100.
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")

    def key(source: str) -> str:
        return cache_key(train="abc", extractor=source, n=100, seed=0, role="reference")

    cpu = feature_source("featurenet:abc", torch.device("cpu"))
    gpu = feature_source("featurenet:abc", torch.device("cuda"))
    assert "cpu" in cpu and "cuda:NVIDIA A100" in gpu and torch.__version__ in cpu
    assert key(cpu) != key(gpu)
    assert key(cpu) == key(feature_source("featurenet:abc", torch.device("cpu")))  # stable
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert key(cpu) != key(feature_source("featurenet:abc", torch.device("cpu")))

    # The domain extractor (whose identity evaluate puts in the key) says where it runs.
    net = FeatureNet(1, 3, width=4, image_size=16)
    save_featurenet(tmp_path / "fn.pt", net, {"width": 4}, (16, 16, 1), 0.5)
    ex = domain_extractor(tmp_path / "fn.pt", "cpu")
    assert ex.identity.startswith("featurenet:") and " on cpu with torch 9.9.9" in ex.identity
