"""pipeline.imaging: uint8 <-> [-1, 1] conversions and the PNG grid writer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.imaging import save_grid, to_uint8, to_unit_range


def test_to_unit_range_scales_uint8_nhwc_to_unit_range_nchw() -> None:
    x = np.array([0, 255, 128], dtype=np.uint8).reshape(1, 1, 3, 1)  # (B, H, W, C)
    for images in (x, torch.from_numpy(x)):
        y = to_unit_range(images)
        assert y.dtype == torch.float32 and y.shape == (1, 1, 1, 3)  # (B, C, H, W)
        assert torch.allclose(y.flatten(), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]),
                              atol=1e-6)


def test_round_trip_gives_back_every_pixel_value() -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)  # all 256 values
    rgb = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    for images in (pixels, rgb):
        np.testing.assert_array_equal(to_uint8(to_unit_range(images)), images)


def test_to_uint8_clamps_and_rounds() -> None:
    x = torch.tensor([-3.0, -1.0, 0.0, 0.999, 5.0]).reshape(1, 1, 1, 5)  # (B, C, H, W)
    assert to_uint8(x).ravel().tolist() == [0, 0, 128, 255, 255]


def test_read_only_arrays_convert_without_a_warning() -> None:
    x = np.zeros((2, 4, 4, 1), dtype=np.uint8)
    x.flags.writeable = False  # as arrays from Ray's object store are
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert to_unit_range(x).shape == (2, 1, 4, 4)


def test_float_input_is_refused_not_rescaled_twice() -> None:
    with pytest.raises(TypeError, match="uint8"):
        to_unit_range(torch.zeros(1, 4, 4, 1))


@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB")])
def test_save_grid_layout_and_pixels(tmp_path, channels: int, mode: str) -> None:
    images = np.random.default_rng(1).integers(0, 256, (5, 6, 4, channels), dtype=np.uint8)
    save_grid(to_unit_range(images), tmp_path / "g.png", nrow=3)
    grid = Image.open(tmp_path / "g.png")
    assert grid.mode == mode and grid.size == (3 * (4 + 2) + 2, 2 * (6 + 2) + 2)  # (W, H)
    px = np.asarray(grid).reshape(grid.size[1], grid.size[0], channels)
    # Image 4 is row 1, column 1: top-left at (2 + 1 * 8, 2 + 1 * 6); padding is black.
    np.testing.assert_array_equal(px[10:16, 8:12], images[4])
    assert px[:2].max() == 0 and px[:, :2].max() == 0
    assert not list(tmp_path.glob(".g.png.*"))  # no temp file left
