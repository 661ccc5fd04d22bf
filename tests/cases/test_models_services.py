"""Database constraints, the append-only audit log, idempotent scoring, sweeping and the queue."""
from __future__ import annotations

from dataclasses import dataclass, field
import re
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from cases import queue, scoring, services
from audit.models import AuditEvent
from cases.models import Case, Lesion, Patient, Prediction, Review
from classifier.models import ModelVersion
from tests.support.case_helpers import make_image, stored_files
from tests.support.imagegen import png
from mlcore.clinical import ClinicalContext
from mlcore.labels import CLASSES

pytestmark = pytest.mark.django_db


def integrity_error(make) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        make()


# --- Constraints ------------------------------------------------------------------------------

def test_patient_constraints(world):
    integrity_error(lambda: Patient.objects.create(clinic=world.clinic_a, identifier="PA-1", birth_year=1990,
                                                   created_by=world.clin_a))
    integrity_error(lambda: Patient.objects.create(clinic=world.clinic_a, identifier="old", birth_year=1800,
                                                   created_by=world.clin_a))
    integrity_error(lambda: Patient.objects.create(clinic=world.clinic_a, identifier="fitz", birth_year=1990,
                                                   fitzpatrick_type=7, created_by=world.clin_a))
    integrity_error(lambda: Patient.objects.create(clinic=world.clinic_a, identifier="sex", birth_year=1990,
                                                   sex="x", created_by=world.clin_a))
    # The same identifier in another clinic is a different patient.
    Patient.objects.create(clinic=world.clinic_b, identifier="PA-1", birth_year=1990, created_by=world.clin_b)


def test_case_lesion_review_constraints(world):
    integrity_error(lambda: Case.objects.filter(pk=world.case_a.pk).update(claimed_by=world.derm))  # no claimed_at
    integrity_error(lambda: Case.objects.filter(pk=world.case_a.pk).update(status="lost"))
    integrity_error(lambda: Lesion.objects.create(case=world.case_a, anatomic_site="elbow"))
    integrity_error(lambda: Lesion.objects.create(case=world.case_a, anatomic_site="unknown", awaiting_review=True))
    integrity_error(lambda: Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree",
                                                  final_diagnosis="cancer", management="biopsy"))


def test_image_and_prediction_constraints(world, model_version):
    image = make_image(world)
    integrity_error(lambda: make_image(world))  # same pixels, same lesion
    make_image(world, lesion=world.lesion_b)  # same pixels, other lesion: fine
    Prediction.objects.create(image=image, model_version=model_version)
    integrity_error(lambda: Prediction.objects.create(image=image, model_version=model_version))
    other = make_image(world, sha="c" * 64)
    integrity_error(lambda: Prediction.objects.create(image=other, model_version=model_version, status="done"))
    integrity_error(lambda: Prediction.objects.create(image=other, model_version=model_version,
                                                      melanoma_probability=1.5))
    integrity_error(lambda: Prediction.objects.create(image=other, model_version=model_version, status="running"))


def test_audit_events_are_append_only(world):
    event = AuditEvent.objects.create(action="view", object_type="case", object_id="1", actor=world.clin_a)
    event.action = "delete"
    with pytest.raises(ValidationError):
        event.save()
    with pytest.raises(ValidationError):
        event.delete()
    with pytest.raises(ValidationError):
        AuditEvent.objects.filter(pk=event.pk).update(action="delete")
    with pytest.raises(ValidationError):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).action == "view"


def test_audit_admin_is_read_only(client, world):
    event = AuditEvent.objects.create(action="view", object_type="case", object_id="1", actor=world.clin_a)
    client.force_login(world.admin)
    assert client.get("/admin/audit/auditevent/").status_code == 200
    assert client.get("/admin/audit/auditevent/add/").status_code == 403
    assert client.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    response = client.post(f"/admin/audit/auditevent/{event.pk}/change/", {"action": "delete"})
    assert response.status_code in (403, 302, 200)
    assert AuditEvent.objects.get(pk=event.pk).action == "view"
    for page in ("clinic", "clinicmembership", "patient", "case", "lesion", "lesionimage", "prediction", "review"):
        assert client.get(f"/admin/cases/{page}/").status_code == 200, page


