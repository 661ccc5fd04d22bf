"""The upload's file-count limits, clicked in a real browser: the lesion page refuses too many files
before sending them (nothing leaves the browser, nothing is stored); without JavaScript the server
refuses them with the form's message, and an upload so large that Django refuses it before any view
gets the styled 400 page, whose "Back to the start page" link is clicked."""
from __future__ import annotations

import pytest
from PIL import Image

from cases.models import Case, Clinic, Lesion, LesionImage, Patient
from cases.roles import CLINICIAN
from tests.support.browser_helpers import log_in, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def lesion_and_files(tmp_path):
    clinic = Clinic.objects.create(name="Harbour Skin Clinic")
    cora = make_user("cora", "Cora Clinician", CLINICIAN, clinic)
    patient = Patient.objects.create(clinic=clinic, identifier="HSC-0042", birth_year=1968, created_by=cora)
    case = Case.objects.create(patient=patient, referring_clinician=cora, clinical_question="Several new spots")
    lesion = Lesion.objects.create(case=case, anatomic_site="anterior torso")
    files = []
    for i in range(4):
        path = tmp_path / f"spot-{i}.jpg"
        Image.new("RGB", (64, 48), (120 + 20 * i, 80, 60)).save(path, "JPEG")
        files.append(str(path))
    return lesion, files


def _choose(page, files):
    with page.expect_file_chooser() as chooser:
        page.get_by_label("Images of this lesion").click()
    chooser.value.set_files(files)


def test_too_many_files_are_refused_before_sending(live_server, browser_page, lesion_and_files, settings):
    from playwright.sync_api import expect

    settings.UPLOAD_MAX_FILES = 2
    lesion, files = lesion_and_files
    page, base = browser_page, live_server.url
    uploads = []
    page.on("request", lambda request: request.method == "POST" and uploads.append(request.url))
    log_in(page, base, "cora")
    uploads.clear()
    page.goto(f"{base}/lesions/{lesion.pk}/")
    _choose(page, files[:3])
    notice = page.locator("[data-too-many]")
    expect(notice).to_have_text("3 files were chosen; upload at most 2 at a time.")
    page.get_by_role("button", name="Upload").click()
    expect(notice).to_be_visible()
    expect(page.get_by_label("Images of this lesion")).to_be_focused()
    assert uploads == []  # the browser sent nothing
    assert not LesionImage.objects.exists()

    _choose(page, files[:2])  # within the limit the notice goes and the upload goes through
    expect(notice).to_be_hidden()
    page.get_by_role("button", name="Upload").click()
    expect(page.locator(".messages")).to_contain_text("2 image(s) uploaded")
    assert LesionImage.objects.filter(lesion=lesion).count() == 2


def test_without_javascript_the_server_refuses_and_the_400_page_leads_back(live_server, browser_page, lesion_and_files,
                                                                          settings):
    from playwright.sync_api import expect

    settings.UPLOAD_MAX_FILES = 2
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    lesion, files = lesion_and_files
    base = live_server.url
    context = browser_page.context.browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        log_in(page, base, "cora")
        page.goto(f"{base}/lesions/{lesion.pk}/")
        page.get_by_label("Images of this lesion").set_input_files(files[:3])
        page.get_by_role("button", name="Upload").click()
        expect(page.locator("main")).to_contain_text("3 files were chosen; upload at most 2 at a time.")

        page.goto(f"{base}/lesions/{lesion.pk}/")
        page.get_by_label("Images of this lesion").set_input_files(files)  # 4: Django refuses the body
        page.get_by_role("button", name="Upload").click()
        expect(page.get_by_role("heading", name="The request was refused")).to_be_visible()
        expect(page.locator("main")).to_contain_text("Nothing was saved. Go back and try again with fewer files at a time.")
        page.get_by_role("link", name="Back to the start page").click()
        page.wait_for_url(f"{base}/")
    finally:
        context.close()
    assert not LesionImage.objects.exists()
