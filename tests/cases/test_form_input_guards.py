"""Form input guards: the case-correction page says when a moved visit re-scores the images; a visit
can't precede the patient's birth year (nor a corrected birth year follow a visit); a refused
histopathology entry or upload keeps what was typed and chosen."""
from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from cases.correction_forms import CaseCorrectionForm, PatientCorrectionForm
from cases.forms import CaseForm
from cases.models import Case, Outcome, Patient, Prediction
from classifier.models import ModelVersion
from tests.support.case_helpers import make_image
from tests.support.imagegen import upload

pytestmark = pytest.mark.django_db


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


# --- 1. the case correction says when the images are scored again ---------------------------

@pytest.fixture
def scored(world):
    image = make_image(world)
    Prediction.objects.create(image=image, model_version=ModelVersion.objects.get(), status="done",
                              melanoma_probability=0.2, malignancy_score=0.2, finished_at=timezone.now())
    return image


def _correct_case(client, world, **changes):
    case = Case.objects.get(pk=world.case_a.pk)
    data = {"visit_date": case.visit_date.isoformat(), "clinical_question": case.clinical_question,
            "notes": case.notes, "reason": "dictation error"} | changes
    client.force_login(world.clin_a)
    return client.post(reverse("case_correct", args=[case.pk]), data)


def test_the_case_correction_page_says_a_moved_year_rescores(client, world):
    client.force_login(world.clin_a)
    page = client.get(reverse("case_correct", args=[world.case_a.pk])).content.decode()
    assert "nothing is re-scored" not in page
    assert "Moving the visit to another year changes the age the model reads" in page


def test_a_visit_moved_to_another_year_says_the_images_are_scored_again(client, world, scored, dispatched):
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=date(2019, 5, 2))
    response = _correct_case(client, world, visit_date="2020-05-02")
    assert response.status_code == 302
    said = _messages(response)
    assert "Case corrected." in said
    assert "1 image(s) are being scored again with the corrected details; the earlier scores are kept." in said
    assert Prediction.objects.filter(image=scored).count() == 2


def test_a_same_year_move_or_a_note_says_nothing_about_scoring(client, world, scored, dispatched):
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=date(2019, 5, 2))
    response = _correct_case(client, world, visit_date="2019-06-02", notes="seen twice")
    said = _messages(response)
    assert said == ["Case corrected."]
    assert Prediction.objects.filter(image=scored).count() == 1


# --- 2. visit date against the birth year ------------------------------------------------------

def test_a_new_visit_before_the_birth_year_is_refused(world):
    form = CaseForm({"clinical_question": "?", "visit_date": "1969-12-31"}, patient=world.patient_a)
    assert not form.is_valid()
    assert form.errors["visit_date"] == [
        "The visit date 1969-12-31 is before the patient's birth year (1970): check the date, or correct the "
        "patient's birth year first."]
    assert CaseForm({"clinical_question": "?", "visit_date": "1970-01-01"}, patient=world.patient_a).is_valid()


def test_the_new_case_page_refuses_a_visit_before_birth_and_keeps_the_question(client, world):
    client.force_login(world.clin_a)
    before = Case.objects.count()
    response = client.post(reverse("case_create", args=[world.patient_a.pk]),
                           {"visit_date": "1965-03-04", "clinical_question": "Itchy nevus on the back"})
    page = response.content.decode()
    assert response.status_code == 200 and Case.objects.count() == before
    assert "before the patient&#x27;s birth year (1970)" in page
    assert "Itchy nevus on the back" in page and 'value="1965-03-04"' in page


def test_the_case_correction_needs_a_visit_date_and_one_after_the_birth_year(world):
    case = world.case_a
    base = {"clinical_question": "?", "notes": "", "reason": "typo"}
    empty = CaseCorrectionForm(base | {"visit_date": ""}, instance=case)
    assert not empty.is_valid()
    assert empty.errors["visit_date"] == [
        "Enter the visit date (the day the patient was seen); a correction can't leave it empty."]
    early = CaseCorrectionForm(base | {"visit_date": "1969-06-01"}, instance=case)
    assert not early.is_valid() and "before the patient's birth year (1970)" in early.errors["visit_date"][0]
    assert CaseCorrectionForm(base | {"visit_date": "1970-06-01"}, instance=case).is_valid()


def test_an_empty_visit_date_on_the_correction_page_changes_nothing(client, world):
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=date(2019, 5, 2))
    response = _correct_case(client, world, visit_date="", notes="typed note")
    assert response.status_code == 400
    assert "a correction can&#x27;t leave it empty" in response.content.decode()
    assert "typed note" in response.content.decode()  # nothing typed is lost
    assert Case.objects.get(pk=world.case_a.pk).visit_date == date(2019, 5, 2)


