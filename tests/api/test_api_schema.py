"""The OpenAPI schema: valid, documented with local assets, and honoured by the running app.

The property-based test (schemathesis) sends generated requests, valid and invalid, to every
operation of a live server, authenticated as a clinician of a populated clinic and as a
dermatologist with that clinic's flagged case in the queue, and checks that no answer is a 5xx and
every answer matches the schema. Answers that random ids rarely reach (a successful claim, review
or refused upload) are then requested on purpose and held to the same schema.
"""
from __future__ import annotations

import re

import pytest
import requests
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


def _populate() -> World:
    """Two clinics and a scored, flagged image in clinic A whose case waits in the review queue."""
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
    return world


@pytest.fixture
def world_served(transactional_db, media_root, fast_passwords) -> World:
    return _populate()


@pytest.fixture
def populated(world_served) -> str:
    """A token for clinic A's clinician."""
    return issue_token(world_served.clin_a)


# the queued case's id while the dermatologist's property test runs (read by the hook below)
QUEUED: dict[str, int] = {}


@pytest.fixture
def reviewer_token(world_served):
    """A token for a dermatologist with clinic A's flagged case in the queue."""
    QUEUED["id"] = world_served.case_a.pk
    yield issue_token(world_served.derm)
    QUEUED.clear()


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


# What a dermatologist does differently: the queue and the case operations (claim, release, review);
# the clinician's run above already covers the rest of the schema.
reviewer_schema = schema.include(path_regex=r"^/api/v1/(queue|cases)/")


@reviewer_schema.hook
def map_path_parameters(context, path_parameters):
    """Aim a generated case id at the queued case, so that retrieve, claim, release and the FHIR
    export answer success (random ids are another clinic's 404s, which the clinician's run covers).
    Only a schema-valid id: one generated to be invalid must stay invalid. (Hooks are shared by
    the filtered schemas, so this acts only while the dermatologist's test runs.)"""
    if QUEUED and path_parameters and isinstance(path_parameters.get("id"), int):
        path_parameters["id"] = QUEUED["id"]
    return path_parameters


@reviewer_schema.parametrize()
@hypothesis_settings(max_examples=12, derandomize=True, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))
def test_review_operations_honour_their_schema_as_a_dermatologist(case, live_server, reviewer_token,
                                                                  no_throttle_no_broker):
    case.call_and_validate(base_url=live_server.url, headers={"Authorization": f"Token {reviewer_token}"},
                           excluded_checks=[schemathesis.checks.positive_data_acceptance])


def _validated(response: requests.Response, path: str, method: str) -> dict:
    """The response, after schemathesis held it to the schema of its operation (raises if not)."""
    schema[path][method].validate_response(response)
    return response.json()


def test_a_refused_upload_answers_in_its_documented_shape(live_server, world_served, no_throttle_no_broker):
    url = f"{live_server.url}/api/v1/lesions/{world_served.lesion_a.pk}/images/"
    headers = {"Authorization": f"Token {issue_token(world_served.clin_a)}"}
    documented = schema.raw_schema["components"]["schemas"]
    result_keys = set(documented["UploadResult"]["required"])
    error_keys = set(documented["UploadInputError"]["properties"])

    def post(**kwargs) -> dict:
        response = requests.post(url, headers=headers, timeout=30, **kwargs)
        assert response.status_code == 400, response.text
        return _validated(response, "/api/v1/lesions/{id}/images/", "POST")

    missing = post(data={"kind": "dermoscopic"})
    assert set(missing) == {"images"} <= error_keys and missing["images"][0].startswith("This list may not be empty")
    bad_kind = post(data={"kind": "x-ray"}, files=[("images", ("a.jpg", b"\xff\xd8", "image/jpeg"))])
    assert set(bad_kind) == {"kind"} and "not a valid choice" in bad_kind["kind"][0]
    not_a_form = post(json=["images"])
    assert set(not_a_form) == {"images"}
    every_file_rejected = post(files=[("images", ("empty.png", b"", "image/png"))])
    assert set(every_file_rejected) == result_keys
    assert every_file_rejected["rejected"][0]["error"] == "The file is empty (0 bytes)."
    # what the documented shapes tell apart: a per-file result is never read as input errors
    for body in (missing, bad_kind, not_a_form):
        assert not set(body) & result_keys


def test_review_answers_match_the_schema(live_server, world_served, no_throttle_no_broker):
    """A dermatologist's queue, claim, release and review, each answer validated by schemathesis."""
    headers = {"Authorization": f"Token {issue_token(world_served.derm)}"}
    case_id, lesion_id = world_served.case_a.pk, world_served.lesion_a.pk

    def call(method: str, path: str, **kwargs) -> dict:
        response = requests.request(method, live_server.url + path.format(id=case_id), headers=headers,
                                    timeout=30, **kwargs)
        assert response.status_code < 300, response.text
        return _validated(response, path, method)

    assert [row["id"] for row in call("GET", "/api/v1/queue/")["results"]] == [case_id]
    assert call("POST", "/api/v1/cases/{id}/claim/")["claimed_by"] == "Derm"
    assert call("POST", "/api/v1/cases/{id}/release/")["claimed_by"] is None
    call("POST", "/api/v1/cases/{id}/claim/")
    reviews = call("POST", "/api/v1/cases/{id}/reviews/", json={"reviews": [
        {"lesion": lesion_id, "agreement": "agree", "final_diagnosis": "melanoma", "management": "excision"}]})
    assert [r["lesion"] for r in reviews] == [lesion_id]
    assert call("GET", "/api/v1/queue/")["count"] == 0


def test_predictions_without_a_result_answer_in_their_documented_shape(live_server, world_served,
                                                                        no_throttle_no_broker):
    """Waiting, running and failed predictions (flag and assessability null) beside a finished one
    (booleans and its clinical context), listed alone and on their images, held to the schema."""
    from classifier.models import ModelVersion
    from django.utils import timezone

    version = ModelVersion.objects.get()
    for n, (status, extra) in enumerate([("pending", {}), ("running", {"started_at": timezone.now()}),
                                         ("failed", {"error": "worker died", "attempts": 3})], start=1):
        Prediction.objects.create(image=make_image(world_served, sha=str(n) * 64), model_version=version,
                                  status=status, **extra)
    Prediction.objects.filter(status="done").update(
        clinical_context={"age": 52.0, "sex": "female", "site": "posterior torso"})
    headers = {"Authorization": f"Token {issue_token(world_served.clin_a)}"}

    def get(path: str) -> dict:
        response = requests.get(f"{live_server.url}{path}", headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        return _validated(response, path, "GET")

    rows = {row["status"]: row for row in get("/api/v1/predictions/")["results"]}
    assert set(rows) == {"pending", "running", "failed", "done"}
    assert rows["done"]["flagged"] is True and rows["done"]["assessable"] is True
    assert rows["done"]["clinical_context"] == {"age": 52.0, "sex": "female", "site": "posterior torso"}
    for status in ("pending", "running", "failed"):
        assert rows[status]["flagged"] is None and rows[status]["assessable"] is None, status
        assert rows[status]["flag_reasons"] is None and rows[status]["clinical_context"] is None, status
    shown = {image["current_prediction"]["status"]: image["current_prediction"]
             for image in get("/api/v1/images/")["results"]}
    assert shown["failed"]["flagged"] is None and shown["done"]["flagged"] is True
