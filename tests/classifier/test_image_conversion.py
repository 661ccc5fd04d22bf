"""One conversion to 8-bit RGB: a PIL image and the same pixels as an array give the same result."""
import io

import numpy as np
from PIL import Image

from mlcore.imageio import as_rgb_array, decode_bytes, to_rgb_image


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_16_bit_greyscale_is_scaled_and_rounded_the_same_way():
    pixels = np.array([[0, 128, 257, 300], [32896, 65278, 65535, 1000]], np.uint16)
    via_pil = np.asarray(to_rgb_image(Image.fromarray(pixels)))
    via_array = as_rgb_array(pixels)
    np.testing.assert_array_equal(via_pil, via_array)
    assert via_pil[1, 2].tolist() == [255, 255, 255] and via_pil[0, 2].tolist() == [1, 1, 1]
    np.testing.assert_array_equal(decode_bytes(_png(Image.fromarray(pixels))), via_array)


def test_alpha_is_composited_on_white_the_same_way():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    via_pil = np.asarray(to_rgb_image(Image.fromarray(rgba, "RGBA"))).astype(int)
    via_array = as_rgb_array(rgba).astype(int)
    assert np.abs(via_pil - via_array).max() <= 1  # PIL composites in integer arithmetic
    assert as_rgb_array(np.dstack([rgba[..., :3], np.zeros((6, 7), np.uint8)])).min() == 255


def test_floats_in_unit_range_and_greyscale():
    grey = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    out = as_rgb_array(grey)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and out[1, 1, 0] == round(5 / 11 * 255)
