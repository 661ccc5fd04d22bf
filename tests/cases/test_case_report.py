"""The second-opinion PDF at /cases/<id>/report.pdf: what it says (extracted text), that its first
page renders, and that it follows the case page's access rule and is audited as a download."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from audit.models import AuditEvent
from cases import statements
from cases.models import Lesion, LesionImage, Prediction, Review
from cases.report import build_case_report
from tests.support.imagegen import png

pytestmark = pytest.mark.django_db

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
def artifacts_dir() -> Path:
    """test-artifacts/ at the repository root, as the browser tests use it."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def stored_image(lesion: Lesion, user, seed: int) -> LesionImage:
    name = default_storage.save("lesion-images/report.png", ContentFile(png(size=(120, 90), seed=seed)))
    return LesionImage.objects.create(lesion=lesion, file=name, sha256=f"{seed:064d}", size_bytes=100, width=120,
                                      height=90, uploaded_by=user)


def done(image: LesionImage, version, **fields) -> Prediction:
    values = {"status": "done", "melanoma_probability": 0.1, "malignancy_score": 0.2, "finished_at": timezone.now(),
              "class_probabilities": {"melanoma": 0.1, "nevus": 0.8}} | fields
    return Prediction.objects.create(image=image, model_version=version, **values)


@pytest.fixture
def reported(world, model_version):
    """Clinic A's case with two lesions: one flagged, with a Grad-CAM and a dermatologist's review;
    one whose image the model could not assess (in the queue) plus an image still waiting."""
    model_version.target_sensitivity = 0.9
    model_version.metrics = {
        "n_images": 1596, "n_melanoma": 218, "melanoma_auc": 0.8687, "melanoma_auc_ci95": [0.8407, 0.8960],
        "malignancy_auc": 0.8937, "malignancy_auc_ci95": [0.8723, 0.9134],
        "operating_points": {"melanoma": {"sensitivity": 0.9312, "sensitivity_ci95": [0.891, 0.965],
                                          "specificity": 0.6176, "specificity_ci95": [0.585, 0.649]}},
        "external": {"dataset": "PH2 (Hospital Pedro Hispano, Portugal; external)", "n_images": 200,
                     "n_melanoma": 40, "melanoma_auc": 0.659, "melanoma_auc_ci95": [0.553, 0.757],
                     "melanoma_operating_point": {"sensitivity": 0.975, "specificity": 0.056}},
    }
    model_version.save()
    case = world.case_a
    case.clinical_question = "Changing pigmented lesion on the back; melanoma?"
    case.notes = "Family history of melanoma."
    case.save()
    world.clin_a.last_name = "Clinician"
    world.clin_a.save()
    world.derm.first_name, world.derm.last_name = "Derek", "Dermatologist"
    world.derm.save()

    back = world.lesion_a
    back.description = "6 mm, irregular border"
    back.flagged = True
    back.save()
    first = stored_image(back, world.clin_a, seed=1)
    heatmap = default_storage.save("heatmaps/report.png", ContentFile(png(size=(120, 90), seed=2)))
    scored = done(first, model_version, melanoma_probability=0.734, malignancy_score=0.812, flagged=True,
                  flag_reasons=["melanoma probability 0.73 \u2265 threshold 0.50"],
                  prediction_set=["melanoma", "nevus"], heatmap=heatmap)
    Review.objects.create(lesion=back, reviewer=world.derm, agreement="agree", final_diagnosis="melanoma",
                          management="excision", notes="Atypical network; excise with 2 mm margins.")

    neck = Lesion.objects.create(case=case, anatomic_site="head/neck", flagged=True, awaiting_review=True)
    blurred = stored_image(neck, world.clin_a, seed=3)
    done(blurred, model_version, melanoma_probability=0.987, malignancy_score=0.991, flagged=True,
         assessable=False, assessment_notes=["the image is blurred (sharpness 12, needs 69)"],
         flag_reasons=["Model could not assess this image: the image is blurred (sharpness 12, needs 69)"])
    waiting = stored_image(neck, world.clin_a, seed=4)
    Prediction.objects.create(image=waiting, model_version=model_version, status="pending")
    return case, scored


