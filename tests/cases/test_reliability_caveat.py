"""The result page says when the model measured worse (or could not be measured) for the patient's age."""
from __future__ import annotations

import pytest
from django.utils import timezone

from cases.models import Patient, Prediction
from cases.presentation import age_caveat
from tests.support.case_helpers import make_image

METRICS = {
    "melanoma_auc": 0.88,
    "operating_points": {"melanoma": {"sensitivity": 0.93, "specificity": 0.69}},
    "subgroups": {"age": {
        "<30": {"n": 38, "n_melanoma_positive": 3, "melanoma_auc": None, "melanoma_specificity": 0.34},
        "30-49": {"n": 340, "n_melanoma_positive": 13, "melanoma_auc": 0.92, "melanoma_sensitivity": 1.0,
                  "melanoma_specificity": 0.75},
        "50-69": {"n": 351, "n_melanoma_positive": 31, "melanoma_auc": 0.84, "melanoma_sensitivity": 0.97,
                  "melanoma_specificity": 0.60},
        "70+": {"n": 177, "n_melanoma_positive": 27, "melanoma_auc": 0.80, "melanoma_sensitivity": 0.85,
                "melanoma_specificity": 0.61},
    }},
}


@pytest.mark.parametrize("age,expected", [
    (75, "For patients aged 70+, this model's held-out melanoma AUC is 0.80 (overall 0.88); at its threshold it "
         "misses more melanomas (sensitivity 0.85, overall 0.93) and flags more benign lesions (specificity 0.61, "
         "overall 0.69)."),
    (60, "For patients aged 50-69, this model's held-out melanoma AUC is 0.84 (overall 0.88); at its threshold it "
         "flags more benign lesions (specificity 0.60, overall 0.69)."),
    (40, None),
    (22, "The held-out test data had too few melanomas in patients aged <30 (3) to measure this model's accuracy "
         "for them."),
    (None, None),
])
def test_age_caveat(age, expected):
    assert age_caveat(METRICS, age) == expected


def test_no_caveat_without_subgroup_figures():
    assert age_caveat({"melanoma_auc": 0.88}, 75) is None
    assert age_caveat({}, 75) is None


@pytest.mark.django_db
def test_result_page_shows_the_caveat_for_the_patients_age(client, world, model_version):
    model_version.metrics = METRICS
    model_version.save()
    image = make_image(world)
    Prediction.objects.create(image=image, model_version=model_version, status="done", melanoma_probability=0.2,
                              malignancy_score=0.2, class_probabilities={"melanoma": 0.2, "nevus": 0.8},
                              finished_at=timezone.now())
    client.force_login(world.clin_a)
    Patient.objects.filter(pk=world.patient_a.pk).update(birth_year=timezone.now().year - 75)
    assert "For patients aged 70+" in client.get(f"/images/{image.pk}/").content.decode()
    Patient.objects.filter(pk=world.patient_a.pk).update(birth_year=timezone.now().year - 40)
    assert "Reliability:" not in client.get(f"/images/{image.pk}/").content.decode()
