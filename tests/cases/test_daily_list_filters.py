"""The patients list's and the queue's filters: each filter, the clinic scope under every filter,
bad values (a message and the unfiltered list, never a 500) and filters kept across pages."""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.utils import timezone

from cases.models import Case, Lesion, Patient, Review

pytestmark = pytest.mark.django_db

OLD, RECENT = date(2024, 3, 1), date(2025, 6, 1)


def _patient(world, identifier: str, *, visit: date, flagged=False, awaiting=False, clinic=None, clinician=None):
    """A patient with one case on ``visit`` and one lesion in the given state."""
    patient = Patient.objects.create(clinic=clinic or world.clinic_a, identifier=identifier, birth_year=1975,
                                     sex="female", created_by=clinician or world.clin_a)
    case = Case.objects.create(patient=patient, referring_clinician=clinician or world.clin_a,
                               clinical_question=f"Question {identifier}", visit_date=visit)
    lesion = Lesion.objects.create(case=case, anatomic_site="head/neck", flagged=flagged or awaiting,
                                   awaiting_review=awaiting)
    return patient, case, lesion


def _review(lesion: Lesion, reviewer) -> Review:
    return Review.objects.create(lesion=lesion, reviewer=reviewer, agreement="agree", final_diagnosis="nevus",
                                 management="reassure")


@pytest.fixture
def patients(world):
    """Clinic A: PA-1 (no lesion state, today), PA-2 (awaiting, recent), PA-3 (flagged, reviewed by
    derm, old). Clinic B: PB-1 plus PB-2, which matches every filter above (awaiting, reviewed by derm)."""
    _, _, awaiting = _patient(world, "PA-2", visit=RECENT, awaiting=True)
    _, _, reviewed = _patient(world, "PA-3", visit=OLD, flagged=True)
    _review(reviewed, world.derm)
    _, _, other = _patient(world, "PB-2", visit=RECENT, awaiting=True, clinic=world.clinic_b, clinician=world.clin_b)
    _review(other, world.derm)
    _review(other, world.derm2)
    Case.objects.filter(pk=world.case_b.pk).update(visit_date=OLD)
    return world


def _identifiers(response) -> list[str]:
    return [patient.identifier for patient in response.context["patients"]]


def _queue(response) -> list[int]:
    return [case.pk for case in response.context["cases"]]


# --- Patients -----------------------------------------------------------------------------------

def test_patients_filter_by_lesion_status(client, patients):
    client.force_login(patients.clin_a)
    assert _identifiers(client.get("/patients/")) == ["PA-1", "PA-2", "PA-3"]
    assert _identifiers(client.get("/patients/", {"status": "flagged"})) == ["PA-2", "PA-3"]
    assert _identifiers(client.get("/patients/", {"status": "awaiting"})) == ["PA-2"]
    assert _identifiers(client.get("/patients/", {"status": "reviewed"})) == ["PA-3"]
    assert _identifiers(client.get("/patients/", {"status": "awaiting", "q": "pa-3"})) == []


def test_patients_search_by_identifier_still_works(client, patients):
    client.force_login(patients.clin_a)
    response = client.get("/patients/", {"q": " pa-2 "})
    assert _identifiers(response) == ["PA-2"]
    assert 'name="q" value=" pa-2 "' in response.content.decode()  # the search box keeps what was typed


def test_patients_filter_by_last_visit_dates(client, patients):
    client.force_login(patients.clin_a)
    Case.objects.create(patient=Patient.objects.get(identifier="PA-3"), referring_clinician=patients.clin_a,
                        clinical_question="Follow-up", visit_date=RECENT)  # PA-3's last visit is now RECENT
    assert _identifiers(client.get("/patients/", {"visit_to": "2025-01-01"})) == []
    assert _identifiers(client.get("/patients/", {"visit_from": "2025-06-01", "visit_to": "2025-06-01"})) == [
        "PA-2", "PA-3"]
    today = timezone.localdate().isoformat()
    assert _identifiers(client.get("/patients/", {"visit_from": today})) == ["PA-1"]
    html = client.get("/patients/").content.decode()
    assert "<th scope=\"col\">Last visit</th>" in html and "2025-06-01" in html


def test_a_patient_without_a_visit_has_no_last_visit_and_drops_out_of_a_date_filter(client, patients):
    Patient.objects.create(clinic=patients.clinic_a, identifier="PA-0", birth_year=1990, sex="male",
                           created_by=patients.clin_a)
    client.force_login(patients.clin_a)
    assert "PA-0" in _identifiers(client.get("/patients/"))
    assert "PA-0" not in _identifiers(client.get("/patients/", {"visit_from": "2000-01-01"}))


