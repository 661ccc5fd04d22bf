"""A model that returns NaN for an image: the prediction fails with the reason (and can be retried),
it is never stored as a benign 0 %. The real mlcore.inference.predict_images runs on a stub model."""
from __future__ import annotations


import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from cases import prediction_states, scoring
from cases.models import LesionImage, Prediction
from mlcore.labels import CLASSES, MELANOMA_INDEX
from mlcore.scoring import Thresholds
from tests.support.imagegen import png
from tests.support.scoring_stubs import flat_image_prediction

pytestmark = pytest.mark.django_db


class NanForSomeImages:
    """Scores every image as a clear melanoma, except that the images whose first pixel is
    ``poison`` get NaN logits (as a broken network or a corrupt weight would)."""

    input_size = 8
    framing = "squash"
    temperature = 1.0
    thresholds = Thresholds(melanoma=0.3, malignancy=0.5)
    version = "unit-test-v1"
    assessment = None
    ood_detector = None

    def __init__(self, poison: set[int]):
        self.poison = poison
        self.batches: list[int] = []

    def predict_logits_and_features(self, batch: np.ndarray):
        self.batches.append(len(batch))
        logits = np.zeros((len(batch), len(CLASSES)), np.float32)
        logits[:, MELANOMA_INDEX] = 3.0
        for i, img in enumerate(batch):
            if int(img[0, 0, 0]) in self.poison:
                logits[i] = np.nan
        return logits, None


@pytest.fixture
def stub(monkeypatch):
    def install(poison: set[int]) -> NanForSomeImages:
        model = NanForSomeImages(poison)
        monkeypatch.setattr("mlcore.model_store.get_model", lambda path: model)
        monkeypatch.setattr("mlcore.explain.gradcam_overlay_png", lambda *a, **k: None)
        return model
    return install


def _pred(world, mv, i: int, grey: int) -> Prediction:
    return flat_image_prediction(world, mv, i, grey, prefix="n")


def test_nan_output_fails_the_prediction_with_its_reason_and_can_be_retried(world, model_version, stub):
    stub({200})
    p = _pred(world, model_version, 0, grey=200)
    assert scoring.run_prediction(prediction_id=p.pk) == "failed"
    p.refresh_from_db()
    assert p.status == Prediction.Status.FAILED
    assert p.error.startswith("The model returned a non-numeric output for this image")
    assert p.melanoma_probability is None and p.malignancy_score is None and not p.flagged
    world.lesion_a.refresh_from_db()
    assert not world.lesion_a.flagged  # neither benign nor flagged: failed, in the open
    assert prediction_states.retry_failed(p.pk)
    assert Prediction.objects.get(pk=p.pk).status == Prediction.Status.PENDING


def test_a_nan_batch_mate_fails_alone_and_the_others_are_stored(world, model_version, stub, settings):
    settings.SECONDLOOK_SCORE_BATCH = 4
    model = stub({50})
    own, bad, good = (_pred(world, model_version, 0, grey=120), _pred(world, model_version, 1, grey=50),
                      _pred(world, model_version, 2, grey=130))
    assert scoring.run_prediction(prediction_id=own.pk) == "done (flagged)"
    assert model.batches == [3]
    for p in (own, bad, good):
        p.refresh_from_db()
    assert own.status == good.status == Prediction.Status.DONE
    assert own.flagged and own.melanoma_probability > 0.5
    assert bad.status == Prediction.Status.FAILED and "non-numeric output" in bad.error
    assert bad.melanoma_probability is None


def test_a_stand_in_result_with_nan_is_not_clamped_to_zero(world, model_version, monkeypatch):
    """Defence in depth: a classifier that bypasses mlcore.inference and returns NaN fails when
    saving (``max(0.0, nan)`` would have stored 0 %)."""
    from tests.cases.test_batch_scoring import R

    monkeypatch.setattr("mlcore.model_store.get_model", lambda path: object())
    monkeypatch.setattr("mlcore.inference.predict_images",
                        lambda model, images, contexts=None: [R(melanoma_probability=float("nan"))])
    monkeypatch.setattr("mlcore.explain.gradcam_overlay_png", lambda *a, **k: None)
    name = default_storage.save("lesion-images/s.png", ContentFile(png(seed=1)))
    img = LesionImage.objects.create(lesion=world.lesion_a, file=name, sha256="a" * 64, size_bytes=10,
                                     width=96, height=64, uploaded_by=world.clin_a)
    p = Prediction.objects.create(image=img, model_version=model_version, enqueued_at=timezone.now())
    assert scoring.run_prediction(prediction_id=p.pk) == "failed"
    p.refresh_from_db()
    assert p.status == Prediction.Status.FAILED and "non-numeric score" in p.error
