"""Refusals in the documented shapes: a model-layer refusal per field (non_field_errors, never
Django's ``__all__``), a conflict with the records' state a 409 with a message that says which,
and concurrent writes serialised rather than ending in a database error."""
from __future__ import annotations

import threading
import time

import pytest
from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from api.errors import CONCURRENT_WRITE, exception_handler
from cases import services
from cases.models import Lesion, Patient, PatientLesion, Prediction, Review
from cases.scoring import stale_rescore_reason
from classifier.models import ModelVersion
from tests.support.case_helpers import World, make_image, score_image


def _handled(exc: Exception):
    return exception_handler(exc, {"view": None, "request": None})


def test_a_model_refusal_of_the_whole_record_comes_back_under_non_field_errors():
    response = _handled(DjangoValidationError({NON_FIELD_ERRORS: ["Patient with this Clinic and identifier already "
                                                                  "exists."], "birth_year": ["Too early."]}))
    assert response.status_code == 400
    assert response.data == {"non_field_errors": ["Patient with this Clinic and identifier already exists."],
                             "birth_year": ["Too early."]}
    listed = _handled(DjangoValidationError(["That lesion belongs to another patient."]))
    assert (listed.status_code, listed.data) == (400, {"non_field_errors": ["That lesion belongs to another patient."]})


def test_a_write_the_database_refused_is_a_409_that_says_so_and_is_logged(caplog):
    with caplog.at_level("WARNING", logger="api.errors"):
        response = _handled(IntegrityError("UNIQUE constraint failed: cases_patientlesion.patient_id, number"))
    assert (response.status_code, response.data) == (409, {"detail": CONCURRENT_WRITE})
    assert "refused by the database" in caplog.text and "UNIQUE constraint failed" in caplog.text


def test_only_a_duplicate_is_a_409_another_database_refusal_stays_an_error():
    """A NOT NULL or CHECK refusal is a bug, not a concurrent write: it must not tell the client to
    retry (DRF's handler returns None for it, and Django answers 500)."""
    assert _handled(IntegrityError("NOT NULL constraint failed: cases_lesion.site")) is None
    assert _handled(IntegrityError("CHECK constraint failed: lesion_review_needs_flag")) is None

    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    for sqlstate, status in (("23505", 409), ("23514", None)):
        exc = IntegrityError("refused")
        exc.__cause__ = PgError(sqlstate)
        response = _handled(exc)
        assert (response.status_code if response is not None else None) == status


def test_retrying_a_re_score_of_a_version_no_longer_active_is_a_409_and_changes_nothing(api, world):
    image = make_image(world)
    score_image(image, ModelVersion.objects.get())  # the upload's score, still in force
    rolled_back = ModelVersion.objects.create(version="v2", status=ModelVersion.Status.READY, artifact_path="/x")
    stale = Prediction.objects.create(image=image, model_version=rolled_back, status="failed",
                                      finished_at=timezone.now(), error=stale_rescore_reason("v2"))
    refused = api.clin_a.post(f"/api/v1/predictions/{stale.pk}/retry/")
    assert refused.status_code == 409
    assert refused.json() == {"detail": "Model version v2 is no longer active, so this re-score will not run; "
                                        "nothing was changed. The image keeps its result in force."}
    stale.refresh_from_db()
    assert (stale.status, stale.attempts) == ("failed", 0)


def _review(lesion: Lesion) -> dict:
    return {"lesion": lesion.pk, "agreement": "agree", "final_diagnosis": "melanoma", "management": "excision"}


def test_a_repeated_review_submission_says_it_was_already_saved(api, world, queued):
    assert api.derm.post(f"/api/v1/cases/{queued.pk}/claim/").status_code == 200
    url, body = f"/api/v1/cases/{queued.pk}/reviews/", {"reviews": [_review(world.lesion_a)]}
    [saved] = api.derm.post(url, body, format="json").json()
    again = api.derm.post(url, body, format="json")  # the first answer was lost: the client tries again
    review = Review.objects.get()
    assert again.status_code == 409
    assert again.json() == {"detail": f"Lesion {world.lesion_a.pk} of this case was already reviewed by you at "
                                      f"{review.created_at.isoformat()} (review {saved['id']}); nothing was changed."}
    # another reviewer learns that it is done, not by whom
    other = api.admin.post(url, body, format="json")
    assert other.status_code == 409 and other.json()["detail"].endswith(
        "was already reviewed by another reviewer; nothing was changed.")
    # a lesion never flagged is still "not waiting"
    unflagged = Lesion.objects.create(case=queued, anatomic_site="head/neck")
    never = api.derm.post(url, {"reviews": [_review(unflagged)]}, format="json")
    assert never.json() == {"detail": f"Lesion {unflagged.pk} of this case is not waiting for review."}
    assert Review.objects.count() == 1


# --- concurrent writes (PostgreSQL: SQLite takes the write lock when a transaction begins) -------

def _blocked_on_a_lock(timeout: float = 10.0) -> bool:
    """Whether another session of this database waits for a lock (within ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # else a transaction sees its first read again
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
            if cursor.fetchone()[0]:
                return True
            time.sleep(0.05)
    return False


def _race(first, second):
    """Run ``first`` in a transaction left open until ``second``, in another thread and session,
    waits for a lock that ``first`` holds; then commit. Returns (first's result, second's result
    or the exception it raised)."""
    outcome: dict = {}

    def run_second() -> None:
        try:
            outcome["second"] = second()
        except Exception as exc:  # the test reports it
            outcome["second"] = exc
        finally:
            connection.close()

    with transaction.atomic():
        result = first()
        thread = threading.Thread(target=run_second)
        thread.start()
        waited = _blocked_on_a_lock()
    thread.join(30)
    assert waited, f"the second write did not wait for the first: {outcome}"
    return result, outcome["second"]


@pytest.fixture
def pg_world(transactional_db, media_root, fast_passwords):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL (DATABASE_URL); SQLite serialises whole transactions")
    return World()


def test_concurrent_lesions_of_one_patient_are_numbered_one_after_the_other(pg_world):
    world = pg_world

    def add(site: str):
        return lambda: services.add_lesion(user=world.clin_a, case=world.case_a, anatomic_site=site)

    first, second = _race(add("posterior torso"), add("head/neck"))
    assert isinstance(second, Lesion), second
    assert (first.tracked.number, second.tracked.number) == (2, 3)  # lesion_a is L1
    assert PatientLesion.objects.filter(patient=world.patient_a).count() == 3


def test_a_concurrent_duplicate_patient_is_refused_as_invalid_not_a_database_error(pg_world):
    world = pg_world

    def create():
        return services.create_patient(user=world.clin_a, identifier="PA-9", birth_year=1990, sex="female")

    first, second = _race(create, create)
    assert isinstance(first, Patient) and isinstance(second, DjangoValidationError), second
    assert Patient.objects.filter(identifier="PA-9").count() == 1