def test_patients_filter_by_reviewer(client, patients):
    client.force_login(patients.clin_a)
    assert _identifiers(client.get("/patients/", {"reviewer": patients.derm.pk})) == ["PA-3"]
    assert _identifiers(client.get("/patients/", {"reviewer": patients.derm2.pk})) == []  # only reviewed PB-2
    html = client.get("/patients/").content.decode()
    assert f'<option value="{patients.derm.pk}">Derm</option>' in html  # the reviewer choices are dermatologists
    assert f'<option value="{patients.clin_a.pk}">' not in html


@pytest.mark.parametrize("params", [
    {}, {"q": "P"}, {"q": "PB"}, {"status": "flagged"}, {"status": "awaiting"}, {"status": "reviewed"},
    {"visit_from": "2000-01-01"}, {"visit_to": "2030-01-01"}, {"visit_from": "2025-06-01", "visit_to": "2025-06-01"},
    {"reviewer": "DERM"}, {"reviewer": "DERM2"}, {"status": "awaiting", "reviewer": "DERM", "visit_from": "2025-01-01"},
    {"visit_from": "not-a-date"}, {"status": "nonsense"},
])
def test_a_patient_of_another_clinic_never_appears_whatever_the_filter(client, patients, params):
    people = {"DERM": patients.derm.pk, "DERM2": patients.derm2.pk}
    params = {key: people.get(value, value) for key, value in params.items()}
    client.force_login(patients.clin_a)
    response = client.get("/patients/", params)
    assert response.status_code in (200, 400)
    shown = _identifiers(response)
    assert not [identifier for identifier in shown if identifier.startswith("PB")], params
    assert Patient.objects.filter(identifier__in=shown).exclude(clinic=patients.clinic_a).count() == 0


def test_a_dermatologist_filters_only_on_cases_they_may_open(client, patients):
    """PA-1's queued case is visible to a dermatologist; a later, unflagged visit of PA-1 is not, so
    neither its date nor its lesions count."""
    Lesion.objects.filter(pk=patients.lesion_a.pk).update(flagged=True, awaiting_review=True)
    Case.objects.filter(pk=patients.case_a.pk).update(visit_date=OLD)
    hidden = Case.objects.create(patient=patients.patient_a, referring_clinician=patients.clin_a,
                                 clinical_question="Unflagged later visit", visit_date=RECENT)
    _review(Lesion.objects.create(case=hidden, anatomic_site="head/neck"), patients.derm2)
    client.force_login(patients.derm)
    assert "PA-1" in _identifiers(client.get("/patients/", {"visit_to": "2024-12-31"}))
    assert "PA-1" not in _identifiers(client.get("/patients/", {"visit_from": "2025-01-01"}))
    assert "PA-1" not in _identifiers(client.get("/patients/", {"reviewer": patients.derm2.pk}))


@pytest.mark.parametrize("params, message", [
    ({"visit_from": "2025-13-45"}, "Last visit from: Enter a valid date."),
    ({"visit_to": "yesterday"}, "Last visit to: Enter a valid date."),
    ({"visit_from": "2025-02-01", "visit_to": "2025-01-01"}, "“Last visit from” is after “Last visit to”."),
    ({"status": "nonsense", "q": "PA-2"}, "Lesions: Select a valid choice."),
    ({"reviewer": "999999"}, "Reviewer: Select a valid choice."),
    ({"reviewer": "abc"}, "Reviewer: Select a valid choice."),
])
def test_a_bad_patient_filter_gives_a_message_and_the_unfiltered_list(client, patients, params, message):
    client.force_login(patients.clin_a)
    response = client.get("/patients/", params)
    html = response.content.decode()
    assert response.status_code == 400
    assert 'role="alert"' in html and message in html and "the list below is unfiltered" in html
    assert _identifiers(response) == ["PA-1", "PA-2", "PA-3"]


def test_a_clinicians_reviewer_choice_refuses_a_clinician(client, patients):
    client.force_login(patients.clin_a)
    assert client.get("/patients/", {"reviewer": patients.clin_a.pk}).status_code == 400


def test_patient_filters_are_kept_across_pages(client, patients, settings):
    settings.LIST_PAGE_SIZE = 1
    client.force_login(patients.clin_a)
    first = client.get("/patients/", {"status": "flagged", "visit_from": "2024-01-01"})
    assert _identifiers(first) == ["PA-2"]
    html = first.content.decode()
    assert "Page 1 of 2 (2 in all)" in html
    assert 'href="?status=flagged&amp;visit_from=2024-01-01&amp;page=2" rel="next"' in html
    second = client.get("/patients/", {"status": "flagged", "visit_from": "2024-01-01", "page": 2})
    assert _identifiers(second) == ["PA-3"]
    assert '<option value="flagged" selected>' in second.content.decode()  # the form still shows the filter


