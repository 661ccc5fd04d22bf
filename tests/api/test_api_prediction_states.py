"""A prediction without a finished score has no result: the API says null, never the record's
defaults (flagged false, assessable true), and a finished one says which clinical context it used."""
from __future__ import annotations

import pytest
from django.utils import timezone

from cases.models import Prediction
from classifier.models import ModelVersion
from tests.support.case_helpers import make_image

# the fields that only a finished score gives
RESULT_FIELDS = ("flagged", "assessable", "flag_reasons", "assessment_notes", "assessment", "clinical_context",
                 "melanoma_probability", "malignancy_score", "class_probabilities", "prediction_set")


def _unfinished(world, status: str, sha: str) -> Prediction:
    """A prediction in ``status`` whose record holds the model's defaults, and for a failed one
    leftovers that must not be read as a result (a stored flag, notes, a context)."""
    extra = {"started_at": timezone.now()} if status == "running" else {}
    if status == "failed":
        extra = {"error": "worker died", "attempts": 3, "flagged": True, "flag_reasons": ["stale"],
                 "assessment_notes": ["stale"], "clinical_context": {"age": 60.0, "sex": "male", "site": "back"}}
    return Prediction.objects.create(image=make_image(world, sha=sha), model_version=ModelVersion.objects.get(),
                                     status=status, **extra)


@pytest.mark.parametrize("status", ["pending", "running", "failed"])
def test_an_unfinished_prediction_has_null_flag_and_assessability(api, world, status):
    prediction = _unfinished(world, status, sha="c" * 64)
    assert prediction.assessable is True and prediction.flagged is (status == "failed")  # what the record holds
    row = api.clin_a.get(f"/api/v1/predictions/{prediction.pk}/").json()
    assert row["status"] == status
    for name in RESULT_FIELDS:
        assert name in row and row[name] is None, (name, row[name])
    image = api.clin_a.get(f"/api/v1/images/{prediction.image_id}/").json()
    for shown in (image["latest_prediction"], image["current_prediction"]):
        assert shown["id"] == prediction.pk and shown["flagged"] is None and shown["assessable"] is None
    (listed,) = api.clin_a.get(f"/api/v1/predictions/?image={prediction.image_id}").json()["results"]
    assert listed["flagged"] is None and listed["assessable"] is None and listed["clinical_context"] is None
    if status == "failed":
        assert row["error"] == "worker died" and row["attempts"] == 3


def test_a_done_prediction_gives_booleans_and_the_clinical_context_it_used(api, world):
    context = {"age": 64.0, "sex": "female", "site": "posterior torso"}
    with_context = Prediction.objects.create(
        image=make_image(world, sha="d" * 64), model_version=ModelVersion.objects.get(), status="done",
        melanoma_probability=0.1, malignancy_score=0.2, flagged=False, assessable=True,
        class_probabilities={"nevus": 0.9, "melanoma": 0.1}, clinical_context=context, finished_at=timezone.now())
    image_alone = Prediction.objects.create(
        image=make_image(world, sha="e" * 64), model_version=ModelVersion.objects.get(), status="done",
        melanoma_probability=0.8, malignancy_score=0.9, flagged=True, flag_reasons=["melanoma above threshold"],
        finished_at=timezone.now())
    row = api.clin_a.get(f"/api/v1/predictions/{with_context.pk}/").json()
    assert row["flagged"] is False and row["assessable"] is True
    assert row["flag_reasons"] == [] and row["assessment_notes"] == []
    assert row["clinical_context"] == context and row["melanoma_probability"] == 0.1
    alone = api.clin_a.get(f"/api/v1/predictions/{image_alone.pk}/").json()
    assert alone["flagged"] is True and alone["assessable"] is True
    assert alone["flag_reasons"] == ["melanoma above threshold"]
    assert "clinical_context" in alone and alone["clinical_context"] is None


def test_the_schema_documents_null_results_and_the_clinical_context(api):
    schema = api.anonymous.get("/api/v1/schema/?format=json").json()
    prediction = schema["components"]["schemas"]["Prediction"]
    props = prediction["properties"]
    for name in ("flagged", "assessable"):
        assert props[name]["type"] == "boolean" and props[name]["nullable"] is True
        assert "null until the score is made" in props[name]["description"]
    for name in ("flag_reasons", "assessment_notes"):
        assert props[name]["type"] == "array" and props[name]["items"] == {"type": "string"}
        assert props[name]["nullable"] is True and "null until the score is made" in props[name]["description"]
    context = props["clinical_context"]
    assert context["nullable"] is True and context["readOnly"] is True
    assert set(context["properties"]) == {"age", "sex", "site"}
    assert "clinical_context" in prediction["required"]
