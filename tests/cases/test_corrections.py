"""Corrections keep history: audited with old and new values and the reason; a corrected model
input is scored again as a new revision (the old score kept); cases close; reviews are amended."""
from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from audit.models import AuditEvent
from cases import corrections
from classifier.models import ModelVersion
from cases.models import Case, Lesion, Prediction, Review
from tests.support.case_helpers import make_image


@pytest.fixture
def scored(world):
    image = make_image(world)
    Prediction.objects.create(image=image, model_version=ModelVersion.objects.get(), status="done", melanoma_probability=0.2,
                              malignancy_score=0.2, finished_at=timezone.now())
    return image


def test_site_correction_rescores_as_a_new_revision(world, scored, dispatched, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        created = corrections.correct_lesion_site(user=world.clin_a, lesion=world.lesion_a, anatomic_site="head/neck",
                                                  reason="wrong site picked")
    assert [p.context_revision for p in created] == [1] and dispatched == [created[0].pk]
    # the re-score names who corrected the site, next to the reason
    assert created[0].reason == "site corrected from posterior torso to head/neck by Clin_A: wrong site picked"
    assert Prediction.objects.filter(image=scored).count() == 2  # the first score is kept
    event = AuditEvent.objects.get(action="update", object_type="lesion")
    assert event.old_values == {"anatomic_site": "posterior torso"}
    assert event.new_values == {"anatomic_site": "head/neck", "reason": "wrong site picked"}


def test_a_correction_needs_a_reason_and_the_clinic(world, scored):
    with pytest.raises(ValidationError, match="Say why"):
        corrections.correct_lesion_site(user=world.clin_a, lesion=world.lesion_a, anatomic_site="head/neck", reason=" ")
    with pytest.raises(PermissionDenied):
        corrections.correct_lesion_site(user=world.clin_b, lesion=world.lesion_a, anatomic_site="head/neck", reason="x")
    assert Lesion.objects.get(pk=world.lesion_a.pk).anatomic_site == "posterior torso"
    assert Prediction.objects.count() == 1


def test_patient_correction_rescores_only_when_the_model_reads_the_field(world, scored, dispatched):
    none = corrections.correct_patient(user=world.clin_a, patient=world.patient_a, reason="typo",
                                       values={"identifier": "PA-1b", "fitzpatrick_type": 2})
    assert none == []
    again = corrections.correct_patient(user=world.clin_a, patient=world.patient_a, reason="registry said 1971",
                                        values={"birth_year": 1971})
    assert len(again) == 1 and "birth year corrected from 1970 to 1971 by Clin_A" in again[0].reason
    with pytest.raises(ValidationError):
        corrections.correct_patient(user=world.clin_a, patient=world.patient_a, reason="x", values={"birth_year": 1800})


def test_the_model_reads_the_age_at_the_visit_and_a_visit_moved_to_another_year_rescores(world, scored, dispatched):
    from datetime import date

    from cases.context import image_context
    from cases.presentation import age_at_visit

    Case.objects.filter(pk=world.case_a.pk).update(visit_date=date(2019, 5, 2))  # entered later, back-dated
    scored.refresh_from_db()
    assert image_context(scored).age == age_at_visit(scored.lesion.case) == 2019 - world.patient_a.birth_year
    case = Case.objects.get(pk=world.case_a.pk)
    same_year = corrections.correct_case(user=world.clin_a, case=case, reason="wrong day",
                                         values={"visit_date": date(2019, 6, 1)})
    assert "visit_date" in same_year.changed and same_year.rescored == []
    assert Prediction.objects.filter(image=scored).count() == 1  # same age
    moved = corrections.correct_case(user=world.clin_a, case=case, reason="it was 2020",
                                     values={"visit_date": date(2020, 6, 1)})
    again = Prediction.objects.filter(image=scored, context_revision=1).get()
    assert moved.rescored == [again]  # the view says the images are scored again
    assert "visit date corrected from 2019-06-01 to 2020-06-01 (the age at the visit) by Clin_A: it was 2020" == again.reason
    assert corrections.correct_case(user=world.clin_a, case=case, reason="typo", values={"notes": "seen"}).changed == {
        "notes": ("", "seen")}
    assert Prediction.objects.filter(image=scored).count() == 2  # notes are not read by the model


def test_case_closes_only_when_nothing_waits(world, scored):
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True)
    with pytest.raises(ValidationError, match="waiting for a dermatologist"):
        corrections.close_case(user=world.clin_a, case=world.case_a)
    Lesion.objects.filter(pk=world.lesion_a.pk).update(awaiting_review=False)
    corrections.close_case(user=world.clin_a, case=world.case_a, note="discharged")
    case = Case.objects.get(pk=world.case_a.pk)
    assert case.status == "closed" and case.closed_by == world.clin_a
    from cases.access import can_edit_case

    assert not can_edit_case(world.clin_a, case)  # nothing more is added to it
    assert corrections.may_correct(world.clin_a, case)  # but its record can be corrected


def test_amending_a_review_keeps_the_signed_one(world):
    signed = Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree",
                                   final_diagnosis="nevus", management="follow_up")
    amendment = corrections.amend_review(user=world.derm2, review=signed, reason="histology came back",
                                         values={"final_diagnosis": "melanoma", "management": "excision"})
    signed.refresh_from_db()
    assert signed.final_diagnosis == "nevus" and signed.amended_by == amendment
    assert amendment.final_diagnosis == "melanoma" and amendment.agreement == "agree"
    with pytest.raises(ValidationError, match="already amended"):
        corrections.amend_review(user=world.derm, review=signed, reason="again", values={})
    with pytest.raises(PermissionDenied):
        corrections.amend_review(user=world.clin_a, review=amendment, reason="x", values={})


def test_correction_pages_are_scoped(client, world, scored):
    urls = [f"/patients/{world.patient_a.pk}/correct/", f"/cases/{world.case_a.pk}/correct/",
            f"/lesions/{world.lesion_a.pk}/correct/"]
    client.force_login(world.clin_a)
    for url in urls:
        assert client.get(url).status_code == 200, url
    response = client.post(f"/lesions/{world.lesion_a.pk}/correct/", {"anatomic_site": "head/neck", "reason": ""})
    assert response.status_code == 400 and Lesion.objects.get(pk=world.lesion_a.pk).anatomic_site == "posterior torso"
    for other in (world.clin_b, world.norole):
        client.force_login(other)
        for url in urls:
            assert client.get(url).status_code == 404, (other, url)


def test_placing_a_lesion_on_the_map_is_audited_and_scoped(client, world):
    url = f"/patients/{world.patient_a.pk}/lesions/1/place/"
    client.force_login(world.clin_a)
    assert client.get(url).status_code == 200
    missing = client.post(url, {"side": "left", "reason": "placed from the photo"})
    assert missing.status_code == 400 and "Click the body map" in missing.content.decode()
    done = client.post(url, {"side": "left", "map_view": "back", "map_x": "0.4", "map_y": "0.4",
                             "reason": "placed from the photo"})
    assert done.status_code == 302
    tracked = world.lesion_a.tracked
    tracked.refresh_from_db()
    assert (tracked.map_view, tracked.map_x, tracked.side) == ("back", 0.4, "left")
    event = AuditEvent.objects.get(object_type="patientlesion", action="update")
    assert event.new_values["reason"] == "placed from the photo" and event.old_values["map_view"] == ""
    for other in (world.clin_b, world.derm, world.norole):
        client.force_login(other)
        assert client.get(url).status_code == 404