# --- The queue ----------------------------------------------------------------------------------

@pytest.fixture
def queued(world):
    """Three queued cases: case_a (today, claimed by derm2), case_b (clinic B, old, unclaimed) and a
    recent case of PA-1 claimed by derm."""
    recent = Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a,
                                 clinical_question="Recent visit", visit_date=RECENT)
    Lesion.objects.create(case=recent, anatomic_site="head/neck", flagged=True, awaiting_review=True)
    Lesion.objects.filter(pk__in=[world.lesion_a.pk, world.lesion_b.pk]).update(flagged=True, awaiting_review=True)
    Case.objects.filter(pk=world.case_b.pk).update(visit_date=OLD)
    now = timezone.now()
    Case.objects.filter(pk=world.case_a.pk).update(claimed_by=world.derm2, claimed_at=now, status="in_review")
    Case.objects.filter(pk=recent.pk).update(claimed_by=world.derm, claimed_at=now, status="in_review")
    world.case_recent = recent
    return world


def test_the_queue_filters_by_visit_dates(client, queued):
    client.force_login(queued.derm)
    assert sorted(_queue(client.get("/queue/"))) == sorted([queued.case_a.pk, queued.case_b.pk, queued.case_recent.pk])
    assert _queue(client.get("/queue/", {"visit_to": "2024-12-31"})) == [queued.case_b.pk]
    assert _queue(client.get("/queue/", {"visit_from": "2025-01-01", "visit_to": "2025-12-31"})) == [
        queued.case_recent.pk]
    today = timezone.localdate().isoformat()
    assert _queue(client.get("/queue/", {"visit_from": today})) == [queued.case_a.pk]


def test_the_queue_filters_by_who_holds_the_claim(client, queued):
    client.force_login(queued.derm)
    assert _queue(client.get("/queue/", {"claimed_by": queued.derm2.pk})) == [queued.case_a.pk]
    assert _queue(client.get("/queue/", {"claimed_by": queued.derm.pk})) == [queued.case_recent.pk]
    assert _queue(client.get("/queue/", {"claimed_by": queued.derm.pk, "visit_to": "2024-12-31"})) == []
    html = client.get("/queue/").content.decode()
    assert f'<option value="{queued.derm2.pk}">Derm2</option>' in html
    assert f'<option value="{queued.admin.pk}">Boss</option>' in html  # admins can claim too


def test_the_queues_earlier_filters_still_work(client, queued):
    client.force_login(queued.derm)
    assert _queue(client.get("/queue/", {"claim": "mine"})) == [queued.case_recent.pk]
    assert _queue(client.get("/queue/", {"claim": "unclaimed"})) == [queued.case_b.pk]
    assert _queue(client.get("/queue/", {"q": "recent"})) == [queued.case_recent.pk]
    assert _queue(client.get("/queue/", {"followed": "1"})) == []
    assert 'name="followed" value="1"' in client.get("/queue/").content.decode()
    empty = client.get("/queue/", {"followed": "1"}).content.decode()
    assert "No queued case matches these filters." in empty


@pytest.mark.parametrize("params, message", [
    ({"visit_from": "2024-02-30"}, "Visit from: Enter a valid date."),
    ({"visit_from": "2025-02-01", "visit_to": "2025-01-01"}, "“Visit from” is after “Visit to”."),
    ({"claimed_by": "CLIN"}, "Claim held by: Select a valid choice."),
    ({"claim": "everyone"}, "Claimed: Select a valid choice."),
])
def test_a_bad_queue_filter_gives_a_message_and_the_whole_queue(client, queued, params, message):
    params = {key: queued.clin_a.pk if value == "CLIN" else value for key, value in params.items()}
    client.force_login(queued.derm)
    response = client.get("/queue/", params)
    html = response.content.decode()
    assert response.status_code == 400 and message in html and 'role="alert"' in html
    assert len(_queue(response)) == 3


def test_queue_filters_are_kept_across_pages(client, queued, settings):
    settings.LIST_PAGE_SIZE = 1
    client.force_login(queued.derm)
    params = {"claim": "unclaimed", "visit_to": "2025-12-31"}
    Case.objects.filter(pk=queued.case_recent.pk).update(claimed_by=None, claimed_at=None, status="open")
    first = client.get("/queue/", params)
    assert len(_queue(first)) == 1
    assert 'href="?claim=unclaimed&amp;visit_to=2025-12-31&amp;page=2" rel="next"' in first.content.decode()
    second = client.get("/queue/", params | {"page": 2})
    assert sorted(_queue(first) + _queue(second)) == sorted([queued.case_b.pk, queued.case_recent.pk])