def pdf_text(data: bytes) -> str:
    """All pages' text, whitespace collapsed (line breaks fall wherever the layout wraps)."""
    pdf = pdfium.PdfDocument(data)
    try:
        text = " ".join(page_text(pdf, i) for i in range(len(pdf)))
    finally:
        pdf.close()
    return " ".join(text.split())


def page_text(pdf: pdfium.PdfDocument, index: int) -> str:
    page = pdf[index]
    textpage = page.get_textpage()
    try:
        return textpage.get_text_range()
    finally:
        textpage.close()
        page.close()


def test_the_report_says_what_the_record_says(client, world, reported, artifacts_dir):
    case, _ = reported
    client.force_login(world.clin_a)
    response = client.get(f"/cases/{case.pk}/report.pdf")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == f'inline; filename="secondlook-case-{case.pk}.pdf"'
    assert response["Cache-Control"] == "private, no-store"
    assert response.content.startswith(b"%PDF")
    text = pdf_text(response.content)
    for expected in (
        "SecondLook second-opinion report", "PA-1", "Changing pigmented lesion on the back; melanoma?",
        "Family history of melanoma.", "Clin_A Clinician", "Posterior torso", "Head/neck", "6 mm, irregular border",
        "73.4%", "81.2%", "50.0%", "60.0%",  # the scores and thresholds as the result page shows them
        "melanoma probability 0.73 \u2265 threshold 0.50", "Melanoma, Nevus", "unit-test-v1",
        "melanoma AUC 0.869 [95 % CI 0.841–0.896]", "PH2", "Melanoma AUC 0.659 [95 % CI 0.553–0.757]",
        "target sensitivity 90%", "Fitzpatrick V-VI", "dermoscopic images only",
        "Model could not assess this image", "the image is blurred (sharpness 12, needs 69)",
        "Waiting to be scored", "Derek Dermatologist", "Agree with the AI flag", "Excision",
        "Atypical network; excise with 2 mm margins.", "Not yet reviewed by a dermatologist",
        "Intended use", statements.intended_use(), "Data attribution", statements.DATA_ATTRIBUTION,
        f"Case {case.pk}", "page 1 of",
    ):
        assert expected in text, expected
    assert "Final diagnosis Melanoma" in text
    # the unassessable image's scores are kept in the record, never shown as a result
    assert "98.7%" not in text and "99.1%" not in text

    events = AuditEvent.objects.filter(action="download", object_type="case", object_id=str(case.pk))
    assert [(e.actor_username, e.patient_id, e.clinic_id) for e in events] == [
        ("clin_a", world.patient_a.pk, world.clinic_a.pk)]

    pdf = pdfium.PdfDocument(response.content)
    image = pdf[0].render(scale=1).to_pil()
    pdf.close()
    path = artifacts_dir / "case-report-page1.png"
    image.save(path)
    pixels = np.asarray(image.convert("L"))
    assert image.size[0] in (595, 596) and image.size[1] == 842  # A4 (595.3 x 841.9 pt) at 72 dpi
    assert (pixels < 200).mean() > 0.01 and len(np.unique(pixels)) > 20  # text and pictures, not a blank page


def test_every_page_has_the_header_and_a_page_x_of_y_footer(world, reported):
    case, _ = reported
    now = timezone.now()
    pdf = pdfium.PdfDocument(build_case_report(case, generated_by=world.clin_a, now=now))
    total = len(pdf)
    assert total >= 2
    stamp = timezone.localtime(now).strftime("%Y-%m-%d %H:%M")
    for number in range(total):
        text = " ".join(page_text(pdf, number).split())
        assert "SecondLook second-opinion report" in text
        assert f"Patient PA-1 · Case {case.pk} · generated {stamp}" in text
        assert f"page {number + 1} of {total}" in text
    pdf.close()


def test_a_missing_file_is_noted_and_the_rest_still_reported(world, reported):
    case, scored = reported
    default_storage.delete(scored.heatmap.name)
    text = pdf_text(build_case_report(case, generated_by=world.clin_a))
    assert "The Grad-CAM file was not found." in text
    assert "73.4%" in text and "Derek Dermatologist" in text


