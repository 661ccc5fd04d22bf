"""Lesion-centred framing (mlcore.framing): where the crop lands, when it falls back to the whole
frame, and that training (the decode cache) and inference frame an image identically."""
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mlcore.framing import frame, lesion_box, lesion_crop_box
from mlcore.preprocess import decode_image, prepare_batch


def skin(h: int = 450, w: int = 600, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (225, 180, 160), np.float32) + rng.normal(0, 4, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def with_lesion(img: np.ndarray, cx: int, cy: int, rx: int, ry: int) -> np.ndarray:
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    out = img.copy()
    out[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = (90, 55, 40)
    return out


def test_the_box_is_the_lesions_and_the_crop_is_a_square_around_it():
    img = with_lesion(skin(), cx=260, cy=240, rx=60, ry=40)
    x0, y0, x1, y1 = lesion_box(img)
    assert abs(x0 - 200) <= 8 and abs(x1 - 320) <= 8 and abs(y0 - 200) <= 8 and abs(y1 - 280) <= 8
    cx0, cy0, cx1, cy1 = lesion_crop_box(img)
    side = cx1 - cx0
    assert side == cy1 - cy0 and abs(side - 180) <= 8  # 1.5 x the longer side of the lesion (120 px)
    assert cx0 <= x0 and cy0 <= y0 and cx1 >= x1 and cy1 >= y1
    assert frame(img, "lesion").shape == (side, side, 3)


def test_a_lesion_near_the_edge_is_cropped_inside_the_image():
    img = with_lesion(skin(), cx=150, cy=120, rx=70, ry=70)
    x0, y0, x1, y1 = lesion_crop_box(img)
    assert x0 >= 0 and y0 >= 0 and x1 <= 600 and y1 <= 450 and x1 - x0 == y1 - y0


def test_the_same_lesion_at_two_zooms_fills_the_model_input_alike():
    """The point of the framing: the lesion's size in the input no longer depends on the device."""
    near = with_lesion(skin(), cx=300, cy=225, rx=120, ry=120)
    far = with_lesion(skin(), cx=300, cy=225, rx=50, ry=50)

    def lesion_share(img, framing):
        x = prepare_batch([img], 64, framing)[0]
        return float((x.mean(-1) < 120).mean())

    assert lesion_share(near, "squash") > 4 * lesion_share(far, "squash")
    assert lesion_share(near, "lesion") == pytest.approx(lesion_share(far, "lesion"), abs=0.05)
    assert lesion_share(far, "lesion") > 0.25


@pytest.mark.parametrize("img", [np.full((300, 300, 3), 200, np.uint8), np.zeros((300, 300, 3), np.uint8)],
                         ids=["flat", "black"])
def test_no_lesion_keeps_the_whole_frame(img):
    assert lesion_box(img) is None
    assert lesion_crop_box(img) == (0, 0, 300, 300)
    assert frame(img, "lesion").shape == img.shape


def test_the_dermatoscopes_black_border_is_not_taken_for_the_lesion():
    img = with_lesion(skin(500, 500), cx=250, cy=250, rx=50, ry=50)
    yy, xx = np.mgrid[:500, :500]
    img[(xx - 250) ** 2 + (yy - 250) ** 2 > 240 ** 2] = 5  # a circular vignette
    x0, y0, x1, y1 = lesion_box(img)
    assert 190 <= x0 <= 210 and 290 <= x1 <= 310


def test_squash_is_the_identity_and_an_unknown_framing_is_refused():
    img = skin(40, 60)
    assert frame(img, "squash") is img
    with pytest.raises(ValueError, match="framing must be one of"):
        frame(img, "pad")


def test_training_cache_and_inference_frame_an_image_identically(tmp_path):
    from training.cache import load_images

    paths = []
    for i, (cx, r) in enumerate(((200, 50), (350, 90), (300, 30))):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(with_lesion(skin(seed=i), cx=cx, cy=220, rx=r, ry=r)).save(path)
        paths.append(str(path))
    cached = load_images(paths, 64, tmp_path / "cache", workers=1, progress=False, framing="lesion")
    served = prepare_batch([decode_image(open(p, "rb").read(), target_size=64) for p in paths], 64, "lesion")
    assert np.array_equal(cached.astype(np.float32), served)
    squashed = load_images(paths, 64, tmp_path / "cache", workers=1, progress=False)
    assert not np.array_equal(cached, squashed)  # a cache per framing, never mixed up
    assert np.array_equal(load_images(paths, 64, tmp_path / "cache", workers=1, progress=False,
                                      framing="lesion"), cached)


@pytest.fixture
def framed_dir(tmp_path, tiny_model_dir):
    """The tiny model with ``framing: lesion`` in its card."""
    path = tmp_path / "framed"
    shutil.copytree(tiny_model_dir, path)
    card = json.loads((path / "model_card.json").read_text())
    card["framing"] = "lesion"
    (path / "model_card.json").write_text(json.dumps(card))
    return path


def test_a_model_card_chooses_the_framing_inference_uses(framed_dir, tiny_model_dir):
    from mlcore.inference import predict_images
    from mlcore.model_store import load_model

    img = with_lesion(skin(), cx=200, cy=200, rx=40, ry=40)
    squash = load_model(tiny_model_dir)
    assert squash.framing == "squash"
    framed = load_model(framed_dir)
    assert framed.framing == "lesion"
    by_framing = predict_images(framed, [img])[0].class_probabilities
    by_crop = predict_images(squash, [frame(img, "lesion")])[0].class_probabilities
    assert by_framing == pytest.approx(by_crop, abs=1e-6)
    assert predict_images(squash, [img])[0].class_probabilities != pytest.approx(by_crop, abs=1e-6)


def test_the_heatmap_of_a_framing_model_covers_the_crop_only(framed_dir):
    from mlcore.explain import gradcam
    from mlcore.model_store import load_model

    img = with_lesion(skin(), cx=200, cy=200, rx=40, ry=40)
    cam = gradcam(load_model(framed_dir), img)
    assert cam.shape == img.shape[:2]
    x0, y0, x1, y1 = lesion_crop_box(img)
    outside = np.ones(cam.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert cam[outside].max() == 0.0


def test_a_training_config_refuses_an_unknown_framing_and_old_cards_squash():
    from training.config import TrainConfig

    with pytest.raises(ValueError, match="framing must be one of"):
        TrainConfig(framing="pad")
    assert TrainConfig.from_dict({"seed": 1}).framing == "squash"
    assert TrainConfig.from_dict({"framing": "lesion"}).framing == "lesion"


def test_the_overlay_outlines_what_a_framing_model_looked_at(framed_dir, tiny_model_dir):
    from mlcore.explain import CROP_OUTLINE, gradcam_overlay_png
    from mlcore.model_store import load_model

    img = with_lesion(skin(), cx=200, cy=200, rx=40, ry=40)
    x0, y0, x1, y1 = lesion_crop_box(img)
    framed = np.asarray(Image.open(io.BytesIO(gradcam_overlay_png(load_model(framed_dir), img))))
    plain = np.asarray(Image.open(io.BytesIO(gradcam_overlay_png(load_model(tiny_model_dir), img))))
    assert tuple(framed[y0, (x0 + x1) // 2]) == CROP_OUTLINE and tuple(framed[(y0 + y1) // 2, x1 - 1]) == CROP_OUTLINE
    assert tuple(plain[y0, (x0 + x1) // 2]) != CROP_OUTLINE
