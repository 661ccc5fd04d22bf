"""Histopathology outcomes (entered by the clinic, append-only, audited), their precedence as
training labels, and the admin's monitoring: weekly figures, PSI, drift alert, plots."""
from __future__ import annotations

import math
from datetime import date, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from cases import drift, drift_plots
from cases.models import Case, Lesion, LesionImage, Outcome, Prediction, Review
from cases.outcomes import current_outcome, record_outcome
from cases.training_labels import reviewed_records
from tests.support.case_helpers import make_image, make_user, score_image
from tests.support.monitoring_helpers import at, scored_images, weekly_uploads

pytestmark = pytest.mark.django_db
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def enter(world, lesion=None, user=None, **changes) -> Outcome:
    values = dict(diagnosis="melanoma", diagnosis_date=timezone.localdate(), report_reference="HP-2026-0001")
    values.update(changes)
    return record_outcome(user=user or world.clin_a, lesion=lesion or world.lesion_a, **values)


def post_outcome(client, lesion, **data):
    payload = {"diagnosis": "melanoma", "diagnosis_date": timezone.localdate().isoformat(),
               "report_reference": "HP-77"} | data
    return client.post(reverse("lesion_outcome", args=[lesion.pk]), payload)


# --- recording outcomes -----------------------------------------------------------------------

def test_the_clinic_enters_a_result_on_the_case_page_and_it_is_audited(client, world):
    client.force_login(world.clin_a)
    page = client.get(reverse("case_detail", args=[world.case_a.pk])).content.decode()
    assert "Enter the histopathology result" in page
    response = post_outcome(client, world.lesion_a, report_reference=" HP-77 ")
    assert response.status_code == 302
    assert response["Location"].endswith(f"/cases/{world.case_a.pk}/#outcome-{world.lesion_a.pk}")
    outcome = Outcome.objects.get()
    assert (outcome.diagnosis, outcome.report_reference, outcome.entered_by) == ("melanoma", "HP-77", world.clin_a)
    event = AuditEvent.objects.get(object_type="outcome")
    assert (event.action, event.actor, event.clinic_id, event.patient_id) == (
        "create", world.clin_a, world.clinic_a.pk, world.patient_a.pk)
    assert event.new_values["report_reference"] == "HP-77" and event.new_values["diagnosis"] == "melanoma"
    page = client.get(reverse("case_detail", args=[world.case_a.pk])).content.decode()
    assert "Histopathology result saved: Melanoma, report HP-77." in page
    assert "Report reference: <strong>HP-77</strong>" in page and "Entered by Clin_A" in page
    assert "Correct the histopathology result" in page


def test_other_clinics_and_reviewers_cannot_enter_a_result(client, world):
    client.force_login(world.clin_b)
    assert post_outcome(client, world.lesion_a).status_code == 404  # outside their scope: not found
    # a dermatologist sees a case in the queue, but the result is the clinic's to enter
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True)
    client.force_login(world.derm)
    assert "Enter the histopathology result" not in client.get(
        reverse("case_detail", args=[world.case_a.pk])).content.decode()
    assert post_outcome(client, world.lesion_a).status_code == 403
    with pytest.raises(PermissionDenied):
        enter(world, user=world.clin_b)
    assert not Outcome.objects.exists()
    assert client.get(reverse("lesion_outcome", args=[world.lesion_a.pk])).status_code == 405


def test_refusals_name_the_problem(client, world):
    tomorrow = timezone.localdate() + timedelta(days=1)
    with pytest.raises(ValidationError) as future:
        enter(world, diagnosis_date=tomorrow)
    assert "can't be in the future" in str(future.value.message_dict["diagnosis_date"])
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=timezone.localdate() - timedelta(days=3))
    world.lesion_a.case.refresh_from_db()
    with pytest.raises(ValidationError) as early:
        enter(world, diagnosis_date=timezone.localdate() - timedelta(days=10))
    assert "before this visit" in str(early.value.message_dict["diagnosis_date"])
    with pytest.raises(ValidationError) as blank:
        enter(world, report_reference="  ")
    assert "report_reference" in blank.value.message_dict
    client.force_login(world.clin_a)
    response = post_outcome(client, world.lesion_a, diagnosis_date=tomorrow.isoformat())
    page = response.content.decode()  # the case page again, the form open with what was typed
    assert response.status_code == 400 and "Histopathology result not saved" in page
    assert "The report date can&#x27;t be in the future." in page and 'value="HP-77"' in page
    assert not Outcome.objects.exists() and not AuditEvent.objects.filter(object_type="outcome").exists()