def test_patient_creation_and_view_are_audited(client, world):
    client.force_login(world.clin_a)
    response = client.post("/patients/new/", {"identifier": "NEW-7", "birth_year": 1985, "sex": "female",
                                              "fitzpatrick_type": 3})
    patient = Patient.objects.get(identifier="NEW-7")
    assert response.status_code == 302 and patient.clinic == world.clinic_a
    event = AuditEvent.objects.get(action="create", object_type="patient", object_id=str(patient.pk))
    assert event.new_values["birth_year"] == 1985 and event.clinic_id == world.clinic_a.pk and event.actor == world.clin_a
    assert event.ip_address == "127.0.0.1"
    client.get(f"/patients/{patient.pk}/")
    assert AuditEvent.objects.filter(action="view", object_type="patient", object_id=str(patient.pk)).count() == 1


@pytest.mark.parametrize("data,error", [
    ({"identifier": "PA-1", "birth_year": 1985, "sex": "female"}, "already has a patient"),
    ({"identifier": "ok", "birth_year": 2999, "sex": "female"}, "future"),
    ({"identifier": "ok", "birth_year": 1850, "sex": "female"}, "greater than or equal to 1900"),
    ({"identifier": "John Smith", "birth_year": 1980, "sex": "female"}, "letters, digits"),
    ({"identifier": "ok", "birth_year": 1980, "sex": "female", "fitzpatrick_type": 9}, "valid choice"),
])
def test_bad_patient_input_is_refused_and_changes_nothing(client, world, data, error):
    client.force_login(world.clin_a)
    before = (Patient.objects.count(), AuditEvent.objects.count())
    response = client.post("/patients/new/", data)
    assert response.status_code == 200 and error in response.content.decode()
    assert (Patient.objects.count(), AuditEvent.objects.count()) == before


# --- Scoring service ---------------------------------------------------------------------------

@dataclass
class FakeResult:
    melanoma_probability: float = 0.7
    malignancy_score: float = 0.8
    flagged: bool = True
    flag_reasons: list = field(default_factory=lambda: ["melanoma probability 0.70 ≥ threshold 0.50"])
    inference_ms: float = 12.5
    model_version: str = "unit-test-v1"
    class_probabilities: dict = field(default_factory=lambda: {c: (0.7 if c == "melanoma" else 0.3 / 8) for c in CLASSES})
    clinical_context: dict | None = field(default_factory=lambda: {"age": 56, "sex": "female", "site": "posterior torso"})


@pytest.fixture
def fake_classifier(monkeypatch):
    """Stand-ins for the TensorFlow classifier, counting the calls."""
    calls = {"load": 0, "predict": 0, "heatmap": 0}
    result = FakeResult()

    def get_model(path):
        calls["load"] += 1
        return object()

    def predict_images(model, images, contexts=None):
        calls["predict"] += 1
        calls["contexts"] = contexts
        assert images[0].shape == (64, 96, 3)
        return [result]

    def heatmap(model, image, class_name="melanoma"):
        calls["heatmap"] += 1
        return png(size=(96, 64), seed=9)

    monkeypatch.setattr("mlcore.model_store.get_model", get_model)
    monkeypatch.setattr("mlcore.inference.predict_images", predict_images)
    monkeypatch.setattr("mlcore.explain.gradcam_overlay_png", heatmap)
    return calls, result


def test_scoring_twice_gives_one_done_prediction(world, model_version, fake_classifier, media_root):
    calls, _ = fake_classifier
    prediction = Prediction.objects.create(image=make_image(world), model_version=model_version)
    assert scoring.run_prediction(prediction_id=prediction.pk) == "done (flagged)"
    assert scoring.run_prediction(prediction_id=prediction.pk).startswith("not claimable")
    assert scoring.run_prediction(prediction_id=prediction.pk, run_by="another").startswith("not claimable")
    prediction.refresh_from_db()
    assert prediction.status == "done" and prediction.attempts == 1 and calls["predict"] == 1
    assert prediction.melanoma_probability == pytest.approx(0.7) and prediction.flagged
    # the patient's age at upload, their sex and the lesion's site go to the model, and what it
    # used is kept with the prediction (the patient record may change later)
    age = prediction.image.uploaded_at.year - world.patient_a.birth_year
    assert calls["contexts"] == [ClinicalContext(age=age, sex="female", site="posterior torso")]
    assert prediction.clinical_context == {"age": 56, "sex": "female", "site": "posterior torso"}
    assert prediction.heatmap.name.startswith("heatmaps/")
    assert len([f for f in stored_files(media_root) if f.startswith("heatmaps/")]) == 1
    world.lesion_a.refresh_from_db()
    assert world.lesion_a.flagged and world.lesion_a.awaiting_review
    assert list(queue.review_queue()) == [world.case_a]


