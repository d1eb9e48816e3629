"""pipeline.forensics.probe: its features against independent references (np.histogram per
image, the DFT of a constant and of a pure cosine), and the probe's probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.forensics.probe import (
    Featurizer,
    log_spectrum,
    pixel_histogram,
    train_probe,
)


def test_pixel_histogram_is_the_per_image_per_channel_share_of_each_value():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    images[0] = 0  # all black
    out = pixel_histogram(images)
    assert out.shape == (5, 3 * 256) and out.dtype == np.float32
    for i in range(5):
        for c in range(3):
            counts, _ = np.histogram(images[i, :, :, c], bins=256, range=(0, 256))
            np.testing.assert_allclose(out[i, 256 * c:256 * (c + 1)],
                                       np.log(counts / 63 + 1e-3), rtol=1e-5, atol=1e-6)
    assert out[0, 0] == pytest.approx(np.log(1 + 1e-3), abs=1e-6) and out[0, 1] == pytest.approx(
        np.log(1e-3))


def test_log_spectrum_of_a_constant_and_of_a_cosine():
    n = 8
    flat = np.full((1, n, n, 3), 255, dtype=np.uint8)  # +1 in [-1, 1] everywhere
    spec = log_spectrum(flat).reshape(n, n)
    assert spec[n // 2, n // 2] == pytest.approx(np.log(n**4 + 1e-3))  # DC, centred: |sum|^2
    off = np.ones((n, n), bool)
    off[n // 2, n // 2] = False
    np.testing.assert_allclose(spec[off], np.log(1e-3), atol=1e-4)
    # A cosine of 2 cycles along x: power (n^2 / 2)^2 at x-frequencies +-2, nothing elsewhere.
    # Values 0 and 255 are exactly -1 and +1: at x = 1, 3, 5, 7, cos(pi x / 2) = 0 -> 127.5
    # cannot be stored, so use the cosine of period 4 sampled at its +-1 and 0 points.
    x = np.arange(n)
    cos = np.cos(2 * np.pi * 2 * x / n)  # 1, 0, -1, 0, ...
    img = np.round((cos + 1) * 127.5)[None, :].repeat(n, 0)  # rows identical
    spec = log_spectrum(img[None, :, :, None].astype(np.uint8)).reshape(n, n)
    x_values = (img / 127.5 - 1)[0]  # the exact stored values (0 -> +0.0039 after rounding)
    expected = np.abs(np.fft.fftshift(np.fft.fft2(np.tile(x_values, (n, 1))))) ** 2
    np.testing.assert_allclose(spec, np.log(expected + 1e-3), rtol=1e-4, atol=1e-4)
    assert expected[n // 2, n // 2 + 2] == pytest.approx((n * n / 2) ** 2, rel=1e-3)


def test_featurizer_puts_the_named_features_side_by_side():
    images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    fake_net = lambda x: x.reshape(len(x), -1)[:, :5].astype(np.float32)  # noqa: E731
    out = Featurizer(("spectrum", "featurenet", "histogram"), fake_net)(images)
    np.testing.assert_array_equal(out, np.concatenate(
        [log_spectrum(images), fake_net(images), pixel_histogram(images)], axis=1))


@pytest.mark.parametrize(("names", "net", "message"), [
    ((), None, "distinct names"),
    (("histogram", "histogram"), None, "distinct names"),
    (("colour",), None, "distinct names from \\['histogram', 'featurenet', 'spectrum'\\]"),
    (("featurenet",), None, "dvc repro featurenet"),
])
def test_featurizer_errors_name_the_problem(names, net, message):
    with pytest.raises(UserError, match=message):
        Featurizer(names, net)


def test_a_probe_separates_separable_sets_and_its_probabilities_agree():
    rng = np.random.default_rng(2)
    dark = rng.integers(0, 100, (60, 6, 6, 1), dtype=np.uint8)
    bright = rng.integers(156, 256, (60, 6, 6, 1), dtype=np.uint8)
    middle = rng.integers(100, 156, (60, 6, 6, 1), dtype=np.uint8)
    featurize = Featurizer(("histogram",))
    detector = train_probe([dark[:40], bright[:40]], featurize, c=1.0)
    p = detector(np.concatenate([dark[40:], bright[40:]]))
    assert p.shape == (40,) and (p[:20] < 0.5).all() and (p[20:] > 0.5).all()
    three = train_probe([dark[:40], bright[:40], middle[:40]], featurize, c=1.0)
    probs = three.class_probs(np.concatenate([dark[40:], bright[40:], middle[40:]]))
    assert probs.shape == (60, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert (probs.argmax(axis=1) == np.repeat([0, 1, 2], 20)).all()
    np.testing.assert_allclose(three(middle[40:]), 1 - probs[40:, 0])  # P(fake) = 1 - P(real)
    assert three(middle[:0]).shape == (0,)
    with pytest.raises(UserError, match="at least two non-empty"):
        train_probe([dark, middle[:0]], featurize)
