"""An image with an embedded colour profile decodes to the same sRGB pixels in the app (upload
normalisation) and in every mlcore decode path (CLI, evaluation, benchmarks, training cache)."""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageCms

from mlcore.imageio import decode_bytes, decode_file, to_rgb_uint8
from mlcore.inference import decode_for
from tests.support.imagegen import SRGB_PRIMARIES, encode, pattern, rgb_icc_profile, upload

# Adobe RGB (1998)'s primaries (XYZ, adapted to D50) and gamma: a wide-gamut camera profile
ADOBE_RGB_PRIMARIES = ((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
PROFILES = {
    "adobe-rgb-like": rgb_icc_profile(ADOBE_RGB_PRIMARIES, gamma=2.2, description="Adobe RGB like"),
    "red-green-swapped": rgb_icc_profile((SRGB_PRIMARIES[1], SRGB_PRIMARIES[0], SRGB_PRIMARIES[2]),
                                         description="red and green swapped"),
}
STAND_IN_MODEL = SimpleNamespace(input_size=224)  # images below 2 x 4 x 224 px are decoded in full


def _uploaded_pixels(data: bytes, name: str) -> np.ndarray:
    from cases.uploads import normalise_upload

    stored = normalise_upload(upload(name, data))
    with Image.open(io.BytesIO(stored.content)) as image:
        assert "icc_profile" not in image.info
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_profiled_image_decodes_to_the_same_pixels_in_the_app_and_in_mlcore(fmt, profile, tmp_path):
    data = encode(pattern((96, 64), seed=11), fmt, icc_profile=PROFILES[profile],
                  **({"quality": 95} if fmt == "JPEG" else {}))
    path = tmp_path / f"tagged.{fmt.lower()}"
    path.write_bytes(data)
    with Image.open(io.BytesIO(data)) as image:
        assert image.info.get("icc_profile") == PROFILES[profile]
        raw = np.asarray(image.convert("RGB"))  # the file's numbers, no profile applied

    uploaded = _uploaded_pixels(data, path.name)
    assert not np.array_equal(uploaded, raw)  # the profile moves the colours: the check means something
    np.testing.assert_array_equal(decode_for(STAND_IN_MODEL, data), uploaded)
    np.testing.assert_array_equal(decode_bytes(data), uploaded)
    np.testing.assert_array_equal(decode_file(path), uploaded)


def test_orientation_and_profile_are_applied_alike():
    image = pattern((96, 64), seed=12)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(image, "JPEG", quality=95, icc_profile=PROFILES["adobe-rgb-like"], exif=exif.tobytes())
    uploaded = _uploaded_pixels(data, "rotated.jpg")
    assert uploaded.shape == (96, 64, 3)
    np.testing.assert_array_equal(decode_for(STAND_IN_MODEL, data), uploaded)


def test_there_is_one_colour_conversion():
    import cases.uploads
    import mlcore.imageio

    assert cases.uploads.to_srgb is mlcore.imageio.to_srgb


def test_an_srgb_profile_or_none_leaves_the_pixels_as_they_are():
    image = pattern((64, 48), seed=13)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for params in ({}, {"icc_profile": srgb}):
        with Image.open(io.BytesIO(encode(image, "PNG", **params))) as opened:
            opened.load()
            np.testing.assert_array_equal(to_rgb_uint8(opened), np.asarray(image))


def test_a_profile_that_cannot_be_applied_keeps_the_pixels_in_mlcore_too():
    image = pattern((64, 48), seed=14)
    data = encode(image, "PNG", icc_profile=b"not an ICC profile at all")
    np.testing.assert_array_equal(decode_bytes(data), np.asarray(image))
