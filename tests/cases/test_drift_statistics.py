"""The statistics of the monitoring page hold up: the PSI is judged only on enough assessable
images, the flag rate is tested on lesions (Fisher's exact test, Bonferroni over the groups), the
reference period takes in weeks until it holds its minimum, the outcome rates say they are among
verified lesions (with PPV and the judged lesions without a result), a photo after the excision
is no call, thin weeks are gaps in the plots, and the abstention table counts recent uploads.
Random weeks are drawn from seeded generators: every run sees the same draws."""
from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pytest
from django.urls import reverse
from django.utils import timezone

from cases import drift, drift_plots
from cases.models import Case, Lesion, Prediction
from cases.monitoring import assessment_rates
from cases.outcomes import record_outcome
from tests.support.monitoring_helpers import at, scored_images, weekly_uploads

TODAY = timezone.localdate()
THIS_WEEK = drift.week_of(TODAY)
LAST_WEEK = THIS_WEEK - timedelta(weeks=1)
MONDAY = date(2026, 3, 2)  # any Monday: the DB-free checks below
# a skewed validation histogram, as a dermoscopy model's melanoma probabilities are
VALIDATION = [500, 200, 100, 60, 40, 30, 25, 20, 15, 10]
BOUNDS = drift.Bounds(flag_rate=0.15, psi=0.25, min_images=30, min_psi_images=200)


def week_with(histogram, *, scored: int | None = None, lesion_flags: dict[int, bool] | None = None) -> drift.WeekStats:
    stats = drift.WeekStats(MONDAY, 1, "Clinic A", scored=sum(histogram) if scored is None else scored,
                            histogram=list(histogram), lesion_flags=lesion_flags or {})
    stats.psi = drift.psi(VALIDATION, stats.histogram)
    return stats


def validation_reference(**extra) -> drift.Reference:
    # no production weeks: the flag rate has nothing to be compared with, only the PSI is checked
    return drift.Reference(1, (), 0, 0, list(VALIDATION), source="validation", **extra)


def flags(flagged: int, lesions: int) -> dict[int, bool]:
    return {i: i < flagged for i in range(lesions)}


def production_reference(flagged: int, lesions: int) -> drift.Reference:
    weeks = tuple(MONDAY - timedelta(weeks=w) for w in (4, 3, 2, 1))
    return drift.Reference(1, weeks, scored=lesions, flagged=flagged, histogram=[0] * 10, lesions=lesions,
                           flagged_lesions=flagged)


# --- 1. the PSI needs enough assessable images ---------------------------------------------------

def test_no_psi_alert_on_unchanged_weeks_of_30_or_60_images():
    rng = np.random.default_rng(20260302)
    shares = np.array(VALIDATION) / sum(VALIDATION)
    for n in (30, 60):
        weeks = [week_with(rng.multinomial(n, shares)) for _ in range(200)]
        # the old rule (no minimum) alarmed on most of these unchanged weeks
        unguarded = drift.Bounds(flag_rate=0.15, psi=0.25, min_images=30, min_psi_images=1)
        noisy = sum(drift.drift_check(w, validation_reference(), unguarded).alert for w in weeks)
        assert noisy > 0.3 * len(weeks), n
        checks = [drift.drift_check(w, validation_reference(), BOUNDS) for w in weeks]
        assert not any(check.alert for check in checks)
        assert all(f"PSI not evaluated: {n} assessable images (needs at least 200)" in c.note for c in checks)
    # at the minimum itself an unchanged week rarely crosses the bound
    weeks = [week_with(rng.multinomial(200, shares)) for _ in range(200)]
    assert sum(drift.drift_check(w, validation_reference(), BOUNDS).alert for w in weeks) <= 4


def test_a_clearly_shifted_week_of_300_images_alerts():
    shifted = [30, 30, 30, 30, 30, 30, 30, 30, 30, 30]  # flat: far more high scores than validation
    check = drift.drift_check(week_with(shifted), validation_reference(), BOUNDS)
    assert check.evaluated and check.alert
    (reason,) = check.reasons
    assert reason.startswith("score distribution shifted: PSI") and "(300 assessable images)" in reason


def test_the_settings_carry_the_psi_minimum(settings):
    settings.MONITOR_MIN_PSI_IMAGES = 123
    assert drift.Bounds.from_settings().min_psi_images == 123


# --- 2. the PSI gate counts assessable images, not scored ones -----------------------------------

def test_psi_not_evaluated_on_30_scored_images_of_which_5_assessable():
    bounds = drift.Bounds(flag_rate=0.15, psi=0.25, min_images=30, min_psi_images=30)
    week = week_with([0, 0, 0, 0, 0, 0, 0, 0, 0, 5], scored=30)  # 25 could not be assessed
    assert week.psi > 0.25 and week.assessable == 5
    check = drift.drift_check(week, validation_reference(), bounds)
    assert not check.alert and not check.evaluated
    assert "PSI not evaluated: 5 assessable images (needs at least 30)" in check.note


