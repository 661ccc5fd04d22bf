"""The monitoring page says which model version each figure is about and judges the model on the
calls made in practice: the drift figures are one version's scores (the active one by default) with
the share of uploads it scored; outcomes are resolved per tracked lesion and judged by the first
finished score, never by a later re-score; melanoma and malignant truth are kept apart; empty
scopes never crash; the abstention table counts images, not predictions."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from cases import drift, drift_plots
from cases.models import Case, Clinic, Lesion, LesionImage, Prediction
from cases.monitoring import assessment_rates
from cases.outcomes import record_outcome
from classifier.models import ModelVersion
from tests.support.case_helpers import make_user
from tests.support.monitoring_helpers import at, scored_images, weekly_uploads

pytestmark = pytest.mark.django_db
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TODAY = timezone.localdate()
THIS_WEEK = drift.week_of(TODAY)
LAST_WEEK = THIS_WEEK - timedelta(weeks=1)


def rescore(image: LesionImage, version: ModelVersion, *, probability: float, flagged: bool, revision: int = 0,
            when=None) -> Prediction:
    """A later finished score of ``image`` (another version's re-score, or a correction's revision)."""
    when = when or timezone.now()
    prediction = Prediction.objects.create(image=image, model_version=version, context_revision=revision,
                                           status="done", melanoma_probability=probability,
                                           malignancy_score=probability, flagged=flagged, finished_at=when)
    Prediction.objects.filter(pk=prediction.pk).update(created_at=when)
    return prediction


def result(world, lesion: Lesion, diagnosis: str, **extra):
    clinician = world.clin_a if lesion.case.patient.clinic_id == world.clinic_a.pk else world.clin_b
    return record_outcome(user=clinician, lesion=lesion, diagnosis=diagnosis, diagnosis_date=TODAY,
                          report_reference=f"HP-{lesion.pk}-{diagnosis[:3]}", **extra)


def new_lesion(world, **extra) -> Lesion:
    return Lesion.objects.create(case=world.case_a, anatomic_site="posterior torso", **extra)


def next_visit(world, lesion: Lesion, *, days_later: int = 14) -> Lesion:
    """The same tracked lesion at a later visit of its patient."""
    Case.objects.filter(pk=lesion.case_id).update(visit_date=TODAY - timedelta(days=days_later))
    later = Case.objects.create(patient=lesion.case.patient, referring_clinician=world.clin_a,
                                clinical_question="Excision", visit_date=TODAY)
    return Lesion.objects.create(case=later, anatomic_site=lesion.anatomic_site, tracked=lesion.tracked)


@pytest.fixture
def v2(model_version) -> ModelVersion:
    """A newer version, active; the conftest's version retired (it made the earlier calls)."""
    ModelVersion.objects.filter(pk=model_version.pk).update(status=ModelVersion.Status.RETIRED)
    return ModelVersion.objects.create(version="unit-test-v2", status=ModelVersion.Status.ACTIVE,
                                       melanoma_threshold=0.5, malignancy_threshold=0.6)


# --- 1. the call made in practice ---------------------------------------------------------------

def test_a_lesion_is_judged_by_its_first_score_not_a_later_rescore(world, model_version, v2, client):
    # v1 missed this melanoma; v2, trained on the confirmed outcome, flags it when re-scoring
    (image,) = scored_images(world.lesion_a, when=at(LAST_WEEK), version=model_version, probabilities=[0.2],
                             flagged=[False])
    rescore(image, v2, probability=0.9, flagged=True)
    # a correction's revision of the first call does not replace it either
    (other_image,) = scored_images(new_lesion(world), when=at(LAST_WEEK), version=model_version,
                                   probabilities=[0.2], flagged=[False])
    rescore(other_image, model_version, probability=0.9, flagged=True, revision=1)
    result(world, world.lesion_a, "melanoma")
    result(world, other_image.lesion, "melanoma")
    report = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=3)
    outcomes = report.rows[(LAST_WEEK, world.clinic_a.pk)].outcomes
    assert (outcomes.melanoma_caught, outcomes.melanoma_missed) == (0, 2)
    assert outcomes.versions == {"unit-test-v1": 2}  # the version that made the calls, not the active one
    client.force_login(world.admin)
    page = client.get(reverse("admin:cases_monitoring") + "?weeks=3").content.decode()
    assert "unit-test-v1 (2 lesions)" in page and "0.0% (0/2)" in page


