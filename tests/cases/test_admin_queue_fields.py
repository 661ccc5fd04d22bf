"""The review queue's state is not edited in the admin: a lesion leaves the queue only through a
dermatologist's review, and a claim only through the audited "release claim" action. The admin's
case and lesion pages show these fields read-only, and a forged POST does not change them."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cases.models import Case, Lesion

pytestmark = pytest.mark.django_db

CASE_INPUTS = ['name="status"', 'name="claimed_by"', 'name="claimed_at_0"', 'name="closed_at_0"',
               'name="closed_by"', 'name="lesions-0-flagged"', 'name="lesions-0-awaiting_review"']
LESION_INPUTS = ['name="flagged"', 'name="awaiting_review"', 'name="flagged_at_0"']


@pytest.fixture
def claimed(world):
    """Clinic A's lesion waiting for review since yesterday, its case claimed by a dermatologist."""
    since, claimed_at = timezone.now() - timedelta(days=1), timezone.now() - timedelta(hours=1)
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True, flagged_at=since)
    Case.objects.filter(pk=world.case_a.pk).update(status=Case.Status.IN_REVIEW, claimed_by=world.derm,
                                                   claimed_at=claimed_at)
    return since, claimed_at


def test_the_case_and_lesion_change_forms_offer_no_queue_inputs(client, world, claimed):
    client.force_login(world.admin)
    page = client.get(f"/admin/cases/case/{world.case_a.pk}/change/").content.decode()
    assert 'name="clinical_question"' in page and 'name="lesions-0-anatomic_site"' in page
    for name in CASE_INPUTS:
        assert name not in page, name
    assert "In review" in page and "derm" in page  # shown, read-only
    page = client.get(f"/admin/cases/lesion/{world.lesion_a.pk}/change/").content.decode()
    assert 'name="anatomic_site"' in page
    for name in LESION_INPUTS:
        assert name not in page, name


def test_a_posted_case_form_cannot_release_a_claim_or_take_a_lesion_out_of_the_queue(client, world, claimed):
    since, claimed_at = claimed
    client.force_login(world.admin)
    case, lesion = world.case_a, world.lesion_a
    saved = client.post(f"/admin/cases/case/{case.pk}/change/", {
        "referring_clinician": case.referring_clinician_id, "visit_date": case.visit_date.isoformat(),
        "clinical_question": "Changing mole? (edited)", "notes": "",
        "status": Case.Status.CLOSED, "claimed_by": "", "claimed_at_0": "", "claimed_at_1": "",
        "closed_at_0": timezone.localdate().isoformat(), "closed_at_1": "10:00:00", "closed_by": world.admin.pk,
        "lesions-TOTAL_FORMS": 1, "lesions-INITIAL_FORMS": 1, "lesions-MIN_NUM_FORMS": 0,
        "lesions-MAX_NUM_FORMS": 1000, "lesions-0-id": lesion.pk, "lesions-0-case": case.pk,
        "lesions-0-anatomic_site": lesion.anatomic_site, "lesions-0-description": "",
        # flagged / awaiting_review left out: an unchecked box
    })
    assert saved.status_code == 302, saved.content.decode()[:2000]
    case = Case.objects.get(pk=case.pk)
    assert case.clinical_question == "Changing mole? (edited)"  # the form itself still saves
    assert (case.status, case.claimed_by, case.claimed_at) == (Case.Status.IN_REVIEW, world.derm, claimed_at)
    assert case.closed_at is None and case.closed_by is None
    lesion = Lesion.objects.get(pk=lesion.pk)
    assert (lesion.flagged, lesion.awaiting_review, lesion.flagged_at) == (True, True, since)


def test_a_posted_lesion_form_cannot_take_the_lesion_out_of_the_queue(client, world, claimed):
    since, _ = claimed
    client.force_login(world.admin)
    lesion = world.lesion_a
    saved = client.post(f"/admin/cases/lesion/{lesion.pk}/change/", {
        "case": lesion.case_id, "tracked": lesion.tracked_id, "anatomic_site": lesion.anatomic_site,
        "description": "edited", "flagged_at_0": "", "flagged_at_1": ""})  # both boxes unchecked
    assert saved.status_code == 302, saved.content.decode()[:2000]
    lesion = Lesion.objects.get(pk=lesion.pk)
    assert lesion.description == "edited"
    assert (lesion.flagged, lesion.awaiting_review, lesion.flagged_at) == (True, True, since)
