"""The API's records: the same scoping as the pages (two clinics and a user with no access), the
same validation as the forms, the same services for writes, and reads audited like the pages."""
from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from audit.models import AuditEvent
from classifier.models import ModelVersion
from cases.models import Case, Lesion, LesionImage, Patient, Prediction
from tests.support.case_helpers import make_image
from tests.support.imagegen import jpeg


def _detail_urls(world) -> list[str]:
    image = make_image(world)
    prediction = Prediction.objects.create(image=image, model_version=ModelVersion.objects.get())
    return [f"/api/v1/patients/{world.patient_a.pk}/", f"/api/v1/cases/{world.case_a.pk}/",
            f"/api/v1/lesions/{world.lesion_a.pk}/", f"/api/v1/images/{image.pk}/",
            f"/api/v1/images/{image.pk}/file/", f"/api/v1/predictions/{prediction.pk}/",
            f"/api/v1/cases/{world.case_a.pk}/fhir/"]


def test_own_clinic_sees_its_records_other_clinic_and_no_role_get_404(api, world):
    urls = _detail_urls(world)
    for url in urls:
        assert api.clin_a.get(url).status_code == 200, url
        assert api.clin_b.get(url).status_code == 404, url
        assert api.norole.get(url).status_code == 404, url
        assert api.admin.get(url).status_code == 200, url


def test_lists_are_scoped(api, world):
    for path in ("patients", "cases", "lesions"):
        mine = api.clin_a.get(f"/api/v1/{path}/").json()
        assert mine["count"] == 1, path
        other = api.clin_b.get(f"/api/v1/{path}/").json()["results"]
        assert [row["id"] for row in other] != [row["id"] for row in mine["results"]]
        assert api.norole.get(f"/api/v1/{path}/").json()["count"] == 0
    assert api.admin.get("/api/v1/patients/").json()["count"] == 2


def test_filters_are_validated_not_500(api, world):
    response = api.clin_a.get("/api/v1/lesions/?case=abc")
    assert response.status_code == 400 and "case must be an integer" in response.json()["case"][0]
    assert api.clin_a.get("/api/v1/cases/?status=nope").status_code == 400
    # sent empty: refused as the schema says (schemathesis found "?status=" accepted), not ignored
    for empty in ("/api/v1/cases/?status=", "/api/v1/predictions/?status=", "/api/v1/lesions/?case="):
        refused = api.clin_a.get(empty)
        assert refused.status_code == 400 and len(refused.json()) == 1, empty
    assert api.clin_a.get(f"/api/v1/lesions/?case={world.case_b.pk}").json()["count"] == 0
    nul = api.clin_a.get("/api/v1/patients/?q=P%00")
    assert nul.status_code == 400 and "NUL" in nul.json()["detail"]
    twice = api.clin_a.get("/api/v1/patients/?page=1&page=2")
    assert twice.status_code == 400 and twice.json() == {"page": ["Give page once."]}


def test_reads_are_audited_like_pages(api, world):
    api.clin_a.get(f"/api/v1/patients/{world.patient_a.pk}/")
    event = AuditEvent.objects.filter(action="view", object_type="patient").get()
    assert event.actor == world.clin_a and event.clinic_id == world.clinic_a.pk


def test_a_list_call_audits_each_record_it_returned(api, world, monkeypatch):
    for n in range(2, 5):
        Patient.objects.create(clinic=world.clinic_a, identifier=f"PA-{n}", birth_year=1970, sex="female",
                               created_by=world.clin_a)
    monkeypatch.setattr("rest_framework.pagination.PageNumberPagination.page_size", 3)
    page = api.clin_a.get("/api/v1/patients/").json()
    returned = {row["id"] for row in page["results"]}
    events = AuditEvent.objects.filter(action="view", object_type="patient")
    assert len(returned) == 3 and {int(e.object_id) for e in events} == returned
    assert {(e.actor_id, e.clinic_id, e.new_values["via"]) for e in events} == {(world.clin_a.pk, world.clinic_a.pk, "list")}
    assert all(e.patient_id == int(e.object_id) for e in events)
    second = api.clin_a.get(page["next"]).json()["results"]  # the next page audits its own records only
    audited = list(AuditEvent.objects.filter(action="view").values_list("object_id", flat=True))
    assert sorted(audited) == sorted(str(pk) for pk in returned | {second[0]["id"]})
    assert str(world.patient_b.pk) not in audited


