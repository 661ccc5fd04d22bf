"""The case page's feedback, in a real browser: a refused "Add lesion" lands on the form with the
reason in view and the site marked and focused; an image stored while no model was active says it
waits and is updated by the poll once scored; a poll answered by the log-in page (the session
expired) stops and says so; an upload on its way says so and is sent once, however long it takes."""
from __future__ import annotations

import threading

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from cases import services
from cases.models import Case, Clinic, Lesion, LesionImage, Patient, Prediction
from cases.roles import CLINICIAN
from classifier.models import ModelVersion
from tests.support.browser_helpers import log_in, make_user
from tests.support.imagegen import png

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _case():
    clinic = Clinic.objects.create(name="Feedback clinic")
    user = make_user("fay", "Fay Feedback", CLINICIAN, clinic)
    patient = Patient.objects.create(clinic=clinic, identifier="FB-1", birth_year=1970, created_by=user)
    case = Case.objects.create(patient=patient, referring_clinician=user, clinical_question="Dark spot")
    return user, case


def _image(lesion: Lesion, seed: int = 1) -> LesionImage:
    name = default_storage.save("lesion-images/fb.png", ContentFile(png(size=(160, 120), seed=seed)))
    return LesionImage.objects.create(lesion=lesion, file=name, sha256=f"{seed:064d}", size_bytes=10, width=160,
                                      height=120, uploaded_by=lesion.case.referring_clinician)


def _version() -> ModelVersion:
    return ModelVersion.objects.create(version="browser-fb-v1", status=ModelVersion.Status.ACTIVE,
                                       artifact_path="/nonexistent", melanoma_threshold=0.3, malignancy_threshold=0.5)


def test_a_refused_lesion_shows_why_in_view_and_marks_the_site(live_server, browser_page, artifacts_dir):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    _user, case = _case()
    Lesion.objects.create(case=case, anatomic_site="posterior torso")  # the form sits below a lesion card
    log_in(page, base, "fay")
    page.goto(f"{base}/cases/{case.pk}/")
    page.get_by_label("Description").fill("raised, 4 mm")
    page.get_by_role("button", name="Add lesion").click()  # no site chosen

    summary = page.get_by_role("alert").filter(has_text="The lesion was not added")
    expect(summary).to_be_visible()
    expect(summary).to_contain_text("Anatomic site: This field is required.")
    expect(summary).to_be_in_viewport()
    site = page.get_by_label("Anatomic site")
    expect(site).to_have_attribute("aria-invalid", "true")
    expect(site).to_be_focused()
    expect(site).to_be_in_viewport()
    expect(page.get_by_label("Description")).to_have_value("raised, 4 mm")
    assert page.url.endswith("#add-lesion")
    page.screenshot(path=str(artifacts_dir / "97-add-lesion-refused.png"))
    assert Lesion.objects.filter(case=case).count() == 1
    page.get_by_label("Description").focus()
    summary.get_by_role("link", name="Anatomic site: This field is required.").click()  # the summary's link
    expect(site).to_be_focused()

    site.select_option("head/neck")
    page.get_by_role("button", name="Add lesion").click()
    expect(page.locator("section.lesion")).to_have_count(2)


def test_an_image_waiting_for_a_model_is_updated_when_it_is_scored(live_server, browser_page):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    _user, case = _case()
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso")
    image = _image(lesion)  # stored while no model was active
    log_in(page, base, "fay")
    page.goto(f"{base}/cases/{case.pk}/")
    box = page.locator(f'[data-image-id="{image.pk}"]')
    expect(box).to_have_text("Waiting for a model to score this image.")

    # the beat sweep gives it a prediction, which is scored
    Prediction.objects.create(image=image, model_version=_version(), status="done", melanoma_probability=0.1,
                              malignancy_score=0.1, finished_at=timezone.now())
    expect(box).to_contain_text("Not flagged", timeout=20_000)


def test_the_poll_stops_and_says_so_when_the_session_expired(live_server, browser_page):
    from playwright.sync_api import expect

    page, base = browser_page, live_server.url
    _user, case = _case()
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso")
    Prediction.objects.create(image=_image(lesion), model_version=_version(), status="pending")  # "Scoring…"
    polls = []
    page.on("request", lambda request: "status.json" in request.url and polls.append(request.url))
    log_in(page, base, "fay")
    page.goto(f"{base}/cases/{case.pk}/")
    expect(page.locator("[data-live-status]")).to_have_text("")
    page.context.clear_cookies()  # the session is gone: the poll gets the log-in page

    expect(page.locator("[data-live-status]")).to_have_text("Live status stopped — reload the page.",
                                                            timeout=25_000)
    sent = len(polls)
    page.wait_for_timeout(4000)
    assert len(polls) == sent  # no more polls once it said so


def test_an_upload_on_its_way_says_so_and_is_sent_once(live_server, browser_page, tmp_path, monkeypatch):
    from playwright.sync_api import expect

    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: True)
    page, base = browser_page, live_server.url
    _user, case = _case()
    _version()
    lesion = Lesion.objects.create(case=case, anatomic_site="posterior torso")
    files = []
    for i in range(2):
        path = tmp_path / f"spot-{i}.jpg"
        Image.new("RGB", (64, 48), (120 + 40 * i, 80, 60)).save(path, "JPEG")
        files.append(str(path))
    posts, release = [], threading.Event()
    real = services.upload_images

    def slow_upload(**kwargs):  # a slow upload: still on its way long after any fixed hold
        release.wait(timeout=60)
        return real(**kwargs)

    monkeypatch.setattr(services, "upload_images", slow_upload)
    page.on("request", lambda request: request.method == "POST" and "/lesions/" in request.url
            and posts.append(request.url))
    log_in(page, base, "fay")
    page.goto(f"{base}/cases/{case.pk}/")
    with page.expect_file_chooser() as chooser:
        page.get_by_label("Images of this lesion").click()
    chooser.value.set_files(files)
    # while the upload is on its way the page can't be asked (Playwright waits for the navigation):
    # it reports each submit itself, after the handlers ran
    said = []
    page.on("console", lambda message: message.text.startswith("submit:") and said.append(message.text))
    page.evaluate("""() => window.addEventListener("submit", (event) => {
        const form = event.target;
        setTimeout(() => {
            console.log("submit:" + [event.defaultPrevented, form.getAttribute("aria-busy"),
                                     form.querySelector("[role=status]").textContent].join("|"));
            // as if a minute went by: longer than any fixed hold
            form.setAttribute("data-submitting", String(Date.now() - 60000));
        }, 0);
    })""")
    page.get_by_role("button", name="Upload").scroll_into_view_if_needed()
    box = page.get_by_role("button", name="Upload").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.click(x, y)
    page.wait_for_timeout(500)
    page.mouse.click(x, y)  # a second click while the first upload is still on its way
    page.wait_for_timeout(1000)
    assert said == ["submit:false|true|Uploading 2 files…", "submit:true|true|Uploading 2 files…"]
    assert len(posts) == 1  # the second click sent nothing

    release.set()
    expect(page.locator(".messages")).to_contain_text("2 image(s) uploaded and scoring has started.")
    assert LesionImage.objects.filter(lesion=lesion).count() == 2