# --- 3. the flag rate: lesions, Fisher's exact test, Bonferroni ----------------------------------

def test_a_lesion_counts_once_flagged_when_any_of_its_images_is():
    week = drift.WeekStats(MONDAY, 1, "Clinic A")
    for lesion, flagged in ((7, False), (7, True), (7, False), (8, False), (8, False)):
        week.add_score({"flagged": flagged, "assessable": True, "melanoma_probability": 0.2,
                        "image__lesion_id": lesion})
    assert (week.scored, week.flagged, week.lesions, week.flagged_lesions, week.lesion_flag_rate) == (5, 1, 2, 1, 0.5)


def flag_alert_at_30(week: int, ref: int) -> bool:
    check = drift.drift_check(week_with([3] * 10, lesion_flags=flags(week, 30)), production_reference(ref, 30), BOUNDS)
    assert check.flag_rate_p is not None and check.alpha == 0.05  # compared, one group
    return check.alert


def test_an_unchanged_flag_rate_at_30_lesions_rarely_alerts():
    rng = np.random.default_rng(20260302)
    draws = [(int(rng.binomial(30, 0.3)), int(rng.binomial(30, 0.3))) for _ in range(200)]
    alerts = sum(flag_alert_at_30(week, ref) for week, ref in draws)
    beyond_bound = sum(abs(week - ref) / 30 > 0.15 for week, ref in draws)  # the old rule
    assert alerts < 0.05 * len(draws)
    assert beyond_bound > 0.10 * len(draws)


def test_the_exact_false_alarm_rate_at_30_lesions_is_under_3_percent():
    """Over every outcome of the two weeks (31 × 31), weighted by their binomial probabilities."""
    from scipy.stats import binom

    alerting = [(a, b) for a in range(31) for b in range(31) if flag_alert_at_30(a, b)]
    for p in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5):
        pmf = binom.pmf(range(31), 30, p)
        assert sum(pmf[a] * pmf[b] for a, b in alerting) < 0.03, p
    old = sum(binom.pmf(a, 30, 0.3) * binom.pmf(b, 30, 0.3) for a in range(31) for b in range(31) if abs(a - b) > 4.5)
    assert old > 0.2  # the bound alone, as reviewed


def test_a_flag_rate_from_20_to_60_percent_at_60_lesions_alerts():
    check = drift.drift_check(week_with([6] * 10, lesion_flags=flags(36, 60)), production_reference(12, 60), BOUNDS,
                              comparisons=3)
    (reason,) = check.reasons
    assert reason.startswith("flag rate 60% vs 20% in the reference period (36/60 vs 12/60 lesions with a flagged "
                             "image; change +40 points, bound ±15; Fisher's exact p = ")
    assert check.flag_rate_p < 1e-4 and check.alpha == pytest.approx(0.05 / 3)


def test_bonferroni_over_the_groups_compared_that_week():
    # 23/60 vs 12/60: beyond the bound, p ≈ 0.044: below 0.05, not below 0.05 / 3
    week, reference = week_with([6] * 10, lesion_flags=flags(23, 60)), production_reference(12, 60)
    assert drift.drift_check(week, reference, BOUNDS, comparisons=1).alert
    check = drift.drift_check(week, reference, BOUNDS, comparisons=3)
    assert not check.alert and check.evaluated
    assert "flag rate change beyond the bound but not significant" in check.note
    # a significant change within the bound is no alert either
    big_week = week_with([100] * 10, lesion_flags=flags(300, 1000))
    assert not drift.drift_check(big_week, production_reference(200, 1000), BOUNDS).alert


@pytest.mark.django_db
def test_the_report_divides_the_level_by_the_groups_compared(world, model_version, settings):
    settings.MONITOR_REFERENCE_WEEKS, settings.MONITOR_MIN_IMAGES = 2, 30
    for lesion in (world.lesion_a, world.lesion_b):
        for back in (4, 3, 2):
            weekly_uploads(lesion, monday=THIS_WEEK - timedelta(weeks=back), version=model_version, count=30,
                           flag_rate=0.2, separate_lesions=True)
        weekly_uploads(lesion, monday=LAST_WEEK, version=model_version, count=30, flag_rate=0.2,
                       separate_lesions=True)
    report = drift.monitoring_report([world.clinic_a, world.clinic_b], today=TODAY, weeks=6)
    assert len(report.checks) == 3 and not report.alerts
    assert all(check.alpha == pytest.approx(0.05 / 3) for check in report.checks)
    pooled = report.references[None]
    assert (pooled.lesions, pooled.flagged_lesions) == (120, 24)


