"""A NaN or infinite model output is never a result: ``nan >= threshold`` is False and a clamped
NaN is 0.0, so it would read as a confident benign score. mlcore.inference fails those images
with a specific error (NonFiniteOutputError) and still returns the other images' predictions."""
from __future__ import annotations

import numpy as np
import pytest

from mlcore import ood
from mlcore.inference import NonFiniteOutputError, predict_images
from mlcore.labels import CLASSES, MELANOMA_INDEX
from mlcore.scoring import Thresholds


class StubModel:
    """The attributes predict_images reads, with fixed logits per image (no TensorFlow)."""

    input_size = 8
    framing = "squash"
    temperature = 1.0
    thresholds = Thresholds(melanoma=0.3, malignancy=0.5)
    version = "stub-nan"

    def __init__(self, logits: np.ndarray, *, ood_scores: np.ndarray | None = None):
        self._logits = np.asarray(logits, np.float32)
        self.assessment = None
        self.ood_detector = None
        if ood_scores is not None:
            # every quality check disabled (no thresholds): only the out-of-domain score decides
            self.assessment = {"quality": {"thresholds": {}}}
            self.ood_detector = _StubDetector(np.asarray(ood_scores, np.float64))

    def predict_logits_and_features(self, batch: np.ndarray):
        features = None if self.ood_detector is None else np.zeros((len(batch), 4), np.float32)
        return self._logits[:len(batch)], features


class _StubDetector:
    threshold = 1.5

    def __init__(self, scores: np.ndarray):
        self._scores = scores

    def score(self, features: np.ndarray) -> np.ndarray:
        return self._scores[:len(features)]


def _images(n: int) -> list[np.ndarray]:
    return [np.full((8, 8, 3), 100 + i, np.uint8) for i in range(n)]


def _logits(n: int) -> np.ndarray:
    out = np.zeros((n, len(CLASSES)), np.float32)
    out[:, MELANOMA_INDEX] = 3.0  # a clear flag when finite: a NaN must not turn it into "benign"
    return out


def test_nan_logits_fail_that_image_and_keep_the_others():
    logits = _logits(3)
    logits[1, MELANOMA_INDEX] = np.nan
    with pytest.raises(NonFiniteOutputError) as caught:
        predict_images(StubModel(logits), _images(3))
    err = caught.value
    assert set(err.reasons) == {1}
    assert err.reasons[1].startswith("The model returned a non-numeric output for this image")
    assert "melanoma probability" in err.reasons[1] and "logits" in err.reasons[1]
    assert err.results[1] is None
    for kept in (err.results[0], err.results[2]):
        assert kept.flagged and kept.melanoma_probability > 0.5
        assert np.isfinite(list(kept.class_probabilities.values())).all()


def test_an_infinite_logit_is_refused_too():
    """softmax of +inf is NaN; -inf gives a finite 0 %, but the network is broken all the same."""
    logits = _logits(2)
    logits[0, 0] = np.inf
    logits[1, 0] = -np.inf
    with pytest.raises(NonFiniteOutputError) as caught:
        predict_images(StubModel(logits), _images(2))
    assert set(caught.value.reasons) == {0, 1}
    assert caught.value.results == [None, None]
    assert "non-numeric output" in str(caught.value)


def test_a_nan_out_of_domain_distance_is_not_called_familiar():
    with pytest.raises(NonFiniteOutputError) as caught:
        predict_images(StubModel(_logits(2), ood_scores=np.array([0.5, np.nan])), _images(2))
    err = caught.value
    assert set(err.reasons) == {1} and "out-of-domain distance" in err.reasons[1]
    assert err.results[0].assessable and err.results[0].assessment["ood"]["unfamiliar"] is False


def test_finite_outputs_are_unchanged():
    preds = predict_images(StubModel(_logits(2), ood_scores=np.array([0.5, 3.0])), _images(2))
    assert [p.assessable for p in preds] == [True, False]
    assert all(p.flagged for p in preds)


def test_detector_never_calls_a_nan_distance_familiar_and_refuses_a_nan_threshold(tmp_path):
    det = ood.MahalanobisDetector([ood._Part(0, 2, np.zeros((1, 2)), np.eye(2))], threshold=1.0)
    assert det.unfamiliar(np.array([[0.1, 0.1], [np.nan, 0.0], [5.0, 5.0]])).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="NaN or infinite"):
        ood.threshold_for(np.array([0.1, np.nan, 0.3]))
    det.threshold = float("nan")
    det.save(tmp_path / "ood.npz")
    with pytest.raises(ValueError, match="threshold"):
        ood.MahalanobisDetector.load(tmp_path / "ood.npz")
