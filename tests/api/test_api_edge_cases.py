"""Edge cases of the API's contract: refusals that change nothing, filters that belong to lists,
answers whatever the Accept header, and errors in the documented JSON shape."""
from __future__ import annotations

import pytest

from audit.models import AuditEvent
from cases import queue
from classifier.models import ModelVersion
from cases.models import Case, Lesion, LesionImage, Prediction, Review
from tests.support.case_helpers import make_image


def _review(lesion: Lesion, **extra) -> dict:
    return {"lesion": lesion.pk, "agreement": "agree", "final_diagnosis": "melanoma", "management": "excision",
            **extra}


def test_a_lesion_given_twice_in_one_submission_is_refused_and_nothing_changes(api, world, queued):
    assert api.derm.post(f"/api/v1/cases/{queued.pk}/claim/").status_code == 200
    twice = api.derm.post(f"/api/v1/cases/{queued.pk}/reviews/",
                          {"reviews": [_review(world.lesion_a),
                                       _review(world.lesion_a, final_diagnosis="nevus", management="follow_up")]},
                          format="json")
    assert twice.status_code == 400
    assert twice.json() == {"reviews": [f"Give each lesion once (lesion {world.lesion_a.pk} more than once)."]}
    assert not Review.objects.exists() and not AuditEvent.objects.filter(action="review").exists()
    case = Case.objects.get(pk=queued.pk)
    assert (case.status, case.claimed_by) == (Case.Status.IN_REVIEW, world.derm)
    assert Lesion.objects.get(pk=world.lesion_a.pk).awaiting_review is True


def test_submit_reviews_itself_refuses_a_lesion_given_twice(world, queued):
    queue.claim_case(case=queued, reviewer=world.derm)
    entry = queue.LesionReview(lesion=world.lesion_a, agreement="agree", final_diagnosis="melanoma",
                               management="excision")
    with pytest.raises(queue.ClaimError, match="Give each lesion once"):
        queue.submit_reviews(case=queued, reviewer=world.derm, reviews=[entry, entry])
    assert not Review.objects.exists() and Lesion.objects.get(pk=world.lesion_a.pk).awaiting_review is True


def test_list_filters_in_the_query_string_do_not_apply_to_actions(api, world, queued, dispatched):
    """Each filter matches the object before the action and not after (or never): the action
    succeeds and answers the reloaded object, never a 404 or a 500."""
    claimed = api.derm.post(f"/api/v1/cases/{queued.pk}/claim/?status=open&patient={world.patient_b.pk}")
    assert claimed.status_code == 200 and claimed.json()["status"] == "in_review"
    released = api.derm.post(f"/api/v1/cases/{queued.pk}/release/?status=in_review")
    assert released.status_code == 200 and released.json()["claimed_by"] is None
    assert Case.objects.get(pk=queued.pk).claimed_by is None
    prediction = Prediction.objects.get()
    Prediction.objects.filter(pk=prediction.pk).update(status="failed", error="worker lost")
    retried = api.clin_a.post(f"/api/v1/predictions/{prediction.pk}/retry/?status=failed&case={world.case_b.pk}")
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    # a retrieve is not narrowed either; the list still is
    assert api.clin_a.get(f"/api/v1/cases/{queued.pk}/?status=closed").status_code == 200
    assert api.clin_a.get("/api/v1/cases/?status=closed").json()["count"] == 0
    assert api.clin_a.get(f"/api/v1/reviews/?case={queued.pk}").json()["count"] == 0


@pytest.mark.parametrize("accept", ["image/png", "image/*", "image/jpeg", "application/json"])
def test_an_image_file_is_served_whatever_the_accept_header(api, world, accept):
    image = make_image(world)
    response = api.clin_a.get(f"/api/v1/images/{image.pk}/file/", HTTP_ACCEPT=accept)
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content).startswith(b"\x89PNG\r\n\x1a\n")
    assert AuditEvent.objects.filter(action="download", object_id=str(image.pk)).count() == 1
    missing = api.clin_b.get(f"/api/v1/images/{image.pk}/file/", HTTP_ACCEPT=accept)  # another clinic's
    assert missing.status_code == 404 and missing.json() == {"detail": "No LesionImage matches the given query."}


