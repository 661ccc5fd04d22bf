"""Token scopes and attribution: a read-only token reads but never writes (403, nothing changed), and
every audit event of a call made with a token names that token (never its secret), while a web
session's events name none."""
from __future__ import annotations

import json

from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.permissions import SAFE_METHODS
from rest_framework.test import APIClient

from api.models import ApiToken
from api.permissions import TokenScope
from audit.models import AuditEvent
from cases.models import Case, Lesion, LesionImage, Outcome, Patient, Review
from tests.api.conftest import issue_token
from tests.support.imagegen import jpeg

READ_ONLY = "This API token is read-only: it can read results but not create or change records."


def _client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def _counts() -> dict[str, int]:
    return {model.__name__: model.objects.count()
            for model in (Patient, Case, Lesion, LesionImage, Outcome, Review, AuditEvent)}


def test_read_only_token_reads_and_its_reads_are_audited(world):
    key = issue_token(world.clin_a, read_only=True)
    client = _client(key)
    assert client.get("/api/v1/me/").status_code == 200
    listed = client.get("/api/v1/patients/")
    assert listed.status_code == 200 and listed.json()["count"] == 1
    assert client.get(f"/api/v1/patients/{world.patient_a.pk}/").status_code == 200
    assert client.get(f"/api/v1/cases/{world.case_a.pk}/fhir/").status_code == 200
    assert client.get("/api/v1/models/").status_code == 200
    assert client.head(f"/api/v1/lesions/{world.lesion_a.pk}/").status_code == 200
    assert client.options("/api/v1/patients/").status_code == 200
    token = ApiToken.objects.get(user=world.clin_a)
    view = AuditEvent.objects.get(action="view", object_type="patient", new_values={})
    assert (view.actor, view.api_token_id) == (world.clin_a, token.pk)


def test_read_only_token_cannot_write_anywhere_and_changes_nothing(world, queued, dispatched):
    clinician = _client(issue_token(world.clin_a, read_only=True))
    reviewer = _client(issue_token(world.derm, read_only=True))
    prediction = queued.lesions.get().images.get().predictions.get()
    today = timezone.localdate().isoformat()
    attempts = [
        (clinician, "post", "/api/v1/patients/", {"identifier": "PA-2", "birth_year": 1990, "sex": "male"}, "json"),
        (clinician, "post", "/api/v1/cases/", {"patient": world.patient_a.pk, "clinical_question": "?"}, "json"),
        (clinician, "post", "/api/v1/lesions/", {"case": world.case_a.pk, "anatomic_site": "upper extremity"}, "json"),
        (clinician, "post", f"/api/v1/lesions/{world.lesion_a.pk}/images/",
         {"images": [SimpleUploadedFile("new.jpg", jpeg(seed=7), content_type="image/jpeg")]}, "multipart"),
        (clinician, "post", "/api/v1/outcomes/", {"lesion": world.lesion_a.pk, "diagnosis": "melanoma",
                                                  "diagnosis_date": today, "report_reference": "P-1"}, "json"),
        (clinician, "post", f"/api/v1/predictions/{prediction.pk}/retry/", None, "json"),
        (clinician, "patch", f"/api/v1/patients/{world.patient_a.pk}/", {"identifier": "CHANGED"}, "json"),
        (clinician, "put", f"/api/v1/cases/{world.case_a.pk}/", {"clinical_question": "changed"}, "json"),
        (clinician, "delete", f"/api/v1/lesions/{world.lesion_a.pk}/", None, "json"),
        (clinician, "delete", f"/api/v1/patients/{world.patient_a.pk}/", None, "json"),
        (reviewer, "post", f"/api/v1/cases/{queued.pk}/claim/", None, "json"),
        (reviewer, "post", f"/api/v1/cases/{queued.pk}/release/", None, "json"),
        (reviewer, "post", f"/api/v1/cases/{queued.pk}/reviews/", {"reviews": [
            {"lesion": world.lesion_a.pk, "agreement": "agree", "final_diagnosis": "melanoma",
             "management": "excision"}]}, "json"),
    ]
    before = _counts()
    for client, method, url, data, fmt in attempts:
        response = getattr(client, method)(url, data, format=fmt)
        assert response.status_code == 403, (method, url, response.status_code)
        assert response.json() == {"detail": READ_ONLY}, (method, url)
    assert _counts() == before
    assert Patient.objects.get(pk=world.patient_a.pk).identifier == "PA-1"
    assert Case.objects.get(pk=queued.pk).claimed_by is None
    assert dispatched == []
    # the reviewer's token still reads the queue
    assert reviewer.get("/api/v1/queue/").json()["count"] == 1


def test_read_only_refusal_comes_before_the_roles_own(world):
    """A read-only token of a user who may not add patients either is told the token's reason."""
    refused = _client(issue_token(world.derm, read_only=True)).post(
        "/api/v1/patients/", {"identifier": "X-1", "birth_year": 1990, "sex": "male"}, format="json")
    assert refused.status_code == 403 and refused.json()["detail"] == READ_ONLY