def test_a_nested_record_is_audited_under_its_patient(api, world):
    lesions = api.clin_b.get("/api/v1/lesions/").json()["results"]
    assert [row["id"] for row in lesions] == [world.lesion_b.pk]
    event = AuditEvent.objects.get(action="view", object_type="lesion")
    assert (event.patient_id, event.clinic_id, event.actor) == (world.patient_b.pk, world.clinic_b.pk, world.clin_b)


def test_clinician_creates_patient_case_and_lesion_through_the_services(api, world):
    created = api.clin_a.post("/api/v1/patients/", {"identifier": "PA-2", "birth_year": 1990, "sex": "male"},
                              format="json")
    assert created.status_code == 201, created.json()
    patient = Patient.objects.get(identifier="PA-2")
    assert patient.clinic == world.clinic_a and created.json()["id"] == patient.pk
    case = api.clin_a.post("/api/v1/cases/", {"patient": patient.pk, "clinical_question": "New mole?"}, format="json")
    assert case.status_code == 201, case.json()
    lesion = api.clin_a.post("/api/v1/lesions/", {"case": case.json()["id"], "anatomic_site": "upper extremity"},
                             format="json")
    assert lesion.status_code == 201, lesion.json()
    assert Lesion.objects.get(pk=lesion.json()["id"]).case_id == case.json()["id"]
    assert set(AuditEvent.objects.filter(action="create").values_list("object_type", flat=True)) == {
        "patient", "case", "patientlesion", "lesion"}


def test_bad_input_gets_the_forms_messages_and_changes_nothing(api, world):
    before = Patient.objects.count()
    duplicate = api.clin_a.post("/api/v1/patients/", {"identifier": "PA-1", "birth_year": 1990, "sex": "male"},
                                format="json")
    assert duplicate.status_code == 400
    assert duplicate.json()["identifier"] == ["Your clinic already has a patient with this identifier."]
    future = api.clin_a.post("/api/v1/patients/", {"identifier": "PA-9", "birth_year": 2099, "sex": "male"},
                             format="json")
    assert future.status_code == 400 and "future" in future.json()["birth_year"][0]
    bad_site = api.clin_a.post("/api/v1/lesions/", {"case": world.case_a.pk, "anatomic_site": "elbow"}, format="json")
    assert bad_site.status_code == 400 and "anatomic_site" in bad_site.json()
    other_clinic = api.clin_a.post("/api/v1/cases/", {"patient": world.patient_b.pk, "clinical_question": "?"},
                                   format="json")
    assert other_clinic.status_code == 400 and "patient" in other_clinic.json()
    assert Patient.objects.count() == before and Case.objects.count() == 2


def test_dermatologist_may_not_create_patients(api, world):
    response = api.derm.post("/api/v1/patients/", {"identifier": "X-1", "birth_year": 1990, "sex": "male"},
                             format="json")
    assert response.status_code == 403


def test_upload_judges_each_file_on_its_own(api, world, dispatched, django_capture_on_commit_callbacks):
    files = [SimpleUploadedFile("good.jpg", jpeg(seed=1), content_type="image/jpeg"),
             SimpleUploadedFile("notes.txt", b"just some text", content_type="text/plain")]
    with django_capture_on_commit_callbacks(execute=True):
        response = api.clin_a.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/",
                                   {"images": files, "kind": "dermoscopic"}, format="multipart")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert [item["name"] for item in body["accepted"]] == ["good.jpg"]
    assert body["rejected"][0]["name"] == "notes.txt"
    assert "Only JPEG, PNG" in body["rejected"][0]["error"] and "text file" in body["rejected"][0]["error"]
    image = LesionImage.objects.get()
    assert dispatched == [image.predictions.get().pk]
    again = api.clin_a.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/",
                            {"images": [SimpleUploadedFile("copy.jpg", jpeg(seed=1))]}, format="multipart")
    assert again.status_code == 201 and again.json()["duplicates"][0]["image"] == image.pk