def test_the_first_finished_score_counts_when_the_upload_score_failed(world, model_version, v2):
    image = scored_images(world.lesion_a, when=at(LAST_WEEK), version=model_version, probabilities=[0.2],
                          flagged=[False])[0]
    Prediction.objects.filter(image=image).update(status="failed", melanoma_probability=None,
                                                  malignancy_score=None, finished_at=None)
    rescore(image, v2, probability=0.9, flagged=True, when=at(LAST_WEEK, 14))
    rescore(image, model_version, probability=0.1, flagged=False, revision=1, when=at(LAST_WEEK, 16))
    result(world, world.lesion_a, "melanoma")
    (call,) = drift.outcome_calls([world.clinic_a.pk])
    assert (call.status, call.flagged, call.versions) == (drift.JUDGED, True, ("unit-test-v2",))


# --- 2. one version's scores, with its coverage ------------------------------------------------

def test_drift_figures_are_the_active_versions_scores_with_its_coverage(world, model_version, v2, settings, client):
    settings.MONITOR_REFERENCE_WEEKS, settings.MONITOR_MIN_IMAGES, settings.MONITOR_MIN_PSI_IMAGES = 2, 10, 10
    settings.MONITOR_FLAG_RATE_BOUND, settings.MONITOR_PSI_BOUND = 0.15, 0.25
    # v2's validation scores sit in the 0.1 bin; v1 scored everything higher
    v2.metrics = {drift.VALIDATION_HISTOGRAM_KEY: [0, 100] + [0] * 8}
    v2.save()
    weekly_uploads(world.lesion_a, monday=THIS_WEEK - timedelta(weeks=3), version=model_version, count=30,
                   flag_rate=0.2, probability=0.75)
    old = weekly_uploads(world.lesion_a, monday=LAST_WEEK, version=model_version, count=50, flag_rate=0.2,
                         probability=0.75)
    for image in old[:20]:  # v2 was activated and re-scored 20 of last week's 50 images
        rescore(image, v2, probability=0.1, flagged=False)
    report = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=4)
    assert report.version == v2 and report.validation_reference
    week = report.rows[(LAST_WEEK, world.clinic_a.pk)]
    assert (week.uploads, week.scored, week.flagged, week.coverage) == (50, 20, 0, 0.4)
    assert week.histogram == [0, 20] + [0] * 8 and week.psi == pytest.approx(0.0)
    (check,) = report.checks
    assert check.evaluated and not check.alert  # the version switch is not drift
    assert report.rows[(THIS_WEEK - timedelta(weeks=3), world.clinic_a.pk)].scored == 0
    assert (report.uploads, report.scored, report.coverage) == (80, 20, 0.25)
    # v2's production reference starts with the first upload it scored, not the clinic's first
    assert report.references[world.clinic_a.pk].weeks[0] == LAST_WEEK
    # the page names the version and its share of the period's images, and the plots say whose scores
    client.force_login(world.admin)
    page = client.get(reverse("admin:cases_monitoring") + "?weeks=4").content.decode()
    assert "unit-test-v2 scored 25.0% of this period's images</strong> (20 of 80 uploaded" in page
    assert "Scored by unit-test-v2" in page and "(40.0% of uploads)" in page
    assert 'src="flag-rate.png?weeks=4"' in page
    # an earlier version's figures on request: v1 scored every image, so its PSI against v2's
    # validation histogram is not used (v1 has none: its own production weeks are the reference)
    page = client.get(reverse("admin:cases_monitoring") + "?weeks=4&version=unit-test-v1").content.decode()
    assert "unit-test-v1 scored 100.0% of this period's images" in page
    assert 'src="psi.png?weeks=4&amp;version=unit-test-v1"' in page
    plot = client.get(reverse("admin:cases_monitoring_plot", args=["flag-rate"]) + "?version=unit-test-v1")
    assert plot.status_code == 200 and plot.content.startswith(PNG_SIGNATURE)
    assert client.get(reverse("admin:cases_monitoring") + "?version=nope").status_code == 404
    v1_report = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=4, version=model_version)
    assert v1_report.rows[(LAST_WEEK, world.clinic_a.pk)].scored == 50 and not v1_report.validation_reference