def test_a_full_token_still_writes_and_a_session_is_not_concerned(world):
    created = _client(issue_token(world.clin_a)).post(
        "/api/v1/patients/", {"identifier": "PA-2", "birth_year": 1990, "sex": "male"}, format="json")
    assert created.status_code == 201, created.json()
    session = APIClient()
    session.force_login(world.clin_a)
    by_session = session.post("/api/v1/patients/", {"identifier": "PA-3", "birth_year": 1990, "sex": "male"},
                              format="json")
    assert by_session.status_code == 201, by_session.json()
    events = AuditEvent.objects.filter(action="create", object_type="patient")
    token = ApiToken.objects.get(user=world.clin_a)
    assert events.get(object_id=str(created.json()["id"])).api_token_id == token.pk
    assert events.get(object_id=str(by_session.json()["id"])).api_token_id is None


def test_every_api_view_that_writes_applies_the_token_scope():
    """A view that lists its own permission classes must not drop the read-only check."""
    def callbacks(patterns):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from callbacks(pattern.url_patterns)
            elif isinstance(pattern, URLPattern):
                yield pattern.callback

    checked = 0
    for callback in callbacks(get_resolver().url_patterns):
        view = getattr(callback, "cls", None)
        if view is None or not callback.__module__.startswith(("api", "rest_framework")):
            continue
        actions = getattr(callback, "actions", None)
        methods = actions or {m: m for m in view.http_method_names if hasattr(view, m)}
        if {m.upper() for m in methods} - set(SAFE_METHODS):
            assert TokenScope in view.permission_classes, view
            checked += 1
    assert checked >= 6


def test_token_upload_is_attributed_to_the_token_and_never_shows_its_secret(world, dispatched,
                                                                           django_capture_on_commit_callbacks):
    key = issue_token(world.clin_a)
    token = ApiToken.objects.get(user=world.clin_a)
    ApiToken.objects.filter(pk=token.pk).update(name="EHR bridge")
    before = AuditEvent.objects.values_list("pk", flat=True).order_by("-pk").first() or 0
    with django_capture_on_commit_callbacks(execute=True):
        response = _client(key).post(f"/api/v1/lesions/{world.lesion_a.pk}/images/",
                                     {"images": [SimpleUploadedFile("new.jpg", jpeg(seed=5),
                                                                    content_type="image/jpeg")]},
                                     format="multipart")
    assert response.status_code == 201, response.json()
    events = list(AuditEvent.objects.filter(pk__gt=before))
    assert "upload" in {event.action for event in events}
    for event in events:
        assert event.api_token_id == token.pk, event
        assert event.api_token_label == f"{token.prefix}… (EHR bridge)"
        row = json.dumps(AuditEvent.objects.filter(pk=event.pk).values().get(), default=str)
        assert key not in row and key[len(token.prefix):] not in row and token.key_hash not in row


def test_web_session_upload_records_no_token(client, world, dispatched, django_capture_on_commit_callbacks):
    issue_token(world.clin_a)  # the user holds a token, but the page is used with a login
    client.force_login(world.clin_a)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/lesions/{world.lesion_a.pk}/",
                               {"images": [SimpleUploadedFile("web.jpg", jpeg(seed=6), content_type="image/jpeg")],
                                "kind": "dermoscopic"})
    assert response.status_code in (200, 302)
    assert LesionImage.objects.count() == 1
    upload = AuditEvent.objects.get(action="upload")
    assert upload.actor == world.clin_a
    assert not AuditEvent.objects.filter(api_token_id__isnull=False).exists()
    assert set(AuditEvent.objects.values_list("api_token_label", flat=True)) == {""}


def test_admin_issues_a_read_only_token_and_the_trail_filters_by_token(client, world):
    client.force_login(world.admin)
    form = client.get("/admin/api/apitoken/add/").content.decode()
    assert 'name="read_only"' in form
    saved = client.post("/admin/api/apitoken/add/", {"user": world.clin_a.pk, "name": "EHR pull", "read_only": "on"})
    assert saved.status_code == 302
    token = ApiToken.objects.get(name="EHR pull")
    assert token.read_only is True
    created = AuditEvent.objects.get(action="create", object_type="apitoken")
    assert created.new_values["read_only"] is True and created.api_token_id is None
    listing = client.get("/admin/api/apitoken/?read_only__exact=1").content.decode()
    assert "EHR pull" in listing
    page = client.get(f"/admin/api/apitoken/{token.pk}/change/").content.decode()
    assert f"/admin/audit/auditevent/?api_token_id={token.pk}" in page

    trail = client.get("/admin/audit/auditevent/?via_token=yes")
    assert trail.status_code == 200 and "via API token" in trail.content.decode()
    by_token = client.get(f"/admin/audit/auditevent/?api_token_id={token.pk}")
    assert by_token.status_code == 200
