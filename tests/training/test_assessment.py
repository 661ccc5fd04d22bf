"""The parts that decide whether the model can judge an image: quality checks, out-of-domain
detector, conformal prediction sets, colour constancy, and the lesion-level bootstrap."""
from __future__ import annotations

import numpy as np
import pytest

from mlcore import conformal, ood, quality
from mlcore.colour import shades_of_gray


def _skin_image(seed: int = 0, size: int = 160) -> np.ndarray:
    """A dermoscopy-like picture: textured skin tone with a darker brown blob in the middle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    skin = np.array([205, 150, 125], np.float64) + rng.normal(0, 6, 3)
    lesion = np.array([120, 75, 55], np.float64)
    blob = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size * 0.25) ** 2
    img = np.where(blob[..., None], lesion, skin) + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def thresholds() -> dict:
    fitted = quality.fit_thresholds([quality.measure(_skin_image(s)) for s in range(200)])
    assert fitted["pass_rate"] >= quality.QUALITY_PASS_TARGET
    return fitted["thresholds"]


def test_quality_thresholds_keep_the_target_share_of_training_images():
    measures = [quality.measure(_skin_image(s)) for s in range(300)]
    fitted = quality.fit_thresholds(measures, target=0.98)
    th = fitted["thresholds"]
    passing = sum(not quality.check(_skin_image(s), th).failed for s in range(300))
    assert passing / 300 >= 0.98
    assert fitted["pass_rate"] < 1.0  # the bisection used the allowance: thresholds are not trivial


def test_a_blurred_image_fails_sharpness_with_a_plain_message(thresholds):
    import cv2

    blurred = cv2.GaussianBlur(_skin_image(1), (0, 0), 6)
    result = quality.check(blurred, thresholds)
    assert "sharpness" in result.failed
    assert any(m.startswith("blurred: retake") for m in result.messages)
    assert quality.check(_skin_image(1), thresholds).ok


def test_under_and_over_exposure_are_reported(thresholds):
    dark = (_skin_image(2).astype(np.float64) * 0.15).astype(np.uint8)
    bright = np.clip(_skin_image(2).astype(np.float64) * 2.5, 0, 255).astype(np.uint8)
    assert "brightness_low" in quality.check(dark, thresholds).failed
    assert set(quality.check(bright, thresholds).failed) & {"brightness_high", "clipped"}


def test_non_skin_content_and_a_heavy_black_border_are_reported(thresholds):
    blue = np.zeros((160, 160, 3), np.uint8)
    blue[...] = (40, 90, 200)
    blue = np.clip(blue + np.random.default_rng(0).normal(0, 12, blue.shape), 0, 255).astype(np.uint8)
    assert "skin" in quality.check(blue, thresholds).failed
    ringed = _skin_image(3)
    yy, xx = np.mgrid[0:160, 0:160]
    ringed[((yy - 80) ** 2 + (xx - 80) ** 2) > 45 ** 2] = 0
    result = quality.check(ringed, thresholds)
    assert "border" in result.failed
    assert any("black border" in m for m in result.messages)


def test_mahalanobis_detector_passes_in_domain_and_catches_far_features():
    rng = np.random.default_rng(0)
    means = rng.normal(0, 3, (3, 16))
    labels = np.repeat(np.arange(3), 200)
    train = means[labels] + rng.normal(0, 1, (600, 16))
    val = means[labels[:300]] + rng.normal(0, 1, (300, 16))
    det = ood.fit(train, labels)
    det.threshold = ood.threshold_for(det.score(val), 0.95)
    assert np.mean(~det.unfamiliar(val)) == pytest.approx(0.95, abs=0.01)
    far = rng.normal(0, 1, (50, 16)) + 15.0
    assert det.unfamiliar(far).all()


def test_detector_round_trips_through_its_file(tmp_path):
    rng = np.random.default_rng(1)
    det = ood.fit(rng.normal(size=(100, 8)), np.repeat([0, 1], 50))
    det.threshold = 12.5
    det.save(tmp_path / "ood.npz")
    back = ood.MahalanobisDetector.load(tmp_path / "ood.npz")
    x = rng.normal(size=(5, 8))
    np.testing.assert_allclose(back.score(x), det.score(x), rtol=1e-5)
    assert back.threshold == 12.5


def test_conformal_sets_reach_their_coverage_on_exchangeable_data():
    rng = np.random.default_rng(0)
    k, n = 5, 4000
    logits = rng.normal(0, 1, (n, k)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    truth = np.array([rng.choice(k, p=p) for p in probs])  # labels drawn from the probabilities
    masks = np.eye(k)[truth]
    floor = conformal.fit_threshold(probs[:2000], masks[:2000], coverage=0.9)
    held = conformal.coverage_and_size(probs[2000:], masks[2000:], floor)
    assert held["coverage"] == pytest.approx(0.9, abs=0.025)
    assert 1.0 <= held["mean_set_size"] < k
    sets = conformal.prediction_sets(probs, 1.1)  # a floor nothing reaches: the top class stays
    assert (sets.sum(1) == 1).all()


def test_conformal_counts_an_ambiguous_label_as_covered_by_either_class():
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    masks = np.array([[0, 1, 1], [1, 0, 0]], float)  # first image: class 1 or 2
    res = conformal.coverage_and_size(probs, masks, floor=0.25)
    assert res["coverage"] == 0.5  # image 1: {0, 1} meets {1, 2}; image 2: {2} misses {0}


def test_shades_of_gray_removes_a_colour_cast_and_keeps_a_neutral_image():
    img = _skin_image(4).astype(np.float32)
    cast = np.clip(img * np.array([1.0, 0.8, 0.6], np.float32), 0, 255)
    a, b = shades_of_gray(img), shades_of_gray(cast)
    # the illuminant is divided out: both end up with nearly the same channel balance
    ratio = lambda x: x.reshape(-1, 3).mean(0) / x.mean()  # noqa: E731
    np.testing.assert_allclose(ratio(a), ratio(b), atol=0.03)
    grey = np.full((8, 8, 3), 100, np.float32)
    np.testing.assert_allclose(shades_of_gray(grey), grey, atol=0.01)


def test_colour_constancy_layer_matches_the_numpy_reference():
    import keras

    from training.model import build_model

    model = build_model(32, 9, width=8, stages=(1, 1), colour_constancy="shades_of_gray")
    layer = keras.Model(model.input, model.get_layer("colour_constancy").output)
    x = np.stack([_skin_image(s, 32) for s in range(4)]).astype(np.float32) * np.array([1, 0.7, 0.5], np.float32)
    np.testing.assert_allclose(np.asarray(layer(x)), shades_of_gray(x), atol=1e-3)


def test_cluster_bootstrap_is_wider_when_images_repeat_a_lesion():
    from training.evaluate import bootstrap_ci

    rng = np.random.default_rng(0)
    # 40 lesions, 10 near-identical images each: 400 images but only 40 independent draws
    y = np.repeat(rng.integers(0, 2, 40).astype(bool), 10)
    s = np.repeat(rng.normal(size=40), 10) + y * 0.8 + rng.normal(0, 0.01, 400)
    lesions = np.repeat(np.arange(40), 10)
    from training.evaluate import _auc

    lo_i, hi_i = bootstrap_ci(_auc, [y, s], 300, 0)
    lo_l, hi_l = bootstrap_ci(_auc, [y, s], 300, 0, clusters=lesions)
    assert (hi_l - lo_l) > 2 * (hi_i - lo_i)


@pytest.mark.slow
def test_the_checks_are_fitted_on_the_features_the_app_serves_under_tta(tmp_path, monkeypatch):
    """A model served with test-time augmentation averages its logits and features over the views
    before the out-of-domain detector and the prediction sets read them: the assessment is fitted
    and measured on those same averaged outputs, not on a single view."""
    from mlcore.model_store import load_model
    from training import assessment
    from training.testing import make_tiny_model_dir

    real = assessment.logits_and_features
    seen = []

    def spy(keras_model, images, batch_size=128, tta="none"):
        seen.append(tta)
        return real(keras_model, images, batch_size, tta)

    monkeypatch.setattr(assessment, "logits_and_features", spy)
    out = make_tiny_model_dir(tmp_path / "flip2", assessed=True, tta="flip2")
    assert seen and set(seen) == {"flip2"}
    m = load_model(out)
    assert m.tta == "flip2" and m.ood_detector is not None
    x = np.random.default_rng(3).integers(0, 256, (4, m.input_size, m.input_size, 3)).astype(np.float32)
    served_logits, served_features = m.predict_logits_and_features(x)
    logits, features = real(m.keras_model, x, tta="flip2")
    np.testing.assert_allclose(features, served_features, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(logits, served_logits, rtol=1e-3, atol=1e-3)
    assert not np.allclose(real(m.keras_model, x)[1], served_features, rtol=1e-3, atol=1e-3)
