"""pipeline.forensics.probe: its features against independent references (np.histogram per
image, the DFT of a constant and of a pure cosine, pixel pairs counted one by one, ramps), and
the probe's probabilities."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from pipeline.config import ProbeFeature
from pipeline.errors import UserError
from pipeline.forensics.probe import (
    DIRECTIONS,
    PROBE_FEATURES,
    Featurizer,
    log_spectrum,
    pixel_histogram,
    residual_cooccurrence,
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


def _cooccurrence_by_loops(image: np.ndarray, t: int) -> np.ndarray:
    """The reference: (C, 4, 2t+1, 2t+1) shares, every pixel triple visited one by one."""
    h, w, c = image.shape
    x = image.astype(int)
    k = 2 * t + 1
    counts = np.zeros((c, len(DIRECTIONS), k, k))
    for ch in range(c):
        for d, (dy, dx) in enumerate(DIRECTIONS):
            for r in range(h):
                for col in range(w):
                    r2, c2 = r + 2 * dy, col + 2 * dx
                    if not (0 <= r2 < h and 0 <= c2 < w):
                        continue
                    p0, p1, p2 = x[r, col, ch], x[r + dy, col + dx, ch], x[r2, c2, ch]
                    a, b = min(max(p1 - p0, -t), t), min(max(p2 - p1, -t), t)
                    counts[ch, d, a + t, b + t] += 1
    return counts / counts.sum(axis=(2, 3), keepdims=True)


@pytest.mark.parametrize(("shape", "t"), [((6, 5, 1), 3), ((5, 7, 3), 2)])
def test_residual_cooccurrence_counts_every_pixel_triple(shape, t):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, *shape), dtype=np.uint8)
    images[1] = rng.integers(100, 106, shape)  # small differences: inside the clip range
    out = residual_cooccurrence(images, t)
    k = 2 * t + 1
    assert out.shape == (3, shape[2] * 4 * k * k) and out.dtype == np.float32
    for i in range(3):
        expected = np.log(_cooccurrence_by_loops(images[i], t) + 1e-3).ravel()
        np.testing.assert_allclose(out[i], expected, rtol=1e-5, atol=1e-6)


def test_residual_cooccurrence_of_a_ramp_is_one_pair_per_direction():
    """x = 2 * column: differences +2 to the right, 0 down, +2 down-right, -2 down-left."""
    t, k = 3, 7
    ramp = (2 * np.arange(6))[None, :].repeat(5, 0).astype(np.uint8)[None, :, :, None]
    share = np.exp(residual_cooccurrence(ramp, t).reshape(4, k, k)) - 1e-3
    for d, diff in enumerate((2, 0, 2, -2)):
        expected = np.zeros((k, k))
        expected[diff + t, diff + t] = 1.0
        np.testing.assert_allclose(share[d], expected, atol=1e-6)


def test_the_config_offers_exactly_the_probe_features():
    """Every name params.yaml may give is one the Featurizer computes."""
    assert set(typing.get_args(ProbeFeature)) == set(PROBE_FEATURES)
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    fake_net = lambda x: x.reshape(len(x), -1)[:, :5].astype(np.float32)  # noqa: E731
    for name in PROBE_FEATURES:
        out = Featurizer((name,), featurenet=fake_net)(images)
        assert out.shape[0] == 3 and out.shape[1] > 0 and np.isfinite(out).all(), name


def test_featurizer_puts_the_named_features_side_by_side():
    images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    fake_net = lambda x: x.reshape(len(x), -1)[:, :5].astype(np.float32)  # noqa: E731
    out = Featurizer(("spectrum", "featurenet", "cooccurrence", "histogram"), fake_net)(images)
    np.testing.assert_array_equal(out, np.concatenate(
        [log_spectrum(images), fake_net(images), residual_cooccurrence(images),
         pixel_histogram(images)], axis=1))


@pytest.mark.parametrize(("names", "net", "message"), [
    ((), None, "distinct names"),
    (("histogram", "histogram"), None, "distinct names"),
    (("colour",), None, "distinct names from \\['histogram', 'featurenet', 'spectrum', "
                        "'cooccurrence'\\]"),
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