def test_upload_with_only_bad_files_is_400_and_stores_nothing(api, world, dispatched):
    response = api.clin_a.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/",
                               {"images": [SimpleUploadedFile("empty.png", b"")]}, format="multipart")
    assert response.status_code == 400 and response.json()["rejected"][0]["error"] == "The file is empty (0 bytes)."
    missing = api.clin_a.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/", {}, format="multipart")
    assert missing.status_code == 400 and "images" in missing.json()
    assert LesionImage.objects.count() == 0 and dispatched == []


def test_other_clinic_and_dermatologist_cannot_upload(api, world, dispatched):
    files = {"images": [SimpleUploadedFile("good.jpg", jpeg(seed=2))]}
    assert api.clin_b.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/", files, format="multipart").status_code == 404
    world.lesion_a.flagged = world.lesion_a.awaiting_review = True
    world.lesion_a.save()
    files = {"images": [SimpleUploadedFile("good.jpg", jpeg(seed=2))]}
    assert api.derm.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/", files, format="multipart").status_code == 403
    assert LesionImage.objects.count() == 0


def test_queue_claim_review_round_trip(api, world, queued):
    rows = api.derm.get("/api/v1/queue/").json()["results"]
    assert [row["id"] for row in rows] == [queued.pk] and rows[0]["top_melanoma_probability"] == 0.8
    assert api.clin_a.get("/api/v1/queue/").status_code == 403
    assert api.clin_a.post(f"/api/v1/cases/{queued.pk}/claim/").status_code == 404
    claimed = api.derm.post(f"/api/v1/cases/{queued.pk}/claim/")
    assert claimed.status_code == 200 and claimed.json()["claimed_by"] == "Derm"
    taken = api.derm2.post(f"/api/v1/cases/{queued.pk}/claim/")
    assert taken.status_code == 409 and "already claimed by Derm" in taken.json()["detail"]
    incomplete = api.derm.post(f"/api/v1/cases/{queued.pk}/reviews/", {"reviews": [
        {"lesion": world.lesion_b.pk, "agreement": "agree", "final_diagnosis": "melanoma", "management": "excision"}]},
        format="json")
    assert incomplete.status_code == 409
    done = api.derm.post(f"/api/v1/cases/{queued.pk}/reviews/", {"reviews": [
        {"lesion": world.lesion_a.pk, "agreement": "agree", "final_diagnosis": "melanoma", "management": "excision"}]},
        format="json")
    assert done.status_code == 201, done.json()
    assert done.json()[0]["reviewer"] == "Derm"
    assert Case.objects.get(pk=queued.pk).status == "reviewed"
    assert api.derm.get("/api/v1/queue/").json()["count"] == 0
    reviews = api.clin_a.get(f"/api/v1/reviews/?case={queued.pk}").json()
    assert reviews["count"] == 1 and reviews["results"][0]["final_diagnosis"] == "melanoma"
    assert api.clin_b.get(f"/api/v1/reviews/?case={queued.pk}").json()["count"] == 0


def test_release_of_an_unclaimed_case_is_a_conflict(api, world, queued):
    assert api.derm.post(f"/api/v1/cases/{queued.pk}/release/").status_code == 409
    api.derm.post(f"/api/v1/cases/{queued.pk}/claim/")
    released = api.derm.post(f"/api/v1/cases/{queued.pk}/release/")
    assert released.status_code == 200 and released.json()["claimed_by"] is None


def test_predictions_show_scores_thresholds_and_model_version(api, world, queued):
    rows = api.clin_a.get(f"/api/v1/predictions/?case={queued.pk}").json()["results"]
    assert rows[0]["melanoma_probability"] == 0.8 and rows[0]["melanoma_threshold"] == 0.5
    assert rows[0]["model_version"]["version"] == "unit-test-v1" and rows[0]["flagged"] is True
    image = api.clin_a.get(f"/api/v1/images/{rows[0]['image']}/").json()
    assert image["latest_prediction"]["id"] == rows[0]["id"]
    assert image["file_url"].endswith(f"/api/v1/images/{rows[0]['image']}/file/")


def test_model_registry_is_readable(api, world):
    rows = api.norole.get("/api/v1/models/").json()["results"]
    assert rows[0]["version"] == "unit-test-v1" and rows[0]["melanoma_threshold"] == 0.5
    assert api.norole.post("/api/v1/models/", {}).status_code == 405


