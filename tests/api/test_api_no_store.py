"""Every API answer carries patient data or may: none is kept by a browser or a shared cache,
exactly as the pages with patient data are not (``cases.views.PRIVATE``)."""
from __future__ import annotations

from cases.models import Prediction
from cases.views import PRIVATE
from classifier.models import ModelVersion
from tests.support.case_helpers import make_image


def test_every_kind_of_api_answer_is_private_and_not_stored(api, world):
    image = make_image(world)
    Prediction.objects.create(image=image, model_version=ModelVersion.objects.get())
    answers = {
        "list": api.clin_a.get("/api/v1/patients/"),
        "record": api.clin_a.get(f"/api/v1/patients/{world.patient_a.pk}/"),
        "created": api.clin_a.post("/api/v1/patients/", {"identifier": "PA-2", "birth_year": 1990, "sex": "male"},
                                   format="json"),
        "invalid": api.clin_a.post("/api/v1/patients/", {"identifier": "PA-1", "birth_year": 1990}, format="json"),
        "file": api.clin_a.get(f"/api/v1/images/{image.pk}/file/"),
        "fhir": api.clin_a.get(f"/api/v1/cases/{world.case_a.pk}/fhir/"),
        "me": api.clin_a.get("/api/v1/me/"),
        "not in scope": api.clin_b.get(f"/api/v1/patients/{world.patient_a.pk}/"),
        "no such path": api.clin_a.get("/api/v1/no-such-thing/"),
        "no token": api.anonymous.get("/api/v1/patients/"),
        "schema": api.anonymous.get("/api/v1/schema/?format=json"),
    }
    statuses = {name: response.status_code for name, response in answers.items()}
    assert statuses == {"list": 200, "record": 200, "created": 201, "invalid": 400, "file": 200, "fhir": 200,
                        "me": 200, "not in scope": 404, "no such path": 404, "no token": 401, "schema": 200}
    assert {name: response.get("Cache-Control") for name, response in answers.items()} == dict.fromkeys(
        answers, PRIVATE)