def test_registry_thresholds_can_flag(world, model_version, fake_classifier):
    _, result = fake_classifier
    result.flagged, result.flag_reasons, result.melanoma_probability = False, [], 0.05
    model_version.melanoma_threshold = model_version.malignancy_threshold = 0.0
    model_version.save()
    prediction = Prediction.objects.create(image=make_image(world), model_version=model_version)
    scoring.run_prediction(prediction_id=prediction.pk)
    prediction.refresh_from_db()
    assert prediction.flagged
    # in the result page's percent format (cases_extras.percent / percent_against)
    assert prediction.flag_reasons == ["melanoma probability 5.0% ≥ threshold 0.0%", "malignancy score 80.0% ≥ threshold 0.0%"]


def test_registry_thresholds_replace_the_models_decision(world, model_version, fake_classifier):
    _, result = fake_classifier  # the model flags melanoma 0.70 at its own threshold 0.50
    model_version.melanoma_threshold, model_version.malignancy_threshold = 0.9, 0.95
    model_version.save()
    prediction = Prediction.objects.create(image=make_image(world), model_version=model_version)
    scoring.run_prediction(prediction_id=prediction.pk)
    prediction.refresh_from_db()
    assert not prediction.flagged and prediction.flag_reasons == []
    world.lesion_a.refresh_from_db()
    assert not world.lesion_a.awaiting_review


def test_redelivered_running_prediction_resumes(world, model_version, fake_classifier):
    prediction = Prediction.objects.create(image=make_image(world), model_version=model_version, status="running",
                                           started_at=timezone.now(), attempts=1, run_by="task-1", worker="w@h")
    assert scoring.run_prediction(prediction_id=prediction.pk, run_by="task-2").startswith("not claimable")
    assert scoring.run_prediction(prediction_id=prediction.pk, run_by="task-1").startswith("done")
    prediction.refresh_from_db()
    assert prediction.status == "done" and prediction.attempts == 2


def test_stale_running_prediction_is_reclaimable(world, model_version, fake_classifier):
    long_ago = timezone.now() - timedelta(seconds=scoring.hard_time_limit() + 5)
    prediction = Prediction.objects.create(image=make_image(world), model_version=model_version, status="running",
                                           started_at=long_ago, attempts=1)
    assert scoring.run_prediction(prediction_id=prediction.pk).startswith("done")


def test_missing_model_fails_with_clear_error_and_retry_resets(client, world, model_version, media_root,
                                                               django_capture_on_commit_callbacks, dispatched):
    prediction = Prediction.objects.create(image=make_image(world), model_version=model_version)
    assert scoring.run_prediction(prediction_id=prediction.pk) == "failed"
    prediction.refresh_from_db()
    assert prediction.status == "failed" and "Model could not be loaded" in prediction.error
    assert "/nonexistent/model" in prediction.error
    client.force_login(world.clin_a)
    page = client.get(f"/cases/{world.case_a.pk}/").content.decode()
    assert "Scoring failed." in page and f"/predictions/{prediction.pk}/retry/" in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/predictions/{prediction.pk}/retry/")
    assert response.status_code == 302
    prediction.refresh_from_db()
    assert prediction.status == "pending" and prediction.error == "" and dispatched == [prediction.pk]
    assert AuditEvent.objects.filter(action="retry", object_id=str(prediction.pk)).exists()