# --- 4. the reference period takes in weeks until it holds the minimum --------------------------

@pytest.mark.django_db
def test_a_thin_start_extends_the_reference_until_it_holds_the_minimum(world, model_version, settings):
    settings.MONITOR_REFERENCE_WEEKS, settings.MONITOR_MIN_IMAGES = 4, 30
    first = THIS_WEEK - timedelta(weeks=10)
    week = [first + timedelta(weeks=i) for i in range(8)]  # week[0..3]: 5 images each; then 100 a week
    for monday in week[:4]:
        weekly_uploads(world.lesion_a, monday=monday, version=model_version, count=5, flag_rate=0.2,
                       separate_lesions=True)
    for monday in week[4:]:
        weekly_uploads(world.lesion_a, monday=monday, version=model_version, count=100, flag_rate=0.2,
                       separate_lesions=True)

    def check_of(checked: date) -> drift.DriftCheck:
        report = drift.monitoring_report([world.clinic_a], today=checked + timedelta(weeks=1, days=2), weeks=4)
        (check,) = report.checks
        assert check.week == checked
        return check

    assert check_of(week[3]).note.startswith("flag rate not compared: 5 scored images (the rule needs at least 30)")
    # week 5: the first 4 weeks hold 20 images; the reference may not take in the week checked
    short = check_of(week[4])
    assert short.note.startswith(
        f"flag rate not compared: the reference period ({drift.week_label(week[0])} to {drift.week_label(week[3])}, "
        f"from the first upload the version scored) holds 20 scored images, fewer than 30; it takes in the "
        f"following weeks until it holds 30")
    assert "reference period is not over" not in short.note
    # week 6 on: the reference is weeks 1-5 (120 images), and stays so
    for checked in (week[5], week[6], week[7]):
        check = check_of(checked)
        assert check.reference.weeks == tuple(week[:5]) and check.reference.complete
        assert (check.reference.scored, check.reference.lesions) == (120, 120)
        assert check.flag_rate_p is not None and not check.alert
        assert "flag rate not compared" not in check.note


# --- 5. outcomes among verified lesions: caveat, PPV, judged lesions without a result -----------

def new_lesion(world, case=None) -> Lesion:
    return Lesion.objects.create(case=case or world.case_a, anatomic_site="posterior torso")


def result(world, lesion: Lesion, diagnosis: str) -> None:
    record_outcome(user=world.clin_a, lesion=lesion, diagnosis=diagnosis, diagnosis_date=TODAY,
                   report_reference=f"HP-{lesion.pk}")


@pytest.mark.django_db
def test_the_page_says_the_rates_are_among_verified_lesions_with_ppv_and_unverified_counts(
        client, world, model_version):
    for diagnosis, flagged in (("melanoma", True), ("nevus", True), ("nevus", False)):
        lesion = new_lesion(world)
        scored_images(lesion, when=at(LAST_WEEK), version=model_version, probabilities=[0.5], flagged=[flagged])
        result(world, lesion, diagnosis)
    # judged but never excised: one flagged, two not
    for flagged in (True, False, False):
        scored_images(new_lesion(world), when=at(LAST_WEEK), version=model_version, probabilities=[0.5],
                      flagged=[flagged])
    # only images it could not assess: no call, so not among the judged lesions without a result
    scored_images(new_lesion(world), when=at(LAST_WEEK), version=model_version, probabilities=[0.5],
                  flagged=[True], assessable=[False])
    report = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=3)
    totals = report.outcome_totals(world.clinic_a.pk)
    assert (totals.unverified_flagged, totals.unverified_cleared) == (1, 2)
    assert (totals.ppv, totals.flagged_with_result) == (0.5, 2)
    assert totals.ppv_ci == drift.wilson_interval(1, 2)
    client.force_login(world.admin)
    page = client.get(reverse("admin:cases_monitoring") + "?weeks=3").content.decode()
    assert ("among lesions with histopathology (verification-biased: unflagged lesions are rarely excised)"
            in page)
    assert '<td class="unverified">1 flagged, 2 not flagged</td>' in page
    assert "50.0% (1/2 flagged lesions with a result)" in page
    low, high = totals.ppv_ci
    assert f"95% CI {low * 100:.1f}%–{high * 100:.1f}%" in page


@pytest.mark.django_db
def test_a_lesion_with_a_result_at_a_later_visit_is_not_unverified(world, model_version):
    first = new_lesion(world)
    scored_images(first, when=at(LAST_WEEK), version=model_version, probabilities=[0.8], flagged=[True])
    later = Lesion.objects.create(case=Case.objects.create(patient=world.case_a.patient,
                                                           referring_clinician=world.clin_a,
                                                           clinical_question="Excision", visit_date=TODAY),
                                  anatomic_site=first.anatomic_site, tracked=first.tracked)
    result(world, later, "melanoma")
    totals = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=3).outcome_totals(world.clinic_a.pk)
    assert (totals.unverified, totals.melanoma_caught) == (0, 1)


