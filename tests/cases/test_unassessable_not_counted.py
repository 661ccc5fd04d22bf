"""An image the model could not assess is flagged for review, but that flag is not the model's
call: it never counts as a disagreement with a dermatologist's review, in the score distribution
(PSI) or in the sensitivity / specificity on histopathology outcomes."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from cases import drift, drift_plots, scoring
from cases.models import Lesion, LesionImage, Prediction, Review
from cases.outcomes import record_outcome
from mlcore.labels import CLASSES
from tests.support.case_helpers import make_image
from tests.support.monitoring_helpers import at, scored_images, weekly_uploads
from tests.support.scoring_stubs import StandInScore, every_image_scores

pytestmark = pytest.mark.django_db


LowScore = StandInScore


@pytest.fixture
def low_score(monkeypatch) -> StandInScore:
    """Melanoma 0.10: not flagged by the model."""
    probabilities = {c: (0.1 if c == "melanoma" else 0.9 / 8) for c in CLASSES}
    return every_image_scores(monkeypatch, StandInScore(class_probabilities=probabilities))


def _rescored_after_a_nevus_review(world, model_version):
    image = make_image(world, "d" * 64)
    Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree", final_diagnosis="nevus",
                          management="reassure")
    return image, Prediction.objects.create(image=image, model_version=model_version)


@pytest.mark.parametrize("why", ["clinical photo", "model's own check"])
def test_an_image_the_model_could_not_assess_does_not_disagree_with_the_review(world, model_version, low_score, why):
    image, prediction = _rescored_after_a_nevus_review(world, model_version)
    if why == "clinical photo":
        LesionImage.objects.filter(pk=image.pk).update(kind=LesionImage.Kind.CLINICAL)
    else:
        low_score.assessable, low_score.assessment_notes = False, ["the image is blurred"]
    assert scoring.run_prediction(prediction_id=prediction.pk) == "done (model could not assess)"
    prediction.refresh_from_db()
    assert prediction.flagged and not prediction.assessable  # still sent for review, with its reason
    assert prediction.review_disagreement == ""
    assert not Prediction.objects.exclude(review_disagreement="").exists()  # the admin's "disagrees" filter


def test_an_assessable_score_still_disagrees_with_the_review(world, model_version, low_score):
    image, prediction = _rescored_after_a_nevus_review(world, model_version)
    low_score.melanoma_probability = 0.9  # ≥ the version's threshold 0.5: the model flags it
    scoring.run_prediction(prediction_id=prediction.pk)
    prediction.refresh_from_db()
    assert prediction.assessable and prediction.flagged
    assert prediction.review_disagreement.startswith(
        "A score finished after the review disagrees with review: it flags a lesion reviewed as nevus")


# --- monitoring -------------------------------------------------------------------------------

TODAY = timezone.localdate()
THIS_WEEK = drift.week_of(TODAY)
LAST_WEEK = THIS_WEEK - timedelta(weeks=1)


def test_the_score_histogram_and_psi_use_assessable_images_only(world, model_version, settings):
    settings.MONITOR_REFERENCE_WEEKS, settings.MONITOR_MIN_IMAGES = 2, 30
    # the reference weeks: 40 assessable low scores, and 40 clinical photos scored high
    for back in (6, 5):
        weekly_uploads(world.lesion_a, monday=THIS_WEEK - timedelta(weeks=back), version=model_version, count=40,
                       flag_rate=0.0)
        scored_images(world.lesion_a, when=at(THIS_WEEK - timedelta(weeks=back)), version=model_version,
                      probabilities=[0.95] * 40, flagged=[True] * 40, assessable=[False] * 40)
    # last week: the same assessable scores, no clinical photos
    weekly_uploads(world.lesion_a, monday=LAST_WEEK, version=model_version, count=40, flag_rate=0.0)
    report = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=8)
    reference = report.references[world.clinic_a.pk]
    assert reference.histogram == [0, 80] + [0] * 8  # 0.1 each
    assert (reference.scored, reference.flagged) == (160, 80)  # the flag rate still counts every score
    week = report.rows[(LAST_WEEK, world.clinic_a.pk)]
    assert week.histogram == [0, 40] + [0] * 8 and week.psi == pytest.approx(0.0)
    # a week of unassessable photos does not move the score distribution
    scored_images(world.lesion_a, when=at(THIS_WEEK), version=model_version, probabilities=[0.99] * 5,
                  flagged=[True] * 5, assessable=[False] * 5)
    current = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=8).rows[(THIS_WEEK, world.clinic_a.pk)]
    assert (current.scored, current.not_assessable, current.histogram, current.psi) == (5, 5, [0] * 10, None)


def _lesion_with_outcome(world, diagnosis, *, flagged, assessable):
    lesion = Lesion.objects.create(case=world.case_a, anatomic_site="posterior torso")
    scored_images(lesion, when=at(LAST_WEEK), version=model_version_of(world), probabilities=[0.3] * len(flagged),
                  flagged=flagged, assessable=assessable)
    record_outcome(user=world.clin_a, lesion=lesion, diagnosis=diagnosis, diagnosis_date=timezone.localdate(),
                   report_reference=f"HP-{lesion.pk}")
    return lesion


def model_version_of(world):
    from classifier.models import ModelVersion

    return ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE)


def test_sensitivity_and_specificity_count_the_models_own_flags(world, model_version, client, monkeypatch):
    # a melanoma the model could not assess: forced to review, but not a true positive
    _lesion_with_outcome(world, "melanoma", flagged=[True], assessable=[False])
    # a melanoma the model saw and missed, though a clinical photo of it was flagged for review
    _lesion_with_outcome(world, "melanoma", flagged=[True, False], assessable=[False, True])
    _lesion_with_outcome(world, "melanoma", flagged=[True], assessable=[True])  # caught
    _lesion_with_outcome(world, "nevus", flagged=[True], assessable=[False])  # not a false positive
    _lesion_with_outcome(world, "nevus", flagged=[False], assessable=[True])
    report = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=3)
    week = report.rows[(LAST_WEEK, world.clinic_a.pk)].outcomes
    assert (week.melanoma_caught, week.melanoma_missed, week.melanoma_sensitivity) == (1, 1, 0.5)
    assert (week.benign_cleared, week.benign_flagged, week.specificity) == (1, 0, 1.0)
    assert (week.melanomas_not_assessed, week.benign_not_assessed) == (1, 1)
    # the page says how many were left out and why
    client.force_login(world.admin)
    page = client.get(reverse("admin:cases_monitoring") + "?weeks=3").content.decode()
    assert "50.0% (1/2)" in page
    # under the melanoma and malignant sensitivities and the specificity, in clinic A's row and the pooled one
    assert page.count("1 could not be assessed (sent to review; not counted)") == 6
    assert "2 the model could not assess at any visit (1 malignant, 1 benign)" in page
    # the plot's counts are those of the assessed lesions
    figures = []
    monkeypatch.setattr(drift_plots, "_png", lambda fig: figures.append(fig) or b"")
    drift_plots.render("performance", report)
    (fig,) = figures
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert "Clinic A (n=2)" in labels and "Clinic A (n=1)" in labels  # 2 melanomas (malignant), 1 benign


def test_reviews_of_lesions_the_model_could_not_assess_are_not_agreement(world, model_version, client):
    """Agreement "with the AI flag" needs a call of the model: a review whose lesion only had
    images the model could not assess (sent on a forced flag) is counted apart."""
    forced = Lesion.objects.create(case=world.case_a, anatomic_site="posterior torso")
    scored_images(forced, when=at(LAST_WEEK), version=model_version, probabilities=[0.9], flagged=[True],
                  assessable=[False])
    judged = Lesion.objects.create(case=world.case_a, anatomic_site="posterior torso")
    scored_images(judged, when=at(LAST_WEEK), version=model_version, probabilities=[0.9], flagged=[True])
    # a score made after the review (a re-score) is not what the review agreed with
    late = Lesion.objects.create(case=world.case_a, anatomic_site="head/neck")
    (late_image,) = scored_images(late, when=at(LAST_WEEK), version=model_version, probabilities=[0.9],
                                  flagged=[True], assessable=[False])
    Prediction.objects.create(image=late_image, model_version=model_version, context_revision=1, status="done",
                              melanoma_probability=0.9, malignancy_score=0.9, flagged=True,
                              finished_at=at(LAST_WEEK, 18))
    for lesion, agreement in ((forced, "disagree"), (judged, "agree"), (late, "disagree")):
        review = Review.objects.create(lesion=lesion, reviewer=world.derm, agreement=agreement,
                                       final_diagnosis="nevus", management="reassure")
        Review.objects.filter(pk=review.pk).update(created_at=at(LAST_WEEK, 15))
    report = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=3)
    week = report.rows[(LAST_WEEK, world.clinic_a.pk)]
    assert (week.reviews, week.agreed, week.agreement_rate, week.reviews_not_assessed) == (1, 1, 1.0, 2)
    assert report.reviews_set_apart() == 2
    client.force_login(world.admin)
    page = client.get(reverse("admin:cases_monitoring") + "?weeks=3").content.decode()
    assert "100.0% (1/1)" in page and "2 of lesions the model could not assess (not counted)" in page
