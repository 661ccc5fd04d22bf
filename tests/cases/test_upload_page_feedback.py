"""What the case and lesion pages tell the clinician: a refused "Add lesion" comes back at the form
with a summary and its invalid fields marked; the upload input states the real limits and is tied
to its errors; a DICOM site that replaced "Unknown" is said; an image waiting for a model keeps the
status poll going; the lesion page is private and audited; the known limits describe clinical
photos as the upload treats them."""
from __future__ import annotations

import re

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from cases import statements
from cases.models import Lesion
from tests.support.case_helpers import make_image, score_image
from tests.support.dicomgen import code, dicom_file, region, rgb_pixels
from tests.support.imagegen import jpeg, upload

pytestmark = pytest.mark.django_db

FOREARM_LEFT = region("14975008", "Forearm", code("7771000", "Left"))


def _tag(html: str, pattern: str) -> str:
    match = re.search(pattern, html)
    assert match, pattern
    return match.group(0)


# --- 1. A refused "Add lesion" -------------------------------------------------------------------

def test_a_refused_lesion_comes_back_at_the_form_with_a_summary_and_the_site_marked(client, world):
    client.force_login(world.clin_a)
    response = client.post(reverse("lesion_create", args=[world.case_a.pk]), {"description": "raised"})
    html = response.content.decode()
    assert response.status_code == 400
    assert f'action="{reverse("lesion_create", args=[world.case_a.pk])}#add-lesion"' in html
    summary = html[html.index('id="add-lesion-errors"') - 60:]
    summary = summary[:summary.index("</div>")]
    assert 'role="alert"' in summary and "The lesion was not added" in summary
    assert '<a href="#id_anatomic_site">' in summary and "This field is required." in summary
    select = _tag(html, r'<select name="anatomic_site"[^>]*>')
    assert 'aria-invalid="true"' in select
    described = re.search(r'aria-describedby="([^"]*)"', select).group(1).split()
    assert "id_anatomic_site_error" in described and 'id="id_anatomic_site_error"' in html
    assert "data-focus-invalid" in _tag(html, r'<form method="post" action="[^"]*#add-lesion"[^>]*>')


# --- 2. The upload input: its limits and its errors ------------------------------------------------

def test_the_upload_input_states_the_limits_in_force(client, world, settings):
    settings.UPLOAD_MAX_BYTES, settings.UPLOAD_MAX_FILES = 5_000_000, 7
    client.force_login(world.clin_a)
    for url in (reverse("case_detail", args=[world.case_a.pk]), reverse("lesion_detail", args=[world.lesion_a.pk])):
        html = client.get(url).content.decode()
        help_text = _tag(html, rf'<p id="images-help-{world.lesion_a.pk}"[^>]*>[^<]*</p>')
        assert "up to 5 MB each; up to 7 at a time." in help_text, url
        assert 'data-max-files="7"' in html


def test_a_refused_upload_marks_the_input_and_points_it_at_the_error(client, world):
    client.force_login(world.clin_a)
    pk = world.lesion_a.pk
    response = client.post(reverse("lesion_detail", args=[pk]), {"kind": "dermoscopic"})  # no file chosen
    html = response.content.decode()
    assert response.status_code == 400
    field = _tag(html, rf'<input type="file" id="images-{pk}"[^>]*>')
    assert 'aria-invalid="true"' in field
    described = re.search(r'aria-describedby="([^"]*)"', field).group(1).split()
    assert described == [f"images-help-{pk}", f"images-error-{pk}"]
    error = _tag(html, rf'<ul id="images-error-{pk}"[^>]*>.*?</ul>')
    assert "Choose at least one image file." in error
    fresh = client.get(reverse("lesion_detail", args=[pk])).content.decode()
    assert "aria-invalid" not in _tag(fresh, rf'<input type="file" id="images-{pk}"[^>]*>')


# --- 3. A DICOM site that replaced "Unknown" is said -----------------------------------------------

def test_the_upload_message_names_the_site_taken_from_the_dicom_file_and_the_rescore(client, world, dispatched,
                                                                                    django_capture_on_commit_callbacks):
    lesion = Lesion.objects.create(case=world.case_a, anatomic_site="unknown")
    client.force_login(world.clin_a)
    url = reverse("lesion_detail", args=[lesion.pk])
    with django_capture_on_commit_callbacks(execute=True):
        client.post(url, {"images": [upload("photo.jpg", jpeg())], "kind": "dermoscopic"}, follow=True)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"images": [upload("arm.dcm", dicom_file(AnatomicRegionSequence=FOREARM_LEFT),
                                                        "application/dicom")], "kind": "dermoscopic"}, follow=True)
    shown = [str(m) for m in response.context["messages"]]
    assert shown == ["1 image(s) uploaded and scoring has started.",
                     "“arm.dcm”: The DICOM file states the body site, so the lesion's site was changed from Unknown "
                     "to Upper extremity; its 1 other image(s) are being scored again with the new site."]
    lesion.refresh_from_db()
    assert lesion.anatomic_site == "upper extremity"
    # a site already known is kept, and nothing more is said
    data = dicom_file(rgb_pixels(seed=5), AnatomicRegionSequence=region("11207009", "Thigh"))
    response = client.post(url, {"images": [upload("leg.dcm", data, "application/dicom")], "kind": "dermoscopic"},
                           follow=True)
    assert [str(m) for m in response.context["messages"]] == ["1 image(s) uploaded and scoring has started."]
    lesion.refresh_from_db()
    assert lesion.anatomic_site == "upper extremity"


# --- 4. An image waiting for a model keeps the poll going ------------------------------------------

def test_an_image_waiting_for_a_model_says_so_and_keeps_the_status_poll_going(client, world, model_version):
    image = make_image(world)  # stored while no model was active: no prediction
    client.force_login(world.clin_a)
    html = client.get(reverse("case_detail", args=[world.case_a.pk])).content.decode()
    assert 'data-active="true"' in html
    box = _tag(html, rf'<div class="prediction" data-image-id="{image.pk}"[^>]*>.*?</div>')
    assert "Waiting for a model to score this image" in box and 'aria-live="polite"' in box
    assert "no model was available" not in html
    status = client.get(reverse("case_status", args=[world.case_a.pk])).json()
    assert (status["active"], status["waiting"], status["predictions"]) == (False, True, [])

    prediction = score_image(image, model_version)  # the sweep's prediction, scored
    status = client.get(reverse("case_status", args=[world.case_a.pk])).json()
    assert status["waiting"] is False and [p["image"] for p in status["predictions"]] == [image.pk]
    assert status["predictions"][0]["id"] == prediction.pk
    html = client.get(reverse("case_detail", args=[world.case_a.pk])).content.decode()
    assert 'data-active="false"' in html and "Waiting for a model" not in html


# --- 6. Clinical photos in the known limits ----------------------------------------------------------

def test_the_known_limits_say_clinical_photos_are_stored_and_sent_to_a_dermatologist():
    text = " ".join(statements.MODEL_LIMITS)
    assert "refused" not in text
    assert ("clinical (close-up) photos are not scored by the model; they are stored and the lesion goes to a "
            "dermatologist.") in text


# --- 9. The lesion page is private and audited ------------------------------------------------------

def test_the_lesion_page_is_not_cached_and_each_view_is_audited(client, world):
    client.force_login(world.clin_a)
    response = client.get(reverse("lesion_detail", args=[world.lesion_a.pk]))
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    (event,) = AuditEvent.objects.filter(action="view")
    assert (event.object_type, event.object_id, event.actor, event.patient_id) == (
        "lesion", str(world.lesion_a.pk), world.clin_a, world.patient_a.pk)