def test_sweep_sends_unqueued_and_stuck_but_not_fresh(world, model_version, monkeypatch, settings):
    sent = []
    monkeypatch.setattr(scoring, "_send", lambda pk, connection, queue="inference": sent.append(pk))
    settings.SCORING_BACKOFF_S = 0.5
    now = timezone.now()
    never = Prediction.objects.create(image=make_image(world, "1" * 64), model_version=model_version)
    lost = Prediction.objects.create(image=make_image(world, "2" * 64), model_version=model_version,
                                     enqueued_at=now - timedelta(hours=1))
    fresh = Prediction.objects.create(image=make_image(world, "3" * 64), model_version=model_version, enqueued_at=now)
    dead = Prediction.objects.create(image=make_image(world, "4" * 64), model_version=model_version, status="running",
                                     started_at=now - timedelta(hours=1), enqueued_at=now - timedelta(hours=1),
                                     attempts=1)
    running = Prediction.objects.create(image=make_image(world, "5" * 64), model_version=model_version,
                                        status="running", started_at=now, enqueued_at=now, worker="alive@host")
    assert sorted(scoring.sweep(alive={"alive@host"})) == sorted([never.pk, lost.pk])
    dead.refresh_from_db()  # back to pending, and sent again only after its back-off
    assert dead.status == "pending" and dead.enqueued_at is None and dead.not_before > now
    time.sleep(0.6)
    assert scoring.sweep(alive={"alive@host"}) == [dead.pk]
    assert sorted(sent) == sorted([never.pk, lost.pk, dead.pk])
    assert scoring.sweep(alive={"alive@host"}) == []  # a third sweep right away re-sends nothing
    for prediction in (never, lost, dead):
        prediction.refresh_from_db()
        assert prediction.status == "pending" and prediction.enqueued_at is not None
    fresh.refresh_from_db()
    running.refresh_from_db()
    assert fresh.enqueued_at == now and running.status == "running"


def _running(world, model_version, sha: str, *, worker: str, seconds_ago: float, attempts: int) -> Prediction:
    """A prediction a worker claimed ``seconds_ago`` (sent, and running on ``worker``)."""
    started = timezone.now() - timedelta(seconds=seconds_ago)
    return Prediction.objects.create(image=make_image(world, sha * 64), model_version=model_version, status="running",
                                     started_at=started, enqueued_at=started, attempts=attempts, worker=worker)


def test_sweep_requeues_at_once_what_a_dead_worker_was_scoring(world, model_version, monkeypatch, settings):
    monkeypatch.setattr(scoring, "_send", lambda pk, connection, queue="inference": None)
    settings.SCORING_BACKOFF_S, settings.SCORING_ORPHAN_GRACE_S = 0.0, 1.0
    orphan = _running(world, model_version, "6", worker="dead@host", seconds_ago=2, attempts=1)
    alive = _running(world, model_version, "7", worker="alive@host", seconds_ago=2, attempts=1)
    monkeypatch.setattr(scoring, "live_workers", lambda timeout=1.0: None)
    scoring.sweep()  # the workers cannot be asked: nothing is re-queued on a guess
    orphan.refresh_from_db()
    assert orphan.status == "running"
    assert scoring.sweep(alive={"alive@host"}) == [orphan.pk]
    orphan.refresh_from_db()
    alive.refresh_from_db()
    assert (orphan.status, orphan.worker) == ("pending", "") and alive.status == "running"


def test_a_prediction_that_keeps_killing_its_worker_fails_with_its_reason(world, model_version, monkeypatch, settings):
    monkeypatch.setattr(scoring, "_send", lambda pk, connection, queue="inference": None)
    settings.SCORING_BACKOFF_S, settings.SCORING_MAX_ATTEMPTS = 0.0, 3
    poison = _running(world, model_version, "8", worker="dead@host", seconds_ago=30, attempts=3)
    scoring.sweep(alive=set())
    poison.refresh_from_db()
    assert poison.status == "failed" and "stopped 3 times" in poison.error and poison.finished_at is not None
    # a stray message for it changes nothing
    assert scoring.run_prediction(prediction_id=poison.pk, run_by="x").startswith("not claimable")


def test_images_stored_without_a_prediction_get_one_from_the_sweep(world, model_version, monkeypatch):
    sent = []
    monkeypatch.setattr(scoring, "_send", lambda pk, connection, queue="inference": sent.append(pk))
    image = make_image(world, "9" * 64)  # stored while the registry could not be read
    assert not image.predictions.exists()
    scoring.sweep(alive=set())
    prediction = image.predictions.get()
    assert prediction.model_version == model_version and sent == [prediction.pk]


def test_sweep_with_broker_down_leaves_predictions_unqueued(world, model_version, monkeypatch):
    def down(pk, connection, queue="inference"):
        raise ConnectionRefusedError("redis down")

    monkeypatch.setattr(scoring, "_send", down)
    prediction = Prediction.objects.create(image=make_image(world), model_version=model_version)
    assert scoring.sweep() == []
    prediction.refresh_from_db()
    assert prediction.status == "pending" and prediction.enqueued_at is None


# --- Queue, claim, review ------------------------------------------------------------------------