def test_a_corrected_birth_year_can_t_follow_the_earliest_visit(world):
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=date(2019, 5, 2))
    later = Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a, clinical_question="?",
                                visit_date=date(2022, 1, 1))
    patient = Patient.objects.get(pk=world.patient_a.pk)
    base = {"identifier": patient.identifier, "sex": patient.sex, "reason": "registry"}
    late = PatientCorrectionForm(base | {"birth_year": "2020"}, instance=patient, clinic=patient.clinic)
    assert not late.is_valid()
    assert late.errors["birth_year"] == [
        "The patient has a visit on 2019-05-02: the birth year can't be later than 2019. "
        "Correct that visit's date first if it is the wrong one."]
    patient = Patient.objects.get(pk=world.patient_a.pk)
    same = PatientCorrectionForm(base | {"birth_year": "2019"}, instance=patient, clinic=patient.clinic)
    assert same.is_valid() and later.pk


# --- 3. a refused histopathology entry keeps what was typed -----------------------------------

def _post_outcome(client, world, **data):
    client.force_login(world.clin_a)
    payload = {"diagnosis": "basal cell carcinoma", "diagnosis_date": timezone.localdate().isoformat(),
               "report_reference": "HP-REF-42"} | data
    return client.post(reverse("lesion_outcome", args=[world.lesion_a.pk]), payload)


def _entry(page: str, lesion_pk: int) -> str:
    """The lesion's histopathology entry (its <details>), as rendered."""
    match = re.search(rf'<div class="review-summary outcome-summary" id="outcome-{lesion_pk}">.*?</details>\s*</div>',
                      page, re.S)
    assert match, "no histopathology panel"
    return match.group(0)


def test_a_bad_report_date_reopens_the_form_with_what_was_typed(client, world):
    tomorrow = (timezone.localdate() + timedelta(days=1)).isoformat()
    response = _post_outcome(client, world, diagnosis_date=tomorrow)
    assert response.status_code == 400 and not Outcome.objects.exists()
    entry = _entry(response.content.decode(), world.lesion_a.pk)
    assert '<details class="outcome-entry" open>' in entry
    assert "Histopathology result not saved" in entry and "The report date can&#x27;t be in the future." in entry
    assert '<option value="basal cell carcinoma" selected>' in entry
    assert 'value="HP-REF-42"' in entry and f'value="{tomorrow}"' in entry
    # the case page as usual otherwise: a GET shows the form closed and empty
    page = client.get(reverse("case_detail", args=[world.case_a.pk])).content.decode()
    assert '<details class="outcome-entry">' in _entry(page, world.lesion_a.pk) and "HP-REF-42" not in page


def test_a_report_dated_before_the_visit_is_marked_at_the_date(client, world):
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=timezone.localdate() - timedelta(days=3))
    early = (timezone.localdate() - timedelta(days=10)).isoformat()
    response = _post_outcome(client, world, diagnosis_date=early)
    entry = _entry(response.content.decode(), world.lesion_a.pk)
    assert response.status_code == 400 and not Outcome.objects.exists()
    assert "The report date is before this visit" in entry and 'value="HP-REF-42"' in entry


def test_a_result_entered_meanwhile_keeps_the_entry_as_a_correction_of_it(client, world):
    other = Outcome.objects.create(lesion=world.lesion_a, diagnosis="nevus", diagnosis_date=timezone.localdate(),
                                   report_reference="HP-OTHER", entered_by=world.clin_a)
    response = _post_outcome(client, world)  # the page showed no result: nothing to supersede
    assert response.status_code == 400 and Outcome.objects.count() == 1
    entry = _entry(response.content.decode(), world.lesion_a.pk)
    assert "a result was entered or corrected meanwhile" in entry and "HP-OTHER" in entry
    assert 'value="HP-REF-42"' in entry and f'name="supersedes" value="{other.pk}"' in entry
    assert "Reason for the correction" in entry


# --- 4. a refused upload keeps the image type chosen -------------------------------------------

def test_a_refused_upload_keeps_clinical_chosen(client, world):
    client.force_login(world.clin_a)
    url = reverse("lesion_detail", args=[world.lesion_a.pk])
    response = client.post(url, {"images": [upload("notes.jpg", b"not an image at all")], "kind": "clinical"})
    page = response.content.decode()
    assert response.status_code == 400
    assert '<option value="clinical" selected>' in page and '<option value="dermoscopic">' in page
    empty = client.post(url, {"kind": "clinical"})  # no file chosen: the form itself is refused
    assert empty.status_code == 400 and '<option value="clinical" selected>' in empty.content.decode()
    fresh = client.get(url).content.decode()
    assert '<option value="dermoscopic" selected>' in fresh and '<option value="clinical">' in fresh
