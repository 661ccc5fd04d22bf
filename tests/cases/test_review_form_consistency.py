"""A review that contradicts itself is refused and nothing is saved: a cancer (melanoma, basal or
squamous cell carcinoma) managed by reassurance; a note is asked for where the choices need a
reason (disagreeing with the flag yet diagnosing a malignant lesion, actinic keratosis left alone,
"Other", an excision or a biopsy of a benign diagnosis). A lesion seen at an earlier visit must be answered "changed since?"
Yes or No on the review page."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cases import services
from cases.forms import CANCERS, ReviewForm
from cases.models import Case, Lesion, Prediction, Review
from mlcore.labels import MALIGNANT_CLASSES
from tests.support.case_helpers import make_image

pytestmark = pytest.mark.django_db

PREFIX = "lesion-1"


def _form(**values) -> ReviewForm:
    data = {"agreement": "agree", "final_diagnosis": "melanoma", "management": "excision", "notes": ""} | values
    return ReviewForm(data)


def test_the_cancers_are_the_malignant_classes_but_actinic_keratosis():
    assert CANCERS == MALIGNANT_CLASSES - {"actinic keratosis"} and len(CANCERS) == 3


@pytest.mark.parametrize("diagnosis", sorted(CANCERS))
def test_a_cancer_can_not_be_managed_by_reassurance(diagnosis):
    form = _form(final_diagnosis=diagnosis, management="reassure", notes="typed")
    assert not form.is_valid()
    assert list(form.errors) == ["management"]
    assert "malignant" in form.errors["management"][0] and "reassurance" in form.errors["management"][0]


@pytest.mark.parametrize("values, says", [
    ({"agreement": "disagree", "final_diagnosis": "melanoma"}, "You disagree with the AI flag but diagnose melanoma"),
    ({"final_diagnosis": "other", "management": "follow_up"}, "Name the diagnosis in the notes"),
    ({"final_diagnosis": "actinic keratosis", "management": "reassure"},
     "why actinic keratosis is not to be treated or followed up"),
    ({"final_diagnosis": "nevus", "management": "excision"}, "why a nevus is to have an excision"),
    ({"final_diagnosis": "dermatofibroma", "management": "biopsy"}, "why a dermatofibroma is to have a biopsy"),
])
def test_a_note_is_asked_for_where_the_choices_need_a_reason(values, says):
    form = _form(**values)
    assert not form.is_valid()
    assert list(form.errors) == ["notes"] and says in form.errors["notes"][0]
    assert _form(**values, notes="   ").is_valid() is False  # blank is no note
    assert _form(**values, notes="Histology requested by the patient.").is_valid()


@pytest.mark.parametrize("values", [
    {"final_diagnosis": "melanoma", "management": "excision"},
    {"agreement": "uncertain", "final_diagnosis": "basal cell carcinoma", "management": "biopsy"},
    {"agreement": "disagree", "final_diagnosis": "nevus", "management": "reassure"},
    {"final_diagnosis": "seborrheic keratosis", "management": "follow_up"},
])
def test_consistent_reviews_need_no_note(values):
    assert _form(**values).is_valid()


# --- through the review page: nothing is saved -----------------------------------------------------

def _queued_case(world, model_version, client, lesion=None):
    lesion = lesion or world.lesion_a
    image = make_image(world, lesion=lesion)
    Prediction.objects.create(image=image, model_version=model_version, status="done", melanoma_probability=0.8,
                              malignancy_score=0.8, flagged=True, finished_at=timezone.now())
    Lesion.objects.filter(pk=lesion.pk).update(flagged=True, awaiting_review=True, flagged_at=timezone.now())
    Case.objects.filter(pk=lesion.case_id).update(claimed_by=world.derm, claimed_at=timezone.now(),
                                                  status=Case.Status.IN_REVIEW)
    client.force_login(world.derm)
    url = f"/cases/{lesion.case_id}/review/"
    html = client.get(url).content.decode()
    seen = html.split(f'name="lesion-{lesion.pk}-seen" value="')[1].split('"')[0]
    return url, seen


def _answers(lesion, seen, **values) -> dict:
    prefix = f"lesion-{lesion.pk}"
    data = {"agreement": "agree", "final_diagnosis": "melanoma", "management": "excision", "notes": ""} | values
    return {f"{prefix}-{key}": value for key, value in data.items()} | {f"{prefix}-seen": seen}


@pytest.mark.parametrize("values, field", [
    ({"final_diagnosis": "squamous cell carcinoma", "management": "reassure"}, "management"),
    ({"agreement": "disagree", "final_diagnosis": "basal cell carcinoma"}, "notes"),
    ({"final_diagnosis": "other", "management": "follow_up"}, "notes"),
    ({"final_diagnosis": "nevus", "management": "biopsy"}, "notes"),
])
def test_the_review_page_refuses_an_inconsistent_review_and_saves_nothing(world, model_version, client, values,
                                                                         field):
    url, seen = _queued_case(world, model_version, client)
    refused = client.post(url, _answers(world.lesion_a, seen, **values))
    assert refused.status_code == 400
    assert not Review.objects.exists() and Lesion.objects.get(pk=world.lesion_a.pk).awaiting_review
    form = refused.context["items"][0][1]
    assert list(form.errors) == [field]


def test_a_consistent_review_is_still_saved(world, model_version, client):
    url, seen = _queued_case(world, model_version, client)
    saved = client.post(url, _answers(world.lesion_a, seen, final_diagnosis="nevus", management="excision",
                                      notes="Patient asked for removal."))
    assert saved.status_code == 302 and saved["Location"] == "/queue/"
    review = Review.objects.get()
    assert (review.final_diagnosis, review.management, review.lesion_changed) == ("nevus", "excision", None)


# --- 6. "Changed since the earlier visit?" must be answered for a follow-up lesion ------------------

def _follow_up(world):
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=timezone.localdate() - timedelta(days=90))
    later = services.create_case(user=world.clin_a, patient=world.patient_a, clinical_question="Follow-up",
                                 visit_date=timezone.localdate())
    return services.add_lesion(user=world.clin_a, case=later, anatomic_site="posterior torso",
                               same_as=world.lesion_a.tracked)


def test_a_follow_up_lesion_must_say_whether_it_changed(world, model_version, client):
    again = _follow_up(world)
    url, seen = _queued_case(world, model_version, client, lesion=again)
    page = client.get(url).content.decode()
    # a required Yes/No choice, not a select that can be left at "Unknown"
    assert f'type="radio" name="lesion-{again.pk}-lesion_changed" value="true"' in page
    assert f'name="lesion-{again.pk}-lesion_changed" value="unknown"' not in page
    refused = client.post(url, _answers(again, seen))
    assert refused.status_code == 400 and not Review.objects.exists()
    assert "Say whether the lesion changed since the earlier visit." in refused.content.decode()
    saved = client.post(url, _answers(again, seen, lesion_changed="false"))
    assert saved.status_code == 302
    assert Review.objects.get().lesion_changed is False


def test_a_first_visit_is_not_asked_and_the_api_form_keeps_it_optional(world, model_version, client):
    assert "lesion_changed" not in ReviewForm(change_required=True).fields
    assert ReviewForm({"agreement": "agree", "final_diagnosis": "melanoma", "management": "excision"},
                      earlier_visits=True).is_valid()  # the API's use: optional there
    url, seen = _queued_case(world, model_version, client)
    assert "lesion_changed" not in client.get(url).content.decode()
