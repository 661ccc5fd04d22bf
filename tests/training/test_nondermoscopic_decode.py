"""The non-dermoscopic measurement set decodes package images the way the app does."""
from __future__ import annotations

import numpy as np
from PIL import Image


def test_an_rgba_png_is_composited_on_white_as_the_app_does(tmp_path, monkeypatch):
    import matplotlib

    from mlcore.imageio import decode_file
    from training import nondermoscopic

    sample = tmp_path / "sample_data"
    sample.mkdir()
    logo = Image.new("RGBA", (40, 20), (0, 0, 0, 0))  # transparent, black underneath
    logo.paste((200, 30, 30, 255), (0, 0, 20, 20))
    logo.save(sample / "logo2.png")
    monkeypatch.setattr(matplotlib, "get_data_path", lambda: str(tmp_path))

    images = dict(nondermoscopic._other_package_images())
    got = images["matplotlib-logo2"]
    assert got.dtype == np.uint8 and got.shape == (20, 40, 3)
    assert tuple(got[10, 5]) == (200, 30, 30)
    assert tuple(got[10, 35]) == (255, 255, 255)  # PIL's convert("RGB") gave black here
    np.testing.assert_array_equal(got, decode_file(sample / "logo2.png"))