def test_a_later_visit_records_the_same_lesion(api, world):
    later = api.clin_a.post("/api/v1/cases/", {"patient": world.patient_a.pk, "clinical_question": "Follow-up",
                                               "visit_date": "2026-01-15"}, format="json")
    assert later.status_code == 201 and later.json()["visit_date"] == "2026-01-15"
    tracked = world.lesion_a.tracked
    same = api.clin_a.post("/api/v1/lesions/", {"case": later.json()["id"], "same_as": tracked.pk}, format="json")
    assert same.status_code == 201, same.json()
    assert same.json()["patient_lesion"]["id"] == tracked.pk and same.json()["anatomic_site"] == "posterior torso"
    visits = api.clin_a.get(f"/api/v1/lesions/?patient_lesion={tracked.pk}").json()
    assert visits["count"] == 2
    mapped = api.clin_a.post("/api/v1/lesions/", {"case": later.json()["id"], "anatomic_site": "head/neck",
                                                  "side": "left", "map_view": "front", "map_x": 0.45, "map_y": 0.08},
                             format="json")
    assert mapped.status_code == 201 and mapped.json()["patient_lesion"]["map_view"] == "front"
    foreign = api.clin_a.post("/api/v1/lesions/", {"case": later.json()["id"], "same_as": world.lesion_b.tracked.pk},
                              format="json")
    assert foreign.status_code == 400 and "same_as" in foreign.json()


def test_histopathology_results_through_the_api(api, world):
    body = {"lesion": world.lesion_a.pk, "diagnosis": "melanoma", "diagnosis_date": timezone.localdate().isoformat(),
            "report_reference": "PATH-2026-0042"}
    assert api.clin_b.post("/api/v1/outcomes/", body, format="json").status_code == 400  # not its lesion
    created = api.clin_a.post("/api/v1/outcomes/", body, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["entered_by"] == "Clin_A"
    twice = api.clin_a.post("/api/v1/outcomes/", body, format="json")
    assert twice.status_code == 400
    fix = api.clin_a.post("/api/v1/outcomes/", {**body, "diagnosis": "nevus", "supersedes": created.json()["id"],
                                                "reason": "lab corrected the report"}, format="json")
    assert fix.status_code == 201, fix.json()
    rows = api.clin_a.get(f"/api/v1/outcomes/?lesion={world.lesion_a.pk}").json()
    assert rows["count"] == 2 and api.clin_b.get("/api/v1/outcomes/").json()["count"] == 0
    assert api.derm.post("/api/v1/outcomes/", body, format="json").status_code in (400, 403)


def test_dicom_upload_through_the_api(api, world, dispatched):
    from tests.support.dicomgen import PATIENT_NAME, dicom_file

    good = dicom_file(AcquisitionDateTime="20261105101500")
    ct = dicom_file(sop_class="1.2.840.10008.5.1.4.1.1.2")
    response = api.clin_a.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/",
                               {"images": [SimpleUploadedFile("derm.dcm", good), SimpleUploadedFile("ct.dcm", ct)]},
                               format="multipart")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert [i["name"] for i in body["accepted"]] == ["derm.dcm"] and "CT Image Storage" in body["rejected"][0]["error"]
    image = api.clin_a.get(f"/api/v1/images/{body['accepted'][0]['image']}/").json()
    assert image["original_format"] == "DICOM" and image["acquired_on"] == "2026-11-05"
    stored = api.clin_a.get(image["file_url"])
    assert stored.status_code == 200 and PATIENT_NAME.encode() not in b"".join(stored.streaming_content)
    assert body["notes"] == []


def test_a_dicom_clinical_photo_sent_as_dermoscopic_is_stored_as_clinical_with_a_note(api, world, dispatched):
    from pydicom.uid import VLPhotographicImageStorage

    from tests.support.dicomgen import dicom_file, rgb_pixels

    photo = dicom_file(rgb_pixels(seed=3), sop_class=VLPhotographicImageStorage)
    response = api.clin_a.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/",
                               {"images": [SimpleUploadedFile("photo.dcm", photo)], "kind": "dermoscopic"},
                               format="multipart")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert [n["name"] for n in body["notes"]] == ["photo.dcm"]
    assert "stored as a clinical photo" in body["notes"][0]["note"]
    image = api.clin_a.get(f"/api/v1/images/{body['accepted'][0]['image']}/").json()
    assert image["kind"] == "clinical"


