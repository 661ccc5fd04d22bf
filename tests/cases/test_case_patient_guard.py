"""A visit (case) keeps its patient: its lesions belong to that patient's tracked lesions (body map,
timeline, training labels). The admin shows the patient of an existing case read-only, and the
model refuses to move a case with lesions to another patient, whoever writes it."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from cases.models import Case, Lesion, Patient

pytestmark = pytest.mark.django_db


def _case_post(case, **overrides):
    """The admin's change form for ``case`` as submitted unchanged (its lesions inline)."""
    lesions = list(case.lesions.order_by("pk"))
    data = {"patient": case.patient_id, "referring_clinician": case.referring_clinician_id,
            "visit_date": case.visit_date.isoformat(), "clinical_question": case.clinical_question,
            "notes": case.notes, "status": case.status, "claimed_by": "", "claimed_at_0": "", "claimed_at_1": "",
            "closed_at_0": "", "closed_at_1": "", "closed_by": "",
            "lesions-TOTAL_FORMS": len(lesions), "lesions-INITIAL_FORMS": len(lesions),
            "lesions-MIN_NUM_FORMS": 0, "lesions-MAX_NUM_FORMS": 1000}
    for i, lesion in enumerate(lesions):
        data |= {f"lesions-{i}-id": lesion.pk, f"lesions-{i}-case": case.pk,
                 f"lesions-{i}-anatomic_site": lesion.anatomic_site, f"lesions-{i}-description": lesion.description}
    return data | overrides


def test_the_admin_shows_an_existing_cases_patient_read_only(client, world):
    client.force_login(world.admin)  # a superuser could otherwise pick any clinic's patient
    url = f"/admin/cases/case/{world.case_a.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    assert "patient" not in page.context["adminform"].form.fields and "PA-1" in page.content.decode()
    saved = client.post(url, _case_post(world.case_a, patient=world.patient_b.pk, notes="moved?"))
    assert saved.status_code == 302
    case = Case.objects.get(pk=world.case_a.pk)
    assert case.notes == "moved?" and case.patient == world.patient_a
    assert world.lesion_a.tracked.patient == world.patient_a and not world.patient_b.tracked_lesions.filter(
        visits__case=world.case_a).exists()


def test_the_admin_still_adds_a_case_for_a_chosen_patient(client, world):
    client.force_login(world.admin)
    page = client.get("/admin/cases/case/add/")
    assert "patient" in page.context["adminform"].form.fields
    added = client.post("/admin/cases/case/add/", {
        "patient": world.patient_b.pk, "referring_clinician": world.clin_b.pk, "visit_date": "2026-01-15",
        "clinical_question": "Added in the admin", "notes": "", "status": "open", "claimed_by": "",
        "claimed_at_0": "", "claimed_at_1": "", "closed_at_0": "", "closed_at_1": "", "closed_by": "",
        "lesions-TOTAL_FORMS": 1, "lesions-INITIAL_FORMS": 0, "lesions-MIN_NUM_FORMS": 0,
        "lesions-MAX_NUM_FORMS": 1000, "lesions-0-anatomic_site": "head/neck", "lesions-0-description": "new"})
    assert added.status_code == 302, added.context["adminform"].form.errors if added.context else added
    case = Case.objects.get(clinical_question="Added in the admin")
    assert case.patient == world.patient_b and case.lesions.get().tracked.patient == world.patient_b


def test_the_model_refuses_to_move_a_case_with_lesions(world):
    case = Case.objects.get(pk=world.case_a.pk)
    case.patient = world.patient_b
    with pytest.raises(ValidationError) as cleaned:
        case.full_clean()
    assert cleaned.value.message_dict["patient"] == [Case.MOVED_WITH_LESIONS]
    with pytest.raises(ValidationError, match="cannot be moved to another patient"):
        case.save()
    with pytest.raises(ValidationError, match="cannot be moved to another patient"):
        case.save(update_fields=["patient"])
    assert Case.objects.get(pk=case.pk).patient == world.patient_a
    # other changes of the case are saved as before
    case = Case.objects.get(pk=world.case_a.pk)
    case.notes = "seen again"
    case.save()
    case.full_clean()
    assert Case.objects.get(pk=case.pk).notes == "seen again"


def test_creating_cases_and_moving_one_without_lesions_still_work(world):
    other = Patient.objects.create(clinic=world.clinic_a, identifier="PA-2", birth_year=1990, sex="male",
                                   created_by=world.clin_a)
    case = Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a, clinical_question="Mole?")
    case.full_clean()
    case.patient = other  # entered under the wrong patient, nothing recorded yet
    case.full_clean()
    case.save()
    assert Case.objects.get(pk=case.pk).patient == other
    lesion = Lesion.objects.create(case=case, anatomic_site="head/neck")
    assert lesion.tracked.patient == other