def flag(world, lesion, probability, model_version, sha):
    image = make_image(world, sha=sha, lesion=lesion)
    Prediction.objects.create(image=image, model_version=model_version, status="done", melanoma_probability=probability,
                              malignancy_score=probability, flagged=True, finished_at=timezone.now())
    Lesion.objects.filter(pk=lesion.pk).update(flagged=True, awaiting_review=True, flagged_at=timezone.now())


def test_queue_order_and_size(world, model_version):
    assert queue.queue_size_for(world.derm) == 0 and queue.queue_size_for(world.clin_a) is None
    flag(world, world.lesion_a, 0.4, model_version, "a" * 64)
    flag(world, world.lesion_b, 0.9, model_version, "b" * 64)
    older = Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a, clinical_question="q")
    Case.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(days=3))
    flag(world, Lesion.objects.create(case=older, anatomic_site="unknown"), 0.4, model_version, "c" * 64)
    assert list(queue.review_queue()) == [world.case_b, older, world.case_a]
    assert queue.queue_size_for(world.derm) == 3 and queue.queue_size_for(world.admin) == 3


def test_claim_is_atomic_and_second_reviewer_is_told(client, world, model_version):
    flag(world, world.lesion_a, 0.8, model_version, "a" * 64)
    queue.claim_case(case=world.case_a, reviewer=world.derm)
    with pytest.raises(queue.ClaimError, match="already claimed by Derm"):
        queue.claim_case(case=world.case_a, reviewer=world.derm2)
    queue.claim_case(case=world.case_a, reviewer=world.derm)  # claiming your own case again is harmless
    case = Case.objects.get(pk=world.case_a.pk)
    assert case.claimed_by == world.derm and case.status == "in_review"
    client.force_login(world.derm2)
    response = client.post(f"/cases/{world.case_a.pk}/claim/", follow=True)
    assert "already claimed by Derm" in response.content.decode()
    assert Case.objects.get(pk=world.case_a.pk).claimed_by == world.derm
    assert AuditEvent.objects.filter(action="claim").count() == 1


def test_claim_loses_cleanly_to_a_concurrent_claim(world, model_version):
    flag(world, world.lesion_a, 0.8, model_version, "a" * 64)
    # Simulate the race: a competitor's claim lands between our read and our write.
    Case.objects.filter(pk=world.case_a.pk).update(claimed_by=world.derm2, claimed_at=timezone.now())
    stale = world.case_a  # still says claimed_by=None in memory
    with pytest.raises(queue.ClaimError):
        queue.claim_case(case=stale, reviewer=world.derm)
    assert Case.objects.get(pk=world.case_a.pk).claimed_by == world.derm2


def test_an_expired_claim_is_taken_over_and_an_admin_can_release_one(world, model_version, settings):
    settings.CLAIM_EXPIRY_HOURS = 4
    flag(world, world.lesion_a, 0.8, model_version, "a" * 64)
    queue.claim_case(case=world.case_a, reviewer=world.derm)
    Case.objects.filter(pk=world.case_a.pk).update(claimed_at=timezone.now() - timedelta(hours=3, minutes=59))
    with pytest.raises(queue.ClaimError, match="already claimed"):
        queue.claim_case(case=world.case_a, reviewer=world.derm2)
    Case.objects.filter(pk=world.case_a.pk).update(claimed_at=timezone.now() - timedelta(hours=4, minutes=1))
    queue.claim_case(case=world.case_a, reviewer=world.derm2)  # the claim had lapsed
    case = Case.objects.get(pk=world.case_a.pk)
    assert case.claimed_by == world.derm2
    takeover = AuditEvent.objects.filter(action="claim").order_by("-pk").first()
    assert takeover.old_values == {"claimed_by": world.derm.pk}
    assert queue.release_claims(cases=Case.objects.filter(pk=case.pk), admin=world.admin) == 1
    case.refresh_from_db()
    assert case.claimed_by is None and case.status == "open" and case in queue.review_queue()
    assert AuditEvent.objects.filter(action="release", actor=world.admin).count() == 1