def test_predictions_say_their_context_revision_reason_and_which_is_current(api, world, queued):
    first = Prediction.objects.get()
    version = first.model_version
    corrected = Prediction.objects.create(image=first.image, model_version=version, context_revision=1,
                                          reason="Anatomic site corrected: posterior torso → head/neck")
    rows = api.clin_a.get(f"/api/v1/predictions/?image={first.image_id}").json()["results"]
    assert [list(row)[-3:] for row in rows] == [["context_revision", "reason", "is_current"]] * 2
    assert [(row["id"], row["context_revision"], row["reason"], row["is_current"]) for row in rows] == [
        (first.pk, 0, "", False), (corrected.pk, 1, corrected.reason, True)]
    assert api.clin_a.get(f"/api/v1/predictions/{first.pk}/").json()["is_current"] is False
    latest = api.clin_a.get(f"/api/v1/images/{first.image_id}/").json()["latest_prediction"]
    assert (latest["id"], latest["is_current"], latest["context_revision"]) == (corrected.pk, True, 1)
    # the same moment: the higher id is the newer, as LesionImage.newest_prediction() orders them
    Prediction.objects.update(created_at=first.created_at)
    current = {row["id"]: row["is_current"] for row in api.clin_a.get("/api/v1/predictions/").json()["results"]}
    assert current == {first.pk: False, corrected.pk: True}
    assert first.image.newest_prediction() == corrected


def test_is_current_is_computed_for_a_prediction_serialized_alone(world, queued, rf):
    from api.serializers import PredictionSerializer

    first = Prediction.objects.get()
    request = rf.get("/")
    request.user = world.clin_a
    assert PredictionSerializer(first, context={"request": request}).data["is_current"] is True
    Prediction.objects.create(image=first.image, model_version=first.model_version, context_revision=1,
                              reason="Age corrected")
    assert PredictionSerializer(first, context={"request": request}).data["is_current"] is False


def test_a_waiting_re_score_by_another_version_leaves_the_finished_score_current(api, world, queued):
    """As on the pages: the API's current prediction is the result in force, not a blank re-score."""
    from django.utils import timezone

    from classifier.models import ModelVersion

    first = Prediction.objects.get()
    Prediction.objects.filter(pk=first.pk).update(status="done", melanoma_probability=0.3, malignancy_score=0.4,
                                                  finished_at=timezone.now())
    newer = ModelVersion.objects.create(version="api-v2", artifact_path="/x")
    rescore = Prediction.objects.create(image=first.image, model_version=newer)
    image = api.clin_a.get(f"/api/v1/images/{first.image_id}/").json()
    assert image["latest_prediction"]["id"] == rescore.pk and image["latest_prediction"]["is_current"] is False
    assert image["current_prediction"]["id"] == first.pk and image["current_prediction"]["is_current"] is True
    rows = api.clin_a.get(f"/api/v1/predictions/?image={first.image_id}").json()["results"]
    assert {row["id"]: row["is_current"] for row in rows} == {first.pk: True, rescore.pk: False}


@pytest.fixture
def follow_up(world):
    """A later visit of patient A waiting for review: lesion A again (seen before) and a new lesion."""
    from datetime import timedelta

    later = Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a, clinical_question="Follow-up",
                                visit_date=world.case_a.visit_date + timedelta(days=90))
    again = Lesion.objects.create(case=later, tracked=world.lesion_a.tracked, anatomic_site="posterior torso")
    new = Lesion.objects.create(case=later, anatomic_site="head/neck")
    Lesion.objects.filter(case=later).update(flagged=True, awaiting_review=True)
    return later, again, new