def test_a_correction_supersedes_the_result_and_keeps_the_history(client, world):
    first = enter(world, diagnosis="nevus")
    with pytest.raises(ValidationError, match="already has a result"):
        enter(world, diagnosis="melanoma")
    with pytest.raises(ValidationError, match="Say why"):
        enter(world, diagnosis="melanoma", supersedes=first)
    second = enter(world, diagnosis="melanoma", supersedes=first, reason="Addendum after deeper levels",
                   report_reference="HP-2026-0001-A")
    with pytest.raises(ValidationError, match="current result"):
        enter(world, diagnosis="other", supersedes=first, reason="stale page")
    assert current_outcome(world.lesion_a) == second
    first.refresh_from_db()
    assert first.diagnosis == "nevus" and first.superseded_by == second  # the earlier entry is kept as it was
    with pytest.raises(ValueError, match="append-only"):
        first.save()
    assert AuditEvent.objects.filter(object_type="outcome", action="create").count() == 2
    # on the page: the current result, the correction's reason and the earlier entry
    client.force_login(world.clin_a)
    page = client.get(reverse("case_detail", args=[world.case_a.pk])).content.decode()
    assert "Reason: Addendum after deeper levels" in page and "Earlier entries (1)" in page
    # a correction through the form needs the id of the result the page showed
    response = post_outcome(client, world.lesion_a, diagnosis="other", supersedes=str(first.pk), reason="x")
    assert response.status_code == 400 and Outcome.objects.count() == 2
    assert "a result was entered or corrected meanwhile" in response.content.decode()
    post_outcome(client, world.lesion_a, diagnosis="other", supersedes=str(second.pk), reason="Lab re-issued")
    assert current_outcome(world.lesion_a).diagnosis == "other"


def test_a_result_can_be_entered_after_the_case_is_closed(world):
    Case.objects.filter(pk=world.case_a.pk).update(status=Case.Status.CLOSED, closed_at=timezone.now())
    world.lesion_a.case.refresh_from_db()
    assert enter(world).pk


# --- training labels --------------------------------------------------------------------------

def test_histopathology_outranks_the_review_as_training_label(world, model_version, tmp_path):
    reviewed = make_image(world, sha="1" * 64)
    Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="disagree",
                          final_diagnosis="nevus", management="excision")
    enter(world, diagnosis="melanoma", report_reference="HP-9", diagnosis_date=date.today())
    # an outcome without a review is a label too; "other" keeps a reviewed lesion out
    only_outcome = Lesion.objects.create(case=world.case_a, anatomic_site="head/neck")
    make_image(world, sha="2" * 64, lesion=only_outcome)
    enter(world, lesion=only_outcome, diagnosis="basal cell carcinoma")
    other = Lesion.objects.create(case=world.case_b, anatomic_site="head/neck")
    make_image(world, sha="3" * 64, lesion=other)
    Review.objects.create(lesion=other, reviewer=world.derm, agreement="agree", final_diagnosis="melanoma",
                          management="excision")
    enter(world, lesion=other, user=world.clin_b, diagnosis="other")
    review_only = Lesion.objects.create(case=world.case_b, anatomic_site="head/neck")
    make_image(world, sha="4" * 64, lesion=review_only)
    Review.objects.create(lesion=review_only, reviewer=world.derm2, agreement="agree", final_diagnosis="nevus",
                          management="reassure")
    for image in LesionImage.objects.all():  # each one scored, dermoscopic and assessable: exportable
        score_image(image, model_version)

    records = {r.isic_id: r for r in reviewed_records(tmp_path)}
    assert set(records) == {f"REVIEW_{reviewed.pk:07d}", f"REVIEW_{only_outcome.images.get().pk:07d}",
                            f"REVIEW_{review_only.images.get().pk:07d}"}
    histo = records[f"REVIEW_{reviewed.pk:07d}"]
    assert histo.allowed == frozenset({"melanoma"}) and histo.ham_code == "mel"
    assert histo.dx_type == f"histopathology on {date.today():%Y-%m-%d}, report HP-9, entered by clin_a"
    assert histo.lesion_id == f"app-patient-{world.patient_a.pk}"  # one patient falls on one side of the split
    assert records[f"REVIEW_{only_outcome.images.get().pk:07d}"].ham_code == "bcc"
    assert records[f"REVIEW_{review_only.images.get().pk:07d}"].dx_type.startswith("dermatologist review by derm2")