def test_pending_and_failed_states_are_said_plainly(world, model_version):
    image = stored_image(world.lesion_a, world.clin_a, seed=5)
    Prediction.objects.create(image=image, model_version=model_version, status="failed",
                              error="model file /srv/models/x/model.keras is missing")
    text = pdf_text(build_case_report(world.case_a, generated_by=world.clin_a))
    assert "Scoring failed: model file model.keras is missing" in text  # server paths reduced, as on the page
    assert "/srv/models" not in text
    assert "Not yet reviewed by a dermatologist" in text


def test_record_text_cannot_inject_markup(world):
    world.case_a.clinical_question = "<b>bold?</b> & <font size=40>big</font> <unclosed"
    world.case_a.save()
    text = pdf_text(build_case_report(world.case_a, generated_by=world.clin_a))
    assert "<b>bold?</b> & <font size=40>big</font> <unclosed" in text


@pytest.mark.parametrize("who", ["clin_b", "norole", "derm2"])
def test_who_cannot_see_the_case_gets_404_and_nothing_is_audited(client, world, reported, who):
    case, _ = reported
    Lesion.objects.filter(case=case).update(awaiting_review=False)  # out of the queue: not the derm's
    client.force_login(getattr(world, who))
    assert client.get(f"/cases/{case.pk}/report.pdf").status_code == 404
    assert client.get(f"/cases/{case.pk}/").status_code == 404  # the same rule as the case page
    assert not AuditEvent.objects.filter(action="download").exists()


def test_a_dermatologist_may_download_a_queued_case_and_an_admin_any(client, world, reported):
    case, _ = reported
    for user in (world.derm2, world.admin):
        client.force_login(user)
        response = client.get(f"/cases/{case.pk}/report.pdf")
        assert response.status_code == 200, user
        assert "PA-1" in pdf_text(response.content)
    assert set(AuditEvent.objects.filter(action="download").values_list("actor_username", flat=True)) == {
        "derm2", "boss"}


def test_only_get(client, world, reported):
    case, _ = reported
    client.force_login(world.clin_a)
    assert client.post(f"/cases/{case.pk}/report.pdf").status_code == 405


def test_the_case_page_links_to_the_report(client, world, reported):
    case, _ = reported
    for user in (world.clin_a, world.derm):
        client.force_login(user)
        body = client.get(f"/cases/{case.pk}/").content.decode()
        assert f'href="/cases/{case.pk}/report.pdf"' in body and "Download report (PDF)" in body


def test_report_uses_the_visit_date_and_age_at_the_visit(world, reported):
    case, _ = reported
    if hasattr(case, "visit_date"):
        case.visit_date = (timezone.now() - timedelta(days=800)).date()
        case.save()
        year = case.visit_date.year
    else:
        year = timezone.localtime(case.created_at).year
    text = pdf_text(build_case_report(case, generated_by=world.clin_a))
    assert f"1970 (about {year - 1970} years old at the visit)" in text


def test_the_shipped_model_card_adds_how_often_it_could_not_assess(world, reported, model_version):
    """Where the version's artifact is on this host, its card's measured refusal rates (PH2
    included) are reported too."""
    import json

    case, _ = reported
    shipped = Path(__file__).resolve().parents[2] / "classifier" / "shipped_model"
    card = json.loads((shipped / "model_card.json").read_text())
    model_version.artifact_path = str(shipped)
    model_version.metrics = card["metrics"]
    model_version.save()
    text = pdf_text(build_case_report(case, generated_by=world.clin_a))
    measured = card["assessment"]["measured"]  # read here: a retrained shipped model changes the figures
    assert (f"could not assess {measured['test']['not_assessable_rate']:.1%} of internal held-out test images, "
            f"{measured['ph2']['not_assessable_rate']:.1%} of PH2 images") in text
    low, high = card["metrics"]["melanoma_auc_ci95"]
    assert f"melanoma AUC {card['metrics']['melanoma_auc']:.3f} [95 % CI {low:.3f}–{high:.3f}]" in text