def test_review_flow_over_http(client, world, model_version):
    flag(world, world.lesion_a, 0.8, model_version, "a" * 64)
    client.force_login(world.derm)
    assert "Review queue <span class=\"badge\"" in client.get("/").content.decode()
    assert client.get(f"/cases/{world.case_a.pk}/review/").status_code == 302  # not claimed yet
    assert client.post(f"/cases/{world.case_a.pk}/claim/").status_code == 302
    page = client.get(f"/cases/{world.case_a.pk}/review/")
    assert page.status_code == 200 and page["Cache-Control"] == "private, no-store"
    prefix = f"lesion-{world.lesion_a.pk}"
    bad = client.post(f"/cases/{world.case_a.pk}/review/", {f"{prefix}-agreement": "agree"})
    assert bad.status_code == 400 and Review.objects.count() == 0
    # the page's fingerprint of what it showed goes back with the review (see test_review_page_guards.py)
    seen = re.search(rf'name="{prefix}-seen" value="([^"]*)"', page.content.decode()).group(1)
    response = client.post(f"/cases/{world.case_a.pk}/review/", {
        f"{prefix}-agreement": "agree", f"{prefix}-final_diagnosis": "melanoma",
        f"{prefix}-management": "excision", f"{prefix}-notes": "Atypical network.", f"{prefix}-seen": seen,
    })
    assert response.status_code == 302 and response["Location"] == "/queue/"
    review = Review.objects.get()
    assert (review.reviewer, review.final_diagnosis, review.management) == (world.derm, "melanoma", "excision")
    case = Case.objects.get(pk=world.case_a.pk)
    assert case.status == "reviewed" and case.claimed_by is None
    assert list(queue.review_queue()) == []
    # The reviewer keeps access to the case they reviewed; a colleague who did not review it loses it.
    assert client.get(f"/cases/{world.case_a.pk}/").status_code == 200
    client.force_login(world.derm2)
    assert client.get(f"/cases/{world.case_a.pk}/").status_code == 404
    assert AuditEvent.objects.filter(action="review", object_id=str(review.pk)).exists()


def test_case_and_lesion_creation_over_http(client, world):
    client.force_login(world.clin_a)
    response = client.post(f"/patients/{world.patient_a.pk}/cases/new/", {"clinical_question": "Itchy nodule",
                                                                          "notes": ""})
    case = Case.objects.get(clinical_question="Itchy nodule")
    assert response.status_code == 302 and case.referring_clinician == world.clin_a
    response = client.post(f"/cases/{case.pk}/lesions/new/", {"anatomic_site": "palms/soles", "description": "5 mm"})
    assert response.status_code == 302 and case.lesions.get().anatomic_site == "palms/soles"
    response = client.post(f"/cases/{case.pk}/lesions/new/", {"anatomic_site": "elbow"})
    assert response.status_code == 400 and case.lesions.count() == 1
    page = client.get(f"/cases/{case.pk}/").content.decode()
    assert 'type="file"' in page and "multiple" in page and 'enctype="multipart/form-data"' in page


def test_status_json_reports_predictions(client, world, model_version):
    image = make_image(world)
    prediction = Prediction.objects.create(image=image, model_version=model_version)
    client.force_login(world.clin_a)
    data = client.get(f"/cases/{world.case_a.pk}/status.json").json()
    assert data["active"] is True and data["predictions"][0]["id"] == prediction.pk
    assert data["predictions"][0]["status"] == "pending" and "Waiting to be scored" in data["predictions"][0]["html"]


def test_setup_demo_puts_clinician_in_demo_clinic(db):
    from django.core.management import call_command

    from cases.access import clinic_of, is_clinician, is_reviewer
    from django.contrib.auth import get_user_model

    call_command("setup_demo")
    call_command("setup_demo")  # idempotent
    users = {u.username: u for u in get_user_model().objects.all()}
    assert clinic_of(users["clinician"]).name == "Demo Clinic" and is_clinician(users["clinician"])
    assert clinic_of(users["dermatologist"]) is None and is_reviewer(users["dermatologist"])
    assert is_reviewer(users["admin"]) and clinic_of(users["admin"]).name == "Demo Clinic"


