"""The OpenAPI schema: valid, documented with local assets, and honoured by the running app.

The property-based test (schemathesis) sends generated requests, valid and invalid, to every
operation of a live server, authenticated as a clinician of a populated clinic, and checks that no
answer is a 5xx and every answer matches the schema.
"""
from __future__ import annotations

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings as hypothesis_settings
from rest_framework.test import APIClient

from cases.models import Lesion, Prediction
from tests.api.conftest import issue_token
from tests.support.case_helpers import World, make_image

pytestmark = pytest.mark.slow


def test_schema_is_valid_openapi_3(api):
    from drf_spectacular.validation import validate_schema
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    validate_schema(schema)  # raises on an invalid document
    assert schema["openapi"].startswith("3.")
    served = APIClient().get("/api/v1/schema/?format=json")
    assert served.status_code == 200 and "/api/v1/lesions/{id}/images/" in served.json()["paths"]


def test_docs_page_uses_only_local_assets(client):
    page = client.get("/api/v1/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "swagger-ui" in html
    external = [url for url in re.findall(r"""(?:src|href)=["']([^"']+)""", html) if re.match(r"(https?:)?//", url)]
    assert external == []


@pytest.fixture
def populated(transactional_db, media_root, fast_passwords):
    """Two clinics, a scored and flagged image in clinic A, and a token for clinic A's clinician."""
    from classifier.models import ModelVersion

    version = ModelVersion.objects.create(version="schema-test-v1", status=ModelVersion.Status.ACTIVE,
                                          artifact_path="/nonexistent/model", melanoma_threshold=0.5,
                                          malignancy_threshold=0.6)
    world = World()
    image = make_image(world)
    Prediction.objects.create(image=image, model_version=version, status="done", melanoma_probability=0.7,
                              malignancy_score=0.8, flagged=True, finished_at=image.uploaded_at,
                              class_probabilities={"melanoma": 0.7})
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True)
    return issue_token(world.clin_a)


def _generated_schema() -> dict:
    """The schema exactly as /api/v1/schema/ serves it (generated in process at collection: the
    requests themselves go to a live server)."""
    import json

    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    return json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))


schema = schemathesis.openapi.from_dict(_generated_schema())


@pytest.fixture
def no_throttle_no_broker(settings, monkeypatch):
    """Hundreds of generated requests must not hit the rate limit; scoring is not under test."""
    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: True)
    monkeypatch.setattr("rest_framework.views.APIView.throttle_classes", [])


@schema.parametrize()
@hypothesis_settings(max_examples=12, derandomize=True, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))
def test_every_operation_honours_its_schema(case, live_server, populated, no_throttle_no_broker):
    # Every check but "schema-valid data is accepted": a schema cannot say which ids exist in the
    # caller's clinic or that an identifier is already taken, so those refusals are correct 4xx.
    case.call_and_validate(base_url=live_server.url, headers={"Authorization": f"Token {populated}"},
                           excluded_checks=[schemathesis.checks.positive_data_acceptance])