def test_a_marked_point_is_drawn_on_its_view():
    from types import SimpleNamespace

    pytest.importorskip("cases.body_map")  # the case page's body-map geometry, which the report draws

    from reportlab.graphics.shapes import Circle

    from cases.report_bodymap import body_map, map_point_of

    marked = SimpleNamespace(tracked=SimpleNamespace(map_view="back", map_x=0.5, map_y=0.4))
    point = map_point_of(marked)
    assert (point.view, point.x, point.y) == ("back", 0.5, 0.4)
    assert map_point_of(SimpleNamespace(tracked=None)) is None
    assert map_point_of(SimpleNamespace(tracked=SimpleNamespace(map_view="", map_x=None, map_y=None))) is None
    plain_map, with_point = body_map("posterior torso"), body_map("posterior torso", point)
    circles = [s for s in with_point.contents if isinstance(s, Circle)]
    assert len(circles) == len([s for s in plain_map.contents if isinstance(s, Circle)]) + 2  # ring and dot
    ring = circles[-2]  # on the back outline (the right half), 40 % down from the top
    assert with_point.width / 2 < ring.cx < with_point.width
    assert with_point.height * 0.45 < ring.cy < with_point.height * 0.65


def test_the_site_is_shaded_on_both_views_where_it_shows():
    from reportlab.graphics.shapes import Rect

    pytest.importorskip("cases.body_map")

    from cases.report_bodymap import SITE, body_map

    def shaded(site: str) -> list:
        drawing = body_map(site)
        return [s for s in drawing.contents if getattr(s, "fillColor", None) == SITE]

    middle = body_map("posterior torso").width / 2
    back = shaded("posterior torso")
    assert back and all(isinstance(s, Rect) and s.x > middle for s in back)  # the back's torso only
    assert any(s.x < middle for s in shaded("upper extremity")) and any(s.x > middle for s in shaded("upper extremity"))
    assert shaded("unknown") == []


@pytest.fixture
def without_dejavu(monkeypatch):
    """Report fonts re-chosen as if no DejaVu Sans were installed (caches restored afterwards)."""
    from cases import report_style

    monkeypatch.setattr(report_style, "_font_dirs", lambda: [])
    report_style.report_fonts.cache_clear()
    report_style._styles.cache_clear()
    yield
    report_style.report_fonts.cache_clear()
    report_style._styles.cache_clear()


def test_without_dejavu_the_report_falls_back_to_helvetica(world, reported, without_dejavu):
    from cases.report_style import plain, report_fonts

    assert not report_fonts().unicode
    assert plain("0.73 \u2265 0.50 – Mendonça 皮膚") == "0.73 >= 0.50 – Mendonça ??"
    case, _ = reported
    text = pdf_text(build_case_report(case, generated_by=world.clin_a))
    assert "melanoma probability 0.73 >= threshold 0.50" in text and "PA-1" in text


def test_pages_and_report_share_one_wording(client, world, reported):
    """The footer and the result page's notice come from cases.statements, like the report."""
    from django.utils.html import escape

    case, scored = reported
    client.force_login(world.clin_a)
    home = client.get("/").content.decode()
    assert f"<strong>{statements.INTENDED_USE_LEAD}</strong> {escape(statements.intended_use())}" in home
    assert escape(statements.DATA_ATTRIBUTION) in home and "Rosendahl &amp; Kittler" in home
    result = client.get(f"/images/{scored.image_id}/").content.decode()
    assert f"<strong>Intended use:</strong> {escape(statements.RESULT_INTENDED_USE)}" in result


def test_histopathology_and_amended_reviews_are_in_the_report(world, reported):
    from django.utils import timezone

    from cases import corrections
    from cases.outcomes import record_outcome
    from cases.report import build_case_report

    case, _ = reported
    signed = world.lesion_a.reviews.get()
    corrections.amend_review(user=world.derm, review=signed, reason="second look at the margins",
                             values={"management": "biopsy"})
    record_outcome(user=world.clin_a, lesion=world.lesion_a, diagnosis="melanoma",
                   diagnosis_date=timezone.localdate(), report_reference="HP-2026-118")
    text = pdf_text(build_case_report(case, generated_by=world.clin_a))
    assert "Histopathology" in text and "HP-2026-118" in text
    assert "Amends the review of" in text and "second look at the margins" in text