def test_reviews_and_outcomes_are_404_across_clinics(api, world, queued):
    from cases.models import Outcome, Review

    review = Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree",
                                   final_diagnosis="nevus", management="reassure")
    outcome = Outcome.objects.create(lesion=world.lesion_a, diagnosis="nevus", diagnosis_date=timezone.localdate(),
                                     report_reference="PATH-1", entered_by=world.clin_a)
    for url, model in ((f"/api/v1/reviews/{review.pk}/", "Review"), (f"/api/v1/outcomes/{outcome.pk}/", "Outcome")):
        assert api.clin_a.get(url).status_code == 200, url
        refused = api.clin_b.get(url)
        assert refused.status_code == 404 and refused.json() == {"detail": f"No {model} matches the given query."}
        assert api.norole.get(url).status_code == 404, url


def test_a_dermatologist_of_another_clinic_sees_a_case_only_while_it_waits_for_review(api, world):
    from cases.roles import DERMATOLOGIST
    from tests.api.conftest import issue_token
    from tests.support.case_helpers import make_user
    from rest_framework.test import APIClient

    derm_b = APIClient()
    derm_b.credentials(HTTP_AUTHORIZATION="Token " + issue_token(
        make_user("derm_b", role=DERMATOLOGIST, clinic=world.clinic_b)))
    urls = _detail_urls(world)
    for url in urls:
        assert derm_b.get(url).status_code == 404, url
    assert derm_b.post(f"/api/v1/cases/{world.case_a.pk}/claim/").status_code == 404
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True)
    assert derm_b.get(f"/api/v1/cases/{world.case_a.pk}/").status_code == 200  # the shared review queue


def _not_assessable(world):
    image = make_image(world, sha="b" * 64)
    assessment = {"quality": {"measures": {"sharpness": 3.2, "exposure": 0.41}, "failed": ["blur"],
                              "messages": ["image too blurred"], "ok": False},
                  "ood": {"score": 812.4, "threshold": 640.0, "unfamiliar": True}}
    return Prediction.objects.create(
        image=image, model_version=ModelVersion.objects.get(), status="done", melanoma_probability=0.9,
        malignancy_score=0.95, class_probabilities={"melanoma": 0.9, "nevus": 0.1}, prediction_set=["melanoma"],
        flagged=True, flag_reasons=["Model could not assess this image: image too blurred"], assessable=False,
        assessment_notes=["image too blurred"], assessment=assessment, finished_at=timezone.now())


def test_scores_of_an_image_the_model_could_not_assess_are_not_given(api, world):
    prediction = _not_assessable(world)
    row = api.clin_a.get(f"/api/v1/predictions/{prediction.pk}/").json()
    for name in ("melanoma_probability", "malignancy_score", "class_probabilities", "prediction_set"):
        assert row[name] is None, name
    # still flagged for review, with the reason, as the pages and the FHIR export say
    assert row["flagged"] is True and row["flag_reasons"] == ["Model could not assess this image: image too blurred"]
    assert row["assessable"] is False and row["assessment_notes"] == ["image too blurred"]
    assert row["melanoma_threshold"] == 0.5 and row["status"] == "done"
    latest = api.clin_a.get(f"/api/v1/images/{prediction.image_id}/").json()["latest_prediction"]
    assert latest["melanoma_probability"] is None and latest["assessable"] is False
    listed = api.clin_a.get(f"/api/v1/predictions/?image={prediction.image_id}").json()["results"]
    assert listed[0]["malignancy_score"] is None
    assert Prediction.objects.get(pk=prediction.pk).melanoma_probability == 0.9  # kept in the record


def test_predictions_give_the_quality_and_out_of_domain_result(api, world, queued):
    prediction = _not_assessable(world)
    row = api.clin_a.get(f"/api/v1/predictions/{prediction.pk}/").json()
    assert row["assessment"] == {
        "quality": {"ok": False, "failed": ["blur"], "measures": {"sharpness": 3.2, "exposure": 0.41}},
        "ood": {"score": 812.4, "threshold": 640.0, "unfamiliar": True}}
    # a model without fitted checks stored nothing; one with quality checks only has no ood part
    older = Prediction.objects.exclude(pk=prediction.pk).get()
    assert api.clin_a.get(f"/api/v1/predictions/{older.pk}/").json()["assessment"] is None
    Prediction.objects.filter(pk=prediction.pk).update(
        assessment={"quality": {"measures": {}, "failed": [], "messages": [], "ok": True}})
    assert api.clin_a.get(f"/api/v1/predictions/{prediction.pk}/").json()["assessment"] == {
        "quality": {"ok": True, "failed": [], "measures": {}}, "ood": None}