# --- 6. a photo after the excision is no call on the lesion -------------------------------------

@pytest.mark.django_db
def test_an_assessable_scar_photo_after_the_excision_is_not_the_call(world, model_version):
    excised = new_lesion(world)
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=TODAY - timedelta(days=14))
    scored_images(excised, when=at(LAST_WEEK), version=model_version, probabilities=[0.9], flagged=[True],
                  assessable=[False])
    result(world, excised, "melanoma")
    follow_up = Case.objects.create(patient=world.case_a.patient, referring_clinician=world.clin_a,
                                    clinical_question="Scar check", visit_date=TODAY)
    scar = Lesion.objects.create(case=follow_up, anatomic_site=excised.anatomic_site, tracked=excised.tracked)
    scored_images(scar, when=at(THIS_WEEK), version=model_version, probabilities=[0.05], flagged=[False])
    (call,) = [c for c in drift.outcome_calls([world.clinic_a.pk]) if c.lesion_key == f"tracked-{excised.tracked_id}"]
    assert call.status == drift.NOT_ASSESSED and call.flagged is None
    totals = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=3).outcome_totals(world.clinic_a.pk)
    assert (totals.melanoma_missed, totals.melanomas_not_assessed) == (0, 1)


# --- 7. weeks below the minimum are gaps in the plots, and the legends give n -------------------

@pytest.mark.django_db
def test_a_week_of_2_scored_images_is_a_gap_in_the_plotted_series(world, model_version, settings, monkeypatch):
    settings.MONITOR_MIN_IMAGES = 30
    weekly_uploads(world.lesion_a, monday=THIS_WEEK - timedelta(weeks=2), version=model_version, count=40,
                   flag_rate=0.25, separate_lesions=True)
    scored_images(world.lesion_a, when=at(LAST_WEEK), version=model_version, probabilities=[0.9, 0.1],
                  flagged=[True, False])
    report = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=3)
    series = report.series(world.clinic_a.pk)
    assert series[1].scored == 2 and series[1].lesion_flag_rate == 1.0
    values = drift_plots.plotted_values(series, lambda s: s.lesion_flag_rate, count=lambda s: s.scored, minimum=30)
    # the weeks shown: 40 images; 2 images (100 % of 2 lesions flagged: a gap); none this week
    assert values[0] == 0.25 and math.isnan(values[1]) and math.isnan(values[2])
    values = drift_plots.plotted_values(series, lambda s: s.abstention_rate, count=lambda s: s.scored, minimum=30)
    assert values[0] == 0.0 and math.isnan(values[1]) and math.isnan(values[2])
    # the legend gives the n plotted (the line objects, not pixels)
    figures = []
    monkeypatch.setattr(drift_plots, "_png", lambda fig: figures.append(fig) or b"")
    drift_plots.render("flag-rate", report)
    (fig,) = figures
    labels = {line.get_label() for ax in fig.axes for line in ax.get_lines()}
    assert "Clinic A (n=40 scored images)" in labels
    drift_plots.render("psi", report)
    psi_labels = {line.get_label() for line in figures[1].axes[0].get_lines()}
    assert "Clinic A (n=0 assessable images)" in psi_labels  # no week reaches 200 assessable images


# --- 8. the abstention table counts recent uploads, not recent scores ----------------------------

@pytest.mark.django_db
def test_rescoring_an_old_unassessable_image_leaves_the_30_day_rates(client, world, model_version):
    scored_images(world.lesion_a, when=timezone.now() - timedelta(days=3), version=model_version,
                  probabilities=[0.2], flagged=[False])
    (old,) = scored_images(world.lesion_a, when=timezone.now() - timedelta(days=730), version=model_version,
                           probabilities=[0.9], flagged=[True], assessable=[False])
    before = [(r.version, r.scored, r.not_assessable) for r in assessment_rates()]
    assert before == [("unit-test-v1", 1, 0)]
    # a re-scoring job finishes a new score of the 2-year-old image today
    Prediction.objects.create(image=old, model_version=model_version, context_revision=1, status="done",
                              melanoma_probability=0.9, malignancy_score=0.9, flagged=True, assessable=False,
                              finished_at=timezone.now())
    assert [(r.version, r.scored, r.not_assessable) for r in assessment_rates()] == before
    client.force_login(world.admin)
    page = client.get(reverse("admin:cases_prediction_changelist")).content.decode()
    assert "Images the model could not assess (uploaded in the last 30 days" in page