def test_plot_titles_name_the_version(world, model_version, monkeypatch):
    figures = []
    monkeypatch.setattr(drift_plots, "_png", lambda fig: figures.append(fig) or PNG_SIGNATURE)
    report = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=3)
    for name in ("flag-rate", "psi"):
        drift_plots.render(name, report)
    titles = [ax.get_title() for fig in figures for ax in fig.axes]
    assert any(t.startswith("Lesion flag rate per week (lesions with a flagged image / lesions scored by "
                            "unit-test-v1)") for t in titles)
    assert any(t.startswith("Score distribution of unit-test-v1") for t in titles)


# --- 3. outcomes per tracked lesion ------------------------------------------------------------

def test_a_result_at_a_later_visit_judges_the_call_of_the_first_visit(world, model_version, client):
    # visit 1: flagged; visit 2: excised, no new image, the result entered there
    scored_images(world.lesion_a, when=at(LAST_WEEK), version=model_version, probabilities=[0.8], flagged=[True])
    result(world, next_visit(world, world.lesion_a), "melanoma")
    # another lesion: missed at visit 1, flagged at visit 2 (the earliest call is judged)
    missed = new_lesion(world)
    scored_images(missed, when=at(LAST_WEEK), version=model_version, probabilities=[0.2], flagged=[False])
    later = next_visit(world, missed)
    scored_images(later, when=at(THIS_WEEK), version=model_version, probabilities=[0.9], flagged=[True])
    result(world, later, "melanoma")
    # a third: only a clinical photo at visit 1 (forced flag), a dermoscopic image at visit 2 not flagged
    photo = new_lesion(world)
    scored_images(photo, when=at(LAST_WEEK), version=model_version, probabilities=[0.9], flagged=[True],
                  assessable=[False])
    photo_later = next_visit(world, photo)
    scored_images(photo_later, when=at(THIS_WEEK), version=model_version, probabilities=[0.1], flagged=[False])
    result(world, photo_later, "nevus")
    report = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=3)
    last = report.rows[(LAST_WEEK, world.clinic_a.pk)].outcomes
    assert (last.melanoma_caught, last.melanoma_missed, last.benign) == (1, 1, 0)
    this = report.rows[(THIS_WEEK, world.clinic_a.pk)].outcomes
    assert (this.melanomas, this.benign_cleared, this.benign_flagged) == (0, 1, 0)


def test_results_without_a_scored_image_and_disagreeing_visits_are_counted_apart(world, model_version, client):
    unscored = new_lesion(world)  # excised at its first visit before any image was scored
    LesionImage.objects.create(lesion=unscored, file="lesion-images/x.png", sha256="e" * 64, size_bytes=1,
                               width=1, height=1, uploaded_by=world.clin_a)
    result(world, unscored, "melanoma")
    result(world, new_lesion(world), "nevus")  # no image at all: under the week it was entered
    # two visits of one lesion with different results: neither is the truth
    scored_images(world.lesion_a, when=at(THIS_WEEK), version=model_version, probabilities=[0.8])
    result(world, world.lesion_a, "melanoma")
    result(world, next_visit(world, world.lesion_a), "nevus")
    result(world, world.lesion_b, "other")  # "other": neither benign nor malignant known
    scored_images(world.lesion_b, when=at(THIS_WEEK), version=model_version, probabilities=[0.8])
    report = drift.monitoring_report([world.clinic_a, world.clinic_b], today=TODAY, weeks=3)
    pooled = report.outcome_totals(None)
    assert (pooled.without_score, pooled.disagreeing, pooled.other_diagnosis, pooled.judged) == (2, 1, 1, 0)
    assert pooled.set_apart == 4 and pooled.melanoma_sensitivity is None and pooled.specificity is None
    client.force_login(world.admin)
    page = client.get(reverse("admin:cases_monitoring") + "?weeks=3").content.decode()
    assert "2 with a result but no scored image" in page
    assert "1 whose visits have disagreeing results" in page and '1 with the result "other"' in page


# --- 5. melanoma and malignant truth -----------------------------------------------------------