def test_the_served_fhir_bundle_is_valid_r4b_audited_and_links_the_api_file(api, world, queued):
    from fhir.resources.R4B.bundle import Bundle

    response = api.clin_a.get(f"/api/v1/cases/{queued.pk}/fhir/")
    assert response.status_code == 200 and response["Content-Type"] == "application/fhir+json"
    bundle = Bundle.model_validate_json(response.content)
    assert bundle.type == "collection"
    kinds = {entry.resource.get_resource_type() for entry in bundle.entry}
    assert {"Patient", "BodyStructure", "Media", "Observation", "Device"} <= kinds
    event = AuditEvent.objects.get(action="download", object_type="case")
    assert (event.object_id, event.actor, event.clinic_id) == (str(queued.pk), world.clin_a, world.clinic_a.pk)
    (media,) = [e.resource for e in bundle.entry if e.resource.get_resource_type() == "Media"]
    image_file = api.clin_a.get(media.content.url)  # a token, not a browser session, opens it
    assert image_file.status_code == 200 and image_file["Content-Type"] == "image/png"
    asked = api.clin_a.get(f"/api/v1/cases/{queued.pk}/fhir/", HTTP_ACCEPT="application/fhir+json")
    assert asked.status_code == 200 and asked["Content-Type"] == "application/fhir+json"
    assert api.clin_a.get(f"/api/v1/cases/{world.case_b.pk}/fhir/")["Content-Type"] == "application/json"


def test_an_upload_a_file_download_and_a_claim_are_audited(api, world, queued, dispatched):
    uploaded = api.clin_a.post(f"/api/v1/lesions/{world.lesion_a.pk}/images/",
                               {"images": [SimpleUploadedFile("new.jpg", jpeg(seed=5))]}, format="multipart")
    assert uploaded.status_code == 201, uploaded.json()
    image_pk = uploaded.json()["accepted"][0]["image"]
    upload = AuditEvent.objects.get(action="upload")
    assert (upload.object_type, upload.object_id, upload.actor) == ("lesionimage", str(image_pk), world.clin_a)
    assert (upload.patient_id, upload.clinic_id) == (world.patient_a.pk, world.clinic_a.pk)
    b"".join(api.clin_a.get(f"/api/v1/images/{image_pk}/file/").streaming_content)
    download = AuditEvent.objects.get(action="download")
    assert (download.object_type, download.object_id, download.actor) == ("lesionimage", str(image_pk), world.clin_a)
    assert api.derm.post(f"/api/v1/cases/{queued.pk}/claim/").status_code == 200
    claim = AuditEvent.objects.get(action="claim")
    assert (claim.object_type, claim.object_id, claim.actor) == ("case", str(queued.pk), world.derm)
    assert not AuditEvent.objects.filter(action="download", actor=world.clin_b).exists()


def test_a_correction_cannot_probe_another_clinics_outcome_ids(api, world):
    """Superseding an outcome of a lesion the caller cannot see reads exactly as one that does not exist."""
    from cases.models import Outcome

    day = timezone.localdate().isoformat()
    theirs = Outcome.objects.create(lesion=world.lesion_b, diagnosis="melanoma", diagnosis_date=day,
                                    report_reference="PATH-B-1", entered_by=world.clin_b)
    body = {"lesion": world.lesion_a.pk, "diagnosis": "nevus", "diagnosis_date": day, "report_reference": "PATH-A-1",
            "reason": "lab corrected"}
    foreign = api.clin_a.post("/api/v1/outcomes/", {**body, "supersedes": theirs.pk}, format="json")
    missing = api.clin_a.post("/api/v1/outcomes/", {**body, "supersedes": theirs.pk + 1000}, format="json")
    assert foreign.status_code == missing.status_code == 400
    assert str(foreign.json()["supersedes"]).replace(str(theirs.pk), "N") == \
        str(missing.json()["supersedes"]).replace(str(theirs.pk + 1000), "N")
    assert Outcome.objects.count() == 1