def test_rescoring_a_reviewed_image_does_not_reopen_it_and_lists_a_disagreement(world, model_version, monkeypatch,
                                                                                  fake_classifier):
    """Re-scored with a new version after a dermatologist's review: the lesion stays out of the
    queue; where the new model disagrees with the review the prediction says so, for the admin."""
    from cases.models import Case, Review
    from cases.rescoring import disagreement_count, run_rescore, start_rescore
    from classifier.registry import activate

    sent = []
    monkeypatch.setattr(scoring, "_send", lambda pk, connection, queue="inference": sent.append((pk, queue)))
    monkeypatch.setattr("cases.rescoring.enqueue", lambda pk: None)
    image = make_image(world, "r" * 64)
    Prediction.objects.create(image=image, model_version=model_version, status="done", melanoma_probability=0.1,
                              malignancy_score=0.1, finished_at=timezone.now())
    Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree", final_diagnosis="nevus",
                          management="reassure")
    Case.objects.filter(pk=world.case_a.pk).update(status=Case.Status.REVIEWED)
    new_version = activate(ModelVersion.objects.create(version="v2", status="ready", artifact_path="/x",
                                                       melanoma_threshold=0.0, malignancy_threshold=0.0))
    
    job = start_rescore(user=world.admin)
    run_rescore(job_id=job.pk)
    rescored = Prediction.objects.get(image=image, model_version=new_version)
    assert sent == [(rescored.pk, "rescoring")]  # the low-priority queue
    assert scoring.run_prediction(prediction_id=rescored.pk).startswith("done")
    rescored.refresh_from_db()
    world.lesion_a.refresh_from_db()
    assert rescored.flagged and not world.lesion_a.awaiting_review
    assert Case.objects.get(pk=world.case_a.pk).status == Case.Status.REVIEWED
    assert rescored.review_disagreement.startswith("New model disagrees with review: it flags a lesion reviewed as nevus")
    assert disagreement_count(job) == 1
    # a new image of the same lesion, uploaded after the review, is a new question: it is queued
    later = make_image(world, "5" * 64)
    fresh = Prediction.objects.create(image=later, model_version=new_version)
    scoring.run_prediction(prediction_id=fresh.pk)
    world.lesion_a.refresh_from_db()
    assert world.lesion_a.awaiting_review


def test_sweep_sends_uploads_first_and_leaves_a_waiting_rescore_backlog_alone(world, model_version, monkeypatch,
                                                                             settings):
    """A re-score sent an hour ago is most likely still queued behind its backlog: it is not sent
    again before RESCORE_STALE_AFTER_S, and an upload never sent goes first in the sweep's batch."""
    from classifier.models import ModelVersion

    sent = []
    monkeypatch.setattr(scoring, "_send", lambda pk, connection, queue="inference": sent.append((pk, queue)))
    settings.RESCORE_STALE_AFTER_S = 6 * 3600
    newer = ModelVersion.objects.create(version="unit-test-v2", artifact_path="/nonexistent/model2")
    hour_ago = timezone.now() - timedelta(hours=1)
    images = [make_image(world, str(i) * 64) for i in range(3)]
    for image in images:
        Prediction.objects.create(image=image, model_version=model_version, status="done", melanoma_probability=0.1,
                                  malignancy_score=0.1, finished_at=timezone.now())
    waiting = Prediction.objects.create(image=images[0], model_version=newer, enqueued_at=hour_ago)
    lost = Prediction.objects.create(image=images[1], model_version=newer,
                                     enqueued_at=timezone.now() - timedelta(hours=7))
    upload = Prediction.objects.create(image=make_image(world, "u" * 64), model_version=model_version)
    assert scoring.sweep(alive=set()) == [upload.pk, lost.pk]  # the upload first, the lost re-score after
    assert sent == [(upload.pk, scoring.INTERACTIVE_QUEUE), (lost.pk, scoring.RESCORE_QUEUE)]
    waiting.refresh_from_db()
    assert waiting.enqueued_at == hour_ago


@pytest.mark.django_db(transaction=True)
def test_an_upload_whose_send_fails_after_the_commit_keeps_its_file(world, model_version, monkeypatch):
    """The database drops just after the image's rows commit, while the send is being claimed:
    the upload stands (rows and file), its prediction stays pending for the sweep."""
    from django.core.files.storage import default_storage
    from django.db import OperationalError

    from cases import prediction_states
    from cases.models import LesionImage
    from tests.support.imagegen import png

    def dropped(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(prediction_states, "claim_dispatch", dropped)
    outcome = services.upload_images(lesion=world.lesion_a, files=[SimpleUploadedFile("a.png", png())],
                                     user=world.clin_a)
    (image,) = outcome.accepted
    stored = LesionImage.objects.get(pk=image.pk)
    assert default_storage.exists(stored.file.name)
    assert Prediction.objects.get(image=stored).status == "pending"