def test_a_lesion_whose_image_failed_is_not_called_not_flagged(world, model_version):
    """The lesion header and the review section say what the summary says: scoring failed."""
    image = stored_image(world.lesion_a, world.clin_a, seed=7)
    Prediction.objects.create(image=image, model_version=model_version, status="failed", error="boom",
                              finished_at=timezone.now())
    text = pdf_text(build_case_report(world.case_a, generated_by=world.clin_a))
    assert "Status: Scoring failed" in text and "Not flagged" not in text
    assert "not flagged by the model" not in text


def test_an_amended_review_is_marked_superseded_where_it_is_printed(world, reported):
    case, _ = reported
    lesion = case.lesions.first()
    first = Review.objects.create(lesion=lesion, reviewer=world.derm, agreement="agree", final_diagnosis="nevus",
                                  management="reassure")
    Review.objects.create(lesion=lesion, reviewer=world.derm, agreement="disagree", final_diagnosis="melanoma",
                          management="excision", amends=first, amendment_reason="second look at the border")
    text = " ".join(pdf_text(build_case_report(case, generated_by=world.clin_a)).split())
    assert "Superseded amended on" in text and text.index("Superseded") < text.index("second look at the border")


def test_the_longest_accepted_texts_fit_the_report(world, model_version):
    """Free text up to each field's limit, line breaks included, flows over pages: a table row
    taller than a page must split instead of failing the whole report (ReportLab LayoutError)."""
    question_lines = [f"question line {n:02d}" for n in range(70)]
    question = "\n".join(question_lines)[:2000]
    notes = "\n".join(f"note {n:04d}" for n in range(500))[:4990] + "\nNOTES-END"
    review_notes = "\n".join(f"finding {n:04d}" for n in range(500))[:4988] + "\nREVIEW-END"
    assert len(notes) <= 5000 and len(review_notes) <= 5000 and question.count("\n") >= 60
    case = world.case_a
    case.clinical_question, case.notes = question, notes
    case.full_clean(exclude=["referring_clinician", "patient"])
    case.save()
    review = Review(lesion=world.lesion_a, reviewer=world.derm, agreement="agree", final_diagnosis="nevus",
                    management="reassure", notes=review_notes)
    review.full_clean(exclude=["lesion", "reviewer"])
    review.save()
    data = build_case_report(case, generated_by=world.clin_a)
    assert data.startswith(b"%PDF")
    text = pdf_text(data)
    assert question_lines[-1] in text or question.splitlines()[-1] in text
    assert "NOTES-END" in text and "REVIEW-END" in text
    assert all(line in text for line in notes.splitlines()[:-1])  # split across pages, no line lost


def test_a_box_taller_than_a_page_is_split():
    """``boxed`` (flag reasons, why the model could not assess) splits like the facts tables."""
    import io

    from reportlab.platypus import SimpleDocTemplate

    from cases.report_style import FLAG_BG, FLAG_EDGE, boxed, bullets

    out = io.BytesIO()
    SimpleDocTemplate(out).build([boxed(bullets([f"reason {n}" for n in range(200)]), FLAG_BG, FLAG_EDGE)])
    assert "reason 199" in pdf_text(out.getvalue())


def test_a_lesion_with_an_image_never_scored_is_not_called_not_flagged(world, model_version):
    """One image scored below the thresholds, one with no prediction at all: the lesion is not
    scored as a whole, as the follow-up map says ("not-scored")."""
    from cases.followup import status
    from cases.report import ai_summary

    done(stored_image(world.lesion_a, world.clin_a, seed=8), model_version)
    stored_image(world.lesion_a, world.clin_a, seed=9)  # no model: no prediction
    lesion = Lesion.objects.get(pk=world.lesion_a.pk)
    assert ai_summary(lesion) == "Not scored"
    assert status(lesion.tracked, [lesion]) == "not-scored"
    text = pdf_text(build_case_report(world.case_a, generated_by=world.clin_a))
    assert "Status: Not scored" in text and "not flagged by the model" not in text