def test_a_review_records_whether_a_lesion_seen_before_has_changed(api, world, follow_up):
    later, again, new = follow_up
    assert api.derm.post(f"/api/v1/cases/{later.pk}/claim/").status_code == 200
    bad = api.derm.post(f"/api/v1/cases/{later.pk}/reviews/", {"reviews": [
        _review(again, lesion_changed="maybe"), _review(new)]}, format="json")
    assert bad.status_code == 400
    assert bad.json() == {"reviews": {"0": {"lesion_changed": ["Must be a valid boolean."]}}}
    # not asked for a lesion without an earlier visit, as on the page: recorded as null
    done = api.derm.post(f"/api/v1/cases/{later.pk}/reviews/", {"reviews": [
        _review(again, lesion_changed=True), _review(new, lesion_changed=False)]}, format="json")
    assert done.status_code == 201, done.json()
    assert {row["lesion"]: row["lesion_changed"] for row in done.json()} == {again.pk: True, new.pk: None}
    assert dict(Review.objects.values_list("lesion_id", "lesion_changed")) == {again.pk: True, new.pk: None}
    event = AuditEvent.objects.get(action="review", object_id=str(Review.objects.get(lesion=again).pk))
    assert event.new_values["lesion_changed"] is True


def test_lesion_changed_is_optional_for_a_lesion_seen_before(api, world, follow_up):
    later, again, new = follow_up
    api.derm.post(f"/api/v1/cases/{later.pk}/claim/")
    done = api.derm.post(f"/api/v1/cases/{later.pk}/reviews/", {"reviews": [_review(again), _review(new)]},
                         format="json")
    assert done.status_code == 201, done.json()
    assert set(Review.objects.values_list("lesion_changed", flat=True)) == {None}


def _client_of(user):
    from rest_framework.test import APIClient

    from tests.api.conftest import issue_token

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {issue_token(user)}")
    return client


def test_a_user_who_may_not_add_patients_learns_nothing_of_the_clinics_identifiers(api, world):
    from cases.models import Patient
    from cases.roles import DERMATOLOGIST
    from tests.support.case_helpers import make_user

    derm_b = _client_of(make_user("derm_b", role=DERMATOLOGIST, clinic=world.clinic_b))
    no_role_b = _client_of(make_user("nobody_b", clinic=world.clinic_b))
    for client in (derm_b, no_role_b, api.derm, api.norole):
        answers = [client.post("/api/v1/patients/", {"identifier": identifier, "birth_year": 1990, "sex": "male"},
                               format="json") for identifier in ("PB-1", "PB-NEW", "")]
        assert [(r.status_code, r.json()) for r in answers] == [
            (403, {"detail": "Only clinicians who belong to a clinic can add patients."})] * 3
    assert Patient.objects.count() == 2
    # a clinician of the clinic still gets the form's message
    duplicate = api.clin_b.post("/api/v1/patients/", {"identifier": "PB-1", "birth_year": 1990, "sex": "male"},
                                format="json")
    assert duplicate.status_code == 400 and "already has a patient" in duplicate.json()["identifier"][0]
    assert derm_b.get("/api/v1/patients/").status_code == 200  # reading is not this rule's business


@pytest.fixture
def closed_case(world):
    from django.utils import timezone

    Case.objects.filter(pk=world.case_a.pk).update(status=Case.Status.CLOSED, closed_at=timezone.now())
    return Case.objects.get(pk=world.case_a.pk)


