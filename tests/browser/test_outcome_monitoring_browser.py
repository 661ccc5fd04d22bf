"""Clicked in a real browser: a clinician enters a lesion's histopathology result on the case page,
and an admin opens the Monitoring page from the admin's home and sees the weekly table, the drift
alert and the plots. Screenshots go to test-artifacts/."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from cases import drift
from cases.models import Case, Clinic, Lesion, Outcome, Patient
from cases.roles import CLINICIAN
from classifier.models import ModelVersion
from tests.support.browser_helpers import PASSWORD, fill_histopathology, log_in, make_user
from tests.support.monitoring_helpers import at, scored_images, weekly_uploads

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_clinician_enters_histopathology_and_admin_sees_the_drift_alert(live_server, browser_page, artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    clinic = Clinic.objects.create(name="Harbour Skin Clinic")
    clara = make_user("clara", "Clara Clinician", CLINICIAN, clinic)
    patient = Patient.objects.create(clinic=clinic, identifier="HAR-0007", birth_year=1961, created_by=clara)
    case = Case.objects.create(patient=patient, referring_clinician=clara, clinical_question="Excised: melanoma?")
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso")

    # Clinician: the report came back; enter it on the case page.
    log_in(page, base, "clara")
    page.goto(f"{base}/cases/{case.pk}/")
    page.get_by_text("Enter the histopathology result").click()
    fill_histopathology(page, diagnosis="melanoma", reference="PATH-2026-1234")
    page.get_by_role("button", name="Save histopathology result").click()
    expect(page.locator(".messages")).to_contain_text("Histopathology result saved: Melanoma, report PATH-2026-1234")
    panel = page.locator(f"#outcome-{lesion.pk}")
    expect(panel).to_contain_text("Melanoma")
    expect(panel).to_contain_text("PATH-2026-1234")
    expect(panel).to_contain_text("Entered by Clara Clinician")
    page.screenshot(path=str(artifacts_dir / "40-histopathology-entered.png"), full_page=True)
    outcome = Outcome.objects.get()
    assert (outcome.diagnosis, outcome.entered_by) == ("melanoma", clara)
    page.get_by_role("button", name="Log out").click()

    # Eight weeks of (synthetic) scored uploads, one lesion each: 20 % flagged, then 60 % last week;
    # the excised melanoma was flagged in the first of them.
    version = ModelVersion.objects.create(version="browser-monitor-v1", status=ModelVersion.Status.ACTIVE)
    this_week = drift.week_of(timezone.localdate())
    scored_images(lesion, when=at(this_week - timedelta(weeks=8, days=-2)), version=version, probabilities=[0.8])
    for back in range(8, 1, -1):
        weekly_uploads(lesion, monday=this_week - timedelta(weeks=back), version=version, count=40, flag_rate=0.2,
                       separate_lesions=True)
    weekly_uploads(lesion, monday=this_week - timedelta(weeks=1), version=version, count=40, flag_rate=0.6,
                   separate_lesions=True)

    # Admin: from the admin's home to the Monitoring page.
    get_user_model().objects.create_superuser("root", "root@example.org", PASSWORD)
    page.goto(f"{base}/admin/login/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Model monitoring and drift alerts").click()
    expect(page.locator("#drift-alert")).to_contain_text("Harbour Skin Clinic")
    expect(page.locator("#drift-alert")).to_contain_text("flag rate 60% vs 20% in the reference period")
    # which version the figures are about, and which one made the calls judged on outcomes
    expect(page.locator("#version-coverage")).to_contain_text("browser-monitor-v1 scored 100.0% of this period's images")
    expect(page.locator("#outcome-summary .call-versions")).to_contain_text("browser-monitor-v1 (1 lesion)")
    # the outcome rates are only over lesions with a result, and the page says so, with what it cannot see
    expect(page.locator("#verification-bias")).to_contain_text(
        "among lesions with histopathology (verification-biased: unflagged lesions are rarely excised)")
    expect(page.locator("#outcome-summary .unverified")).to_contain_text("80 flagged, 240 not flagged")
    expect(page.locator("#outcome-summary .ppv")).to_contain_text("100.0% (1/1 flagged lesions with a result)")
    expect(page.locator("#drift-checks")).to_contain_text("(24/40 lesions)")
    table = page.locator("#monitoring-table")
    expect(table).to_contain_text(drift.week_label(this_week - timedelta(weeks=1)))
    expect(table.locator("tbody tr").first).to_contain_text("(in progress)")
    expect(table).to_contain_text("60.0% (24)")
    expect(table).to_contain_text("100.0% (1/1)")  # the melanoma was flagged: sensitivity 1/1
    for name in ("flag-rate", "psi", "performance"):
        plot = page.locator(f"#plot-{name}")
        expect(plot).to_be_visible()
        page.wait_for_function(f"document.getElementById('plot-{name}').complete")
        assert plot.evaluate("img => img.naturalWidth > 0"), f"the {name} plot did not load"
    page.screenshot(path=str(artifacts_dir / "41-admin-monitoring.png"), full_page=True)

    # an earlier version that scored some of last week's images: picked in the version form
    earlier = ModelVersion.objects.create(version="browser-monitor-v0", status=ModelVersion.Status.RETIRED)
    weekly_uploads(lesion, monday=this_week - timedelta(weeks=1), version=earlier, count=10, flag_rate=0.5)
    page.reload()
    page.get_by_label("Show the scores of").select_option("browser-monitor-v0")
    page.locator("#version-form").get_by_role("button", name="Show").click()
    expect(page.locator("#version-coverage")).to_contain_text("browser-monitor-v0 scored")
    expect(page.get_by_label("Show the scores of")).to_have_value("browser-monitor-v0")
    for name in ("flag-rate", "psi", "performance"):  # let the plots finish before the server stops
        page.wait_for_function(f"document.getElementById('plot-{name}').complete")