def test_a_flagged_carcinoma_is_a_malignant_catch_not_a_false_positive(world, model_version):
    for diagnosis, flagged in (("basal cell carcinoma", True), ("squamous cell carcinoma", False),
                               ("melanoma", True), ("nevus", True), ("seborrheic keratosis", False),
                               ("dermatofibroma", False)):
        lesion = new_lesion(world)
        scored_images(lesion, when=at(LAST_WEEK), version=model_version, probabilities=[0.4], flagged=[flagged])
        result(world, lesion, diagnosis)
    outcomes = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=3).outcome_totals(world.clinic_a.pk)
    assert (outcomes.melanoma_caught, outcomes.melanomas) == (1, 1)
    assert (outcomes.malignant_caught, outcomes.malignant, outcomes.malignant_sensitivity) == (2, 3, 2 / 3)
    assert (outcomes.benign_cleared, outcomes.benign_flagged, outcomes.specificity) == (2, 1, 2 / 3)


def test_wilson_intervals_on_hand_examples():
    low, high = drift.wilson_interval(1, 2)
    assert (low, high) == (pytest.approx(0.0945, abs=1e-4), pytest.approx(0.9055, abs=1e-4))
    low, high = drift.wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)
    assert drift.wilson_interval(0, 0) is None


# --- 4. empty scopes --------------------------------------------------------------------------

def _all_plots_and_page(client) -> None:
    page = client.get(reverse("admin:cases_monitoring"))
    assert page.status_code == 200
    for name in drift_plots.PLOTS:
        plot = client.get(reverse("admin:cases_monitoring_plot", args=[name]))
        assert plot.status_code == 200 and plot.content.startswith(PNG_SIGNATURE), name


def test_a_staff_user_without_a_clinic_gets_an_empty_page_and_plots(client, world, model_version):
    scored_images(world.lesion_a, when=at(LAST_WEEK), version=model_version, probabilities=[0.5])
    staff = make_user("no_clinic_admin")
    staff.is_staff = True
    staff.save()
    staff.user_permissions.add(Permission.objects.get(codename="view_prediction"))
    client.force_login(staff)
    _all_plots_and_page(client)
    page = client.get(reverse("admin:cases_monitoring")).content.decode()
    assert "No clinic in view" in page and "Clinic A" not in page


def test_a_fresh_install_without_clinics_or_model_versions(client, db):
    admin = make_user("root", admin=True)
    client.force_login(admin)
    _all_plots_and_page(client)
    page = client.get(reverse("admin:cases_monitoring")).content.decode()
    assert "No model version is active" in page
    report = drift.monitoring_report(Clinic.objects.all(), weeks=2)
    assert report.groups == [] and report.coverage is None and report.version is None
    assert report.outcome_summary() == [] and report.checks == []


def test_no_active_version_leaves_the_score_figures_empty(client, world, model_version):
    scored_images(world.lesion_a, when=at(LAST_WEEK), version=model_version, probabilities=[0.5])
    ModelVersion.objects.filter(pk=model_version.pk).update(status=ModelVersion.Status.RETIRED)
    report = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=3)
    week = report.rows[(LAST_WEEK, world.clinic_a.pk)]
    assert (week.uploads, week.scored, week.flag_rate, week.psi, week.coverage) == (1, 0, None, None, 0.0)
    client.force_login(world.admin)
    _all_plots_and_page(client)


# --- 7. the abstention table counts images ------------------------------------------------------

def test_assessment_rates_count_each_image_once_per_version(world, model_version, v2):
    now = timezone.now()
    image, photo = scored_images(world.lesion_a, when=now, version=model_version, probabilities=[0.2, 0.3],
                                 assessable=[False, False])
    # a correction's re-score of the first image (assessable now) and of the photo (still not)
    rescore(image, model_version, probability=0.2, flagged=False, revision=1)
    Prediction.objects.filter(image=image, context_revision=1).update(assessable=True)
    rescore(photo, model_version, probability=0.3, flagged=True, revision=1)
    Prediction.objects.filter(image=photo, context_revision=1).update(assessable=False)
    rescore(image, v2, probability=0.2, flagged=False)  # another version: its own row
    rates = {r.version: r for r in assessment_rates()}
    assert (rates["unit-test-v1"].scored, rates["unit-test-v1"].not_assessable) == (2, 1)
    assert (rates["unit-test-v2"].scored, rates["unit-test-v2"].not_assessable) == (1, 0)
    assert rates["unit-test-v1"].not_assessable_rate == 0.5
