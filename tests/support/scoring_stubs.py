"""Stand-ins for the classifier in scoring tests: a result object, a fixture body that makes every
forward pass return it, and a flat image's pending prediction."""
from __future__ import annotations

import io
from dataclasses import dataclass, field

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from cases.models import LesionImage, Prediction
from mlcore.labels import CLASSES
from tests.support.imagegen import png


@dataclass
class StandInScore:
    """What mlcore.inference.predict_images returns per image, with settable fields."""

    melanoma_probability: float = 0.1
    malignancy_score: float = 0.1
    flagged: bool = False
    flag_reasons: list = field(default_factory=list)
    inference_ms: float = 5.0
    model_version: str = "unit-test-v1"
    class_probabilities: dict = field(default_factory=lambda: {c: 1 / len(CLASSES) for c in CLASSES})
    assessable: bool = True
    assessment_notes: list = field(default_factory=list)


def counted_passes(monkeypatch, make_result=StandInScore) -> list[int]:
    """Make scoring load no model and give ``make_result()`` per image, no heatmap; returns the list
    of how many images each forward pass saw (filled as scoring runs)."""
    seen: list[int] = []

    def predict_images(model, images, contexts=None):
        seen.append(len(images))
        return [make_result() for _ in images]

    monkeypatch.setattr("mlcore.model_store.get_model", lambda path: object())
    monkeypatch.setattr("mlcore.inference.predict_images", predict_images)
    monkeypatch.setattr("mlcore.explain.gradcam_overlay_png", lambda *a, **k: None)
    return seen


def every_image_scores(monkeypatch, result: StandInScore) -> StandInScore:
    """Make scoring load no model and give ``result`` (with a heatmap) for each forward pass."""
    monkeypatch.setattr("mlcore.model_store.get_model", lambda path: object())
    monkeypatch.setattr("mlcore.inference.predict_images", lambda model, images, contexts=None: [result])
    monkeypatch.setattr("mlcore.explain.gradcam_overlay_png", lambda *a, **k: png(size=(96, 64), seed=3))
    return result


def flat_image_prediction(world, model_version, i: int, grey: int, *, prefix: str = "f") -> Prediction:
    """A pending, enqueued prediction of a flat 16 px image of lesion A whose pixels are all ``grey``."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (grey, grey, grey)).save(buf, "PNG")
    name = default_storage.save(f"lesion-images/{prefix}{i}.png", ContentFile(buf.getvalue()))
    img = LesionImage.objects.create(lesion=world.lesion_a, file=name, sha256=f"{i:064x}", size_bytes=10,
                                     width=16, height=16, uploaded_by=world.clin_a)
    return Prediction.objects.create(image=img, model_version=model_version, enqueued_at=timezone.now())