def test_adding_to_a_closed_case_of_ones_own_clinic_is_a_409_that_says_so(api, world, closed_case, dispatched):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.support.imagegen import jpeg

    lesion = api.clin_a.post("/api/v1/lesions/", {"case": closed_case.pk, "anatomic_site": "head/neck"}, format="json")
    assert (lesion.status_code, lesion.json()) == (409, {"detail": "The case is closed."})
    upload = api.clin_a.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/",
                             {"images": [SimpleUploadedFile("mole.jpg", jpeg(seed=4))]}, format="multipart")
    assert (upload.status_code, upload.json()) == (409, {"detail": "The case is closed."})
    image = make_image(world)
    failed = Prediction.objects.create(image=image, model_version=ModelVersion.objects.get(), status="failed",
                                       error="worker lost")
    retry = api.clin_a.post(f"/api/v1/predictions/{failed.pk}/retry/")
    assert (retry.status_code, retry.json()) == (409, {"detail": "The case is closed."})
    assert Lesion.objects.filter(case=closed_case).count() == 1 and LesionImage.objects.count() == 1
    assert Prediction.objects.get(pk=failed.pk).status == "failed" and dispatched == []
    # others learn nothing new: another clinic still gets 404 (or the form's 400), a dermatologist 403
    assert api.clin_b.post(f"/api/v1/predictions/{failed.pk}/retry/").status_code == 404
    assert api.clin_b.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/",
                           {"images": [SimpleUploadedFile("m.jpg", jpeg(seed=4))]}, format="multipart").status_code == 404
    assert api.clin_b.post("/api/v1/lesions/", {"case": closed_case.pk, "anatomic_site": "head/neck"},
                           format="json").status_code == 400
    assert api.admin.post("/api/v1/lesions/", {"case": closed_case.pk, "anatomic_site": "head/neck"},
                          format="json").status_code == 409


def test_too_many_files_or_fields_get_a_json_400_that_says_so(api, world, settings, dispatched, caplog):
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 5
    files = {"images": [SimpleUploadedFile(f"m{n}.jpg", b"x") for n in range(4)]}
    upload = api.clin_a.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/", files, format="multipart")
    assert upload.status_code == 400 and upload["Content-Type"] == "application/json"
    assert upload.json() == {"detail": f"Too many files in one request (more than 3); an upload takes at most "
                                       f"{settings.UPLOAD_MAX_FILES} images."}
    fields = api.clin_a.post("/api/v1/patients/", "&".join(f"f{n}=1" for n in range(6)),
                             content_type="application/x-www-form-urlencoded")
    assert fields.status_code == 400 and fields["Content-Type"] == "application/json"
    assert fields.json() == {"detail": "Too many fields or query parameters in one request (more than 5)."}
    assert LesionImage.objects.count() == 0 and not Case.objects.filter(patient__identifier="f0").exists()
    logged = [r for r in caplog.records if r.name.startswith("django.security.")]
    assert [r.name for r in logged] == ["django.security.TooManyFilesSent", "django.security.TooManyFieldsSent"]


def test_a_request_refused_before_the_api_sees_it_is_json_under_the_api(rf, settings):
    from django.core.exceptions import TooManyFieldsSent

    from api.errors import bad_request

    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 5
    refused = bad_request(rf.get("/api/v1/patients/"), TooManyFieldsSent("too many"))
    assert refused.status_code == 400 and refused["Content-Type"] == "application/json"
    assert refused.content == b'{"detail": "Too many fields or query parameters in one request (more than 5)."}'
    page = bad_request(rf.get("/cases/"), TooManyFieldsSent("too many"))
    assert page.status_code == 400 and page["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("value", ["9223372036854775808", "99999999999999999999", "-9223372036854775809"])
def test_an_id_filter_beyond_64_bits_is_a_400(api, world, value):
    for path in ("lesions/?case", "cases/?patient", "predictions/?image", "reviews/?lesion"):
        refused = api.clin_a.get(f"/api/v1/{path}={value}")
        name = path.split("?")[1]
        assert refused.status_code == 400, path
        assert refused.json() == {name: [f"{name} must be an integer between -9223372036854775808 and "
                                         f"9223372036854775807."]}
    assert api.clin_a.get("/api/v1/lesions/?case=9223372036854775807").json()["count"] == 0


def test_a_case_dated_before_the_patients_birth_year_is_refused_as_on_the_page(api, world):
    """The API validates with the page's form and the patient: a visit before the birth year would
    give the model an age of 0."""
    before = f"{world.patient_a.birth_year - 1}-12-31"
    cases_before = Case.objects.count()
    answer = api.clin_a.post("/api/v1/cases/", {"patient": world.patient_a.pk, "visit_date": before,
                                                    "clinical_question": "Changed?"}, format="json")
    assert answer.status_code == 400
    assert "before the patient's birth year" in answer.json()["visit_date"][0]
    assert Case.objects.count() == cases_before