def test_the_corrected_result_is_the_label(world, model_version, tmp_path):
    score_image(make_image(world), model_version)
    first = enter(world, diagnosis="nevus")
    enter(world, diagnosis="dermatofibroma", supersedes=first, reason="Lab corrected the report")
    (record,) = reviewed_records(tmp_path)
    assert record.allowed == frozenset({"dermatofibroma"})


# --- the figures ------------------------------------------------------------------------------

TODAY = date(2026, 11, 25)  # a Wednesday of ISO week 2026-W48
THIS_WEEK = date(2026, 11, 23)
LAST_WEEK = THIS_WEEK - timedelta(weeks=1)


def test_weeks_bins_and_psi_on_hand_examples():
    assert drift.week_of(TODAY) == THIS_WEEK and drift.week_label(THIS_WEEK) == "2026-W48"
    assert drift.recent_weeks(3, TODAY) == [THIS_WEEK - timedelta(weeks=2), LAST_WEEK, THIS_WEEK]
    assert drift.histogram([0.0, 0.05, 0.1, 0.35, 0.999, 1.0]) == [2, 1, 0, 1, 0, 0, 0, 0, 0, 2]
    # shares 0.5/0.5 against 0.25/0.75: (0.25-0.5)·ln(0.5) + (0.75-0.5)·ln(1.5)
    assert drift.psi([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert drift.psi([50, 50], [25, 75]) == pytest.approx(0.27465, abs=1e-5)
    assert drift.psi([3, 1, 6], [3, 1, 6]) == 0.0 and drift.psi([3, 1], [6, 2]) == pytest.approx(0.0)
    # an empty bin is floored at ε = 1e-4, so the index stays finite
    expected = (1 - 0.1) * math.log(1 / 0.1) + 9 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert drift.psi([10] * 10, [100] + [0] * 9) == pytest.approx(expected)
    assert drift.psi([0] * 10, [1] * 10) is None and drift.psi([1] * 10, [0] * 10) is None


def test_weekly_figures_per_clinic(world, model_version):
    a, b = world.lesion_a, world.lesion_b
    when = at(LAST_WEEK + timedelta(days=1))
    images = scored_images(a, when=when, version=model_version, probabilities=[0.05, 0.15, 0.55, 0.95],
                           flagged=[False, False, True, True], assessable=[True, True, True, False])
    # re-scored later: only the latest finished score of an image counts
    rescore = Prediction.objects.create(image=images[1], model_version=model_version, context_revision=1,
                                        status="done", melanoma_probability=0.65, malignancy_score=0.7,
                                        flagged=True, finished_at=timezone.now())
    Prediction.objects.filter(pk=rescore.pk).update(created_at=when + timedelta(hours=1))
    Prediction.objects.create(image=images[0], model_version=model_version, context_revision=1, status="pending")
    pending = make_image(world, sha="f" * 64)  # uploaded, never scored
    type(pending).objects.filter(pk=pending.pk).update(uploaded_at=when)
    scored_images(b, when=at(THIS_WEEK), version=model_version, probabilities=[0.2, 0.3], flagged=[False, False])
    earlier_lesion = Lesion.objects.create(case=world.case_a, anatomic_site="head/neck")
    scored_images(earlier_lesion, when=at(THIS_WEEK - timedelta(weeks=20)), version=model_version,
                  probabilities=[0.9])  # before the window: only the reference sees it
    # reviews: under the week they were signed, an amended one as its amendment
    signed = Review.objects.create(lesion=a, reviewer=world.derm, agreement="disagree", final_diagnosis="nevus",
                                   management="reassure")
    amendment = Review.objects.create(lesion=a, reviewer=world.derm, agreement="agree", final_diagnosis="melanoma",
                                      management="excision", amends=signed, amendment_reason="second look")
    other = Review.objects.create(lesion=b, reviewer=world.derm, agreement="uncertain", final_diagnosis="nevus",
                                  management="follow_up")
    Review.objects.filter(pk__in=[signed.pk, amendment.pk]).update(created_at=when)
    Review.objects.filter(pk=other.pk).update(created_at=at(THIS_WEEK))
    # outcomes: lesion A (flagged images) is a melanoma: a true positive in the week of its first upload;
    # lesion B (nothing flagged) a nevus: a true negative this week
    enter(world, diagnosis="melanoma")
    enter(world, lesion=b, user=world.clin_b, diagnosis="nevus")

    report = drift.monitoring_report([world.clinic_a, world.clinic_b], today=TODAY, weeks=4)
    assert report.weeks[-1] == THIS_WEEK and report.latest_complete_week == LAST_WEEK
    assert [name for _, name in report.groups] == ["Clinic A", "Clinic B", drift.ALL_CLINICS]
    week_a = report.rows[(LAST_WEEK, world.clinic_a.pk)]
    assert (week_a.uploads, week_a.scored, week_a.flagged, week_a.not_assessable) == (5, 4, 3, 1)
    assert week_a.flag_rate == 0.75 and week_a.abstention_rate == 0.25
    assert week_a.histogram == [1, 0, 0, 0, 0, 1, 1, 0, 0, 0]  # 0.05, 0.55, 0.65 (re-score); 0.95 not assessable
    assert (week_a.reviews, week_a.agreed, week_a.agreement_rate) == (1, 1, 1.0)
    outcomes_a = week_a.outcomes
    assert (outcomes_a.melanoma_caught, outcomes_a.melanoma_missed, outcomes_a.melanoma_sensitivity) == (1, 0, 1.0)
    assert (outcomes_a.malignant_caught, outcomes_a.malignant_sensitivity) == (1, 1.0)
    assert outcomes_a.specificity is None and outcomes_a.versions == {model_version.version: 1}
    week_b = report.rows[(THIS_WEEK, world.clinic_b.pk)]
    assert (week_b.uploads, week_b.scored, week_b.flag_rate, week_b.reviews, week_b.agreed) == (2, 2, 0.0, 1, 0)
    outcomes_b = week_b.outcomes
    assert (outcomes_b.benign_cleared, outcomes_b.benign_flagged, outcomes_b.specificity) == (1, 0, 1.0)
    pooled = report.rows[(THIS_WEEK, None)]
    assert (pooled.uploads, pooled.scored, pooled.reviews) == (2, 2, 1)
    assert report.rows[(LAST_WEEK, None)].uploads == 5
    assert report.rows[(LAST_WEEK, world.clinic_b.pk)].scored == 0
    # the reference is each clinic's first weeks: clinic A from its first upload 20 weeks ago
    assert report.references[world.clinic_a.pk].weeks[0] == THIS_WEEK - timedelta(weeks=20)
    assert report.references[world.clinic_a.pk].scored == 1
    assert all(not check.evaluated for check in report.checks)  # too few images for the rule
    # clinic B's scope only: no pooled row, nothing of clinic A
    only_b = drift.monitoring_report([world.clinic_b], today=TODAY, weeks=4)
    assert only_b.groups == [(world.clinic_b.pk, "Clinic B")]
    assert sum(s.uploads for s in only_b.table()) == 2


def drift_world(world, version, *, last_week_rate: float, count: int = 40, today: date = TODAY):
    """Clinic A: 5 weeks at a 20 % flag rate (the first 2 are the reference), then last week; one
    lesion per image (the flag rate is compared on lesions)."""
    this_week = drift.week_of(today)
    for back in range(6, 1, -1):
        weekly_uploads(world.lesion_a, monday=this_week - timedelta(weeks=back), version=version, count=40,
                       flag_rate=0.2, separate_lesions=True)
    weekly_uploads(world.lesion_a, monday=this_week - timedelta(weeks=1), version=version, count=count,
                   flag_rate=last_week_rate, separate_lesions=True)
    return drift.monitoring_report([world.clinic_a], today=today, weeks=8)


@pytest.fixture
def two_reference_weeks(settings):
    settings.MONITOR_REFERENCE_WEEKS = 2
    settings.MONITOR_FLAG_RATE_BOUND = 0.15
    settings.MONITOR_PSI_BOUND = 0.25
    settings.MONITOR_MIN_IMAGES = 30
    settings.MONITOR_MIN_PSI_IMAGES = 200


def test_no_drift_alert_while_the_flag_rate_holds(world, model_version, two_reference_weeks):
    report = drift_world(world, model_version, last_week_rate=0.3)  # +10 points: within ±15
    (check,) = report.checks
    assert check.evaluated and not check.alert and report.alerts == []
    assert check.reference.flag_rate == pytest.approx(0.2) and check.reference.scored == 80
    assert (check.reference.flagged_lesions, check.reference.lesions) == (16, 80)
    assert check.stats.psi < 0.25
    assert "PSI not evaluated: 40 assessable images (needs at least 200)" in check.note


def test_drift_alert_when_the_flag_rate_jumps(world, model_version, two_reference_weeks):
    report = drift_world(world, model_version, last_week_rate=0.6)
    (alert,) = report.alerts
    assert alert.clinic == "Clinic A" and alert.week == LAST_WEEK
    assert alert.reasons[0].startswith("flag rate 60% vs 20% in the reference period (24/40 vs 16/80 lesions with a "
                                       "flagged image; change +40 points, bound ±15; Fisher's exact p = ")
    assert alert.flag_rate_p < alert.alpha == 0.05


def test_drift_alert_when_the_score_distribution_shifts(world, model_version, two_reference_weeks):
    # the same flag rate, but every unflagged score moved from the 0.1 bin to the 0.4 bin; the
    # reference histogram takes in weeks until it holds 200 assessable images (5 weeks of 40)
    for back in range(6, 1, -1):
        weekly_uploads(world.lesion_a, monday=THIS_WEEK - timedelta(weeks=back), version=model_version, count=40,
                       flag_rate=0.2)
    scored_images(world.lesion_a, when=at(LAST_WEEK), version=model_version,
                  probabilities=[0.8] * 50 + [0.45] * 200, flagged=[True] * 50 + [False] * 200)
    report = drift.monitoring_report([world.clinic_a], today=TODAY, weeks=8)
    (alert,) = report.alerts
    assert len(alert.reasons) == 1 and alert.reasons[0].startswith("score distribution shifted: PSI")
    assert alert.stats.psi > 0.25
    assert len(alert.reference.histogram_weeks) == 5 and sum(alert.reference.histogram) == 200


def test_no_drift_alert_on_a_small_week(world, model_version, two_reference_weeks):
    report = drift_world(world, model_version, last_week_rate=0.9, count=10)
    (check,) = report.checks
    assert not check.evaluated and "10 scored images" in check.note and not report.alerts


def test_a_stored_validation_histogram_is_the_psi_reference(world, model_version, two_reference_weeks):
    model_version.metrics = {drift.VALIDATION_HISTOGRAM_KEY: [0, 0, 0, 0, 0, 0, 0, 0, 0, 1000]}
    model_version.save()
    report = drift_world(world, model_version, last_week_rate=0.2, count=200)
    (alert,) = report.alerts  # production looks nothing like that validation set
    assert report.validation_reference and alert.reference.source == "validation"
    assert alert.reasons[0].startswith("score distribution shifted")
    # against a validation histogram the PSI is checked from a clinic's first week; the flag rate is not
    weekly_uploads(world.lesion_b, monday=LAST_WEEK, version=model_version, count=200, flag_rate=0.9)
    (new_clinic,) = drift.monitoring_report([world.clinic_b], today=TODAY, weeks=8).checks
    assert new_clinic.evaluated and new_clinic.alert and len(new_clinic.reasons) == 1
    assert new_clinic.note == (f"flag rate not compared: this week is within the reference period "
                               f"({drift.week_label(LAST_WEEK)} to {drift.week_label(THIS_WEEK)})")


# --- the admin page ---------------------------------------------------------------------------

def test_the_monitoring_page_and_its_plots_for_a_superuser(client, world, model_version, two_reference_weeks):
    drift_world(world, model_version, last_week_rate=0.6, today=timezone.localdate())  # the page's today
    client.force_login(world.admin)
    index = client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:cases_monitoring") in index
    predictions = client.get(reverse("admin:cases_prediction_changelist")).content.decode()
    assert reverse("admin:cases_monitoring") in predictions
    response = client.get(reverse("admin:cases_monitoring"))
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="drift-alert"' in page and "Clinic A" in page and "Clinic B" in page
    for name in drift_plots.PLOTS:
        assert f'src="{name}.png"' in page
        plot = client.get(reverse("admin:cases_monitoring_plot", args=[name]))
        assert plot.status_code == 200 and plot["Content-Type"] == "image/png"
        assert plot.content.startswith(PNG_SIGNATURE) and len(plot.content) > 5000
    assert client.get(reverse("admin:cases_monitoring_plot", args=["nonsense"])).status_code == 404
    assert client.get(reverse("admin:cases_monitoring") + "?weeks=30").status_code == 200


def _drawn(monkeypatch, name: str, report) -> dict[str, list]:
    """The lines the named plot draws: label -> y values (NaN as None), per axes title."""
    figures = []
    monkeypatch.setattr(drift_plots, "_png", lambda fig: figures.append(fig) or PNG_SIGNATURE)
    drift_plots.render(name, report)
    (fig,) = figures
    return {ax.get_title(): {line.get_label(): [None if math.isnan(y) else y for y in line.get_ydata()]
                             for line in ax.get_lines() if not line.get_label().startswith("_")}
            for ax in fig.axes}


def test_uploads_and_reviewer_agreement_are_plotted_per_week_and_clinic(world, model_version, monkeypatch):
    scored_images(world.lesion_a, when=at(LAST_WEEK), version=model_version, probabilities=[0.1, 0.2, 0.9])
    scored_images(world.lesion_b, when=at(THIS_WEEK), version=model_version, probabilities=[0.3])
    reviews = [Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement=agreement,
                                     final_diagnosis="nevus", management="reassure")
               for agreement in ("agree", "disagree", "agree", "agree")]
    Review.objects.filter(pk__in=[r.pk for r in reviews]).update(created_at=at(LAST_WEEK))
    report = drift.monitoring_report([world.clinic_a, world.clinic_b], today=TODAY, weeks=3)
    assert {"uploads", "agreement"} <= set(drift_plots.PLOTS)

    (uploads,) = _drawn(monkeypatch, "uploads", report).values()
    assert uploads == {"Clinic A": [0, 3, 0], "Clinic B": [0, 0, 1], drift.ALL_CLINICS: [0, 3, 1]}
    (agreement,) = _drawn(monkeypatch, "agreement", report).values()
    assert agreement == {"Clinic A (n=4 reviews)": [None, 0.75, None], "Clinic B (n=0 reviews)": [None] * 3,
                         f"{drift.ALL_CLINICS} (n=4 reviews)": [None, 0.75, None]}


def test_the_page_says_the_psi_reference_is_the_validation_split(client, world, model_version):
    model_version.metrics = {drift.VALIDATION_HISTOGRAM_KEY: [10] * 10}
    model_version.save()
    client.force_login(world.admin)
    page = client.get(reverse("admin:cases_monitoring")).content.decode()
    assert "melanoma probability on its validation split" in page and "held-out test" not in page
    for name in ("uploads", "agreement"):
        assert f'<img id="plot-{name}" src="{name}.png"' in page


def test_the_monitoring_page_is_for_staff_only_and_scoped_to_the_clinic(client, world, model_version):
    scored_images(world.lesion_b, when=timezone.now(), version=model_version, probabilities=[0.2])
    url = reverse("admin:cases_monitoring")
    client.force_login(world.clin_a)  # not staff: the admin's login page
    response = client.get(url)
    assert response.status_code == 302 and reverse("admin:login") in response["Location"]
    assert client.get(reverse("admin:cases_monitoring_plot", args=["psi"])).status_code == 302
    staff = make_user("clinic_admin", clinic=world.clinic_a)
    staff.is_staff = True
    staff.save()
    client.force_login(staff)  # staff without the view permission on predictions
    assert client.get(url).status_code == 403
    assert client.get(reverse("admin:cases_monitoring_plot", args=["psi"])).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_prediction"))
    page = client.get(url).content.decode()
    assert "Clinic A" in page and "Clinic B" not in page and drift.ALL_CLINICS not in page
