"""The second-opinion report of a case as a PDF, rendered server-side with ReportLab (platypus).

A copy of the record at the time it is generated: the patient (pseudonymous), the visit and the
clinical question; for each lesion its site on a body map, each image beside its Grad-CAM, the
newest scores against the thresholds (or why the model could not assess the image), and the
dermatologists' reviews; then what the numbers mean, the model version's measured limits, the
intended-use statement and the data attribution (cases.statements, as on the web pages).

Every text taken from the record is escaped before it goes into ReportLab's paragraph markup.
"""
from __future__ import annotations

import io
import logging
from datetime import date, datetime

from django.conf import settings
from django.core.files.storage import default_storage
from django.db.models import Prefetch
from django.utils import timezone
from PIL import Image as PILImage
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Image, KeepTogether, SimpleDocTemplate, Spacer, Table, TableStyle

from cases import followup, queue, statements
from cases.models import Case, Lesion, LesionImage, Outcome, Prediction
from cases.outcomes import current_outcome
from cases.presentation import (age_at_visit, clinical_context_text, displayed_set, flag_badge_text,
                                reliability_caveats, review_state_text, set_note, version_note)
from cases.report_bodymap import body_map, map_point_of
from cases.report_model import models_section, reading_section
from cases.report_style import (CONTENT_WIDTH, FLAG_BG, FLAG_EDGE, MARGIN, RULE, WARN_BG, WARN_EDGE, Fonts, bold,
                                boxed, bullets, esc, facts_table, grid, para, person, plain, report_fonts, when)
from cases.scoring import CANNOT_ASSESS
from cases.templatetags.cases_extras import percent_pair
from classifier.models import ModelVersion

log = logging.getLogger(__name__)

HEADER = "SecondLook second-opinion report"
PICTURE_W, PICTURE_H = 80 * mm, 62 * mm
PICTURE_MAX_PX = 900  # enough for print at this size; keeps the PDF small
NOT_REVIEWED = "Not yet reviewed by a dermatologist"


def visit_date(case: Case) -> date:
    """The day the patient was seen: the case's visit date where the model has one, else the day
    the case was opened."""
    visit = getattr(case, "visit_date", None)
    return visit or timezone.localtime(case.created_at).date()


# --- Page furniture ------------------------------------------------------------------------------

def _canvas_class(footer: str, fonts: Fonts) -> type[Canvas]:
    """A canvas that holds its pages back until the end, so each footer can say "page x of y"."""

    class NumberedCanvas(Canvas):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._pages: list[dict] = []

        def showPage(self) -> None:  # noqa: N802 (ReportLab's name)
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            total = len(self._pages)
            for state in self._pages:
                self.__dict__.update(state)
                self._furniture(total)
                super().showPage()
            super().save()

        def _furniture(self, total: int) -> None:
            width, height = self._pagesize
            self.saveState()
            self.setStrokeColor(RULE)
            self.setLineWidth(0.5)
            self.line(MARGIN, height - 12 * mm, width - MARGIN, height - 12 * mm)
            self.line(MARGIN, 13 * mm, width - MARGIN, 13 * mm)
            self.setFont(fonts.bold, 9)
            self.drawString(MARGIN, height - 10.5 * mm, HEADER)
            self.setFont(fonts.regular, 8)
            self.drawRightString(width - MARGIN, height - 10.5 * mm, "Confidential: patient data")
            self.drawString(MARGIN, 9 * mm, plain(footer))
            self.drawRightString(width - MARGIN, 9 * mm, f"page {self._pageNumber} of {total}")
            self.restoreState()

    return NumberedCanvas


# --- Pictures ------------------------------------------------------------------------------------

def picture(name: str, *, max_w: float = PICTURE_W, max_h: float = PICTURE_H) -> Flowable | None:
    """A stored image, scaled to fit; None when it is missing or unreadable (the report says so
    instead of failing: a lost file must not hide the rest of the record)."""
    if not name:
        return None
    try:
        with default_storage.open(name, "rb") as handle:
            data = handle.read()
        with PILImage.open(io.BytesIO(data)) as source:
            image = source.convert("RGB")
    except Exception:  # FileNotFoundError locally, a storage client error on S3, a broken file
        log.warning("report: stored image %s could not be read", name, exc_info=True)
        return None
    image.thumbnail((PICTURE_MAX_PX, PICTURE_MAX_PX))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    buffer.seek(0)
    ratio = min(max_w / image.width, max_h / image.height)
    return Image(buffer, width=image.width * ratio, height=image.height * ratio)


def _cell(flowable: Flowable | None, caption: str, missing: str) -> list[Flowable]:
    if flowable is None:
        return [para(esc(missing), "small"), para(esc(caption), "small")]
    return [flowable, Spacer(1, 2), para(esc(caption), "small")]


def image_pair(image: LesionImage, prediction: Prediction | None) -> Table:
    """The stored image and its Grad-CAM side by side."""
    left = _cell(picture(image.file.name), f"{image.get_kind_display()} image, {image.width}×{image.height}",
                 "The stored image file was not found.")
    if prediction is None or prediction.status != Prediction.Status.DONE:
        right = [para("No Grad-CAM: the image has no result yet.", "small")]
    elif not prediction.assessable:
        right = [para("No Grad-CAM: the model could not assess this image.", "small")]
    elif not prediction.heatmap:
        right = [para("No Grad-CAM was stored for this result.", "small")]
    else:
        right = _cell(picture(prediction.heatmap.name),
                      "Grad-CAM for the melanoma class: where the model looked (warmer = raised the score); "
                      "not a lesion map.", "The Grad-CAM file was not found.")
    table = Table([[left, right]], colWidths=[CONTENT_WIDTH / 2] * 2)
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
    return table


# --- The record ----------------------------------------------------------------------------------

def _lesions(case: Case) -> list[Lesion]:
    predictions = Prediction.objects.select_related("model_version").order_by("-created_at", "-pk")
    images = LesionImage.objects.order_by("uploaded_at", "pk").prefetch_related(
        Prefetch("predictions", queryset=predictions))
    related = ["tracked"] if any(f.name == "tracked" for f in Lesion._meta.get_fields()) else []
    outcomes = Outcome.objects.select_related("entered_by")  # histopathology_section: no query per lesion
    return list(case.lesions.select_related(*related).prefetch_related(
        Prefetch("images", queryset=images), "reviews__reviewer", Prefetch("outcomes", queryset=outcomes))
        .order_by("created_at", "pk"))


age_at = age_at_visit  # the same age at the visit as the pages show


def patient_section(case: Case) -> list[Flowable]:
    patient = case.patient
    age = age_at(case)
    born = f"{patient.birth_year}" + (f" (about {age} years old at the visit)" if age is not None else "")
    rows = [
        ("Patient identifier", bold(patient.identifier) + esc(" (pseudonymous)")),
        ("Born", esc(born)),
        ("Sex", esc(patient.get_sex_display())),
        ("Fitzpatrick skin type", esc(patient.get_fitzpatrick_type_display() if patient.fitzpatrick_type
                                      else "Not recorded")),
        ("Clinic", esc(patient.clinic.name)),
        ("Visit", esc(f"{visit_date(case):%Y-%m-%d}") + esc(f" (case {case.pk} opened {when(case.created_at)})")),
        ("Referring clinician", esc(person(case.referring_clinician))),
        ("Case status", esc(case.get_status_display())),
        ("Clinical question", esc(case.clinical_question)),
    ]
    if case.notes:
        rows.append(("Case notes", esc(case.notes)))
    return [para("Patient and visit", "h2"), facts_table(rows)]


def ai_summary(lesion: Lesion) -> str:
    """One phrase for the summary table: the lesion's AI state as a whole."""
    if not lesion.images.all():
        return "No images"
    newest = [i.current_prediction() for i in lesion.images.all()]
    scored = [p for p in newest if p is not None]
    if any(p.status == Prediction.Status.DONE and not p.assessable for p in scored):
        return "Model could not assess an image"
    if lesion.awaiting_review:
        return "Flagged for review"
    # out of the queue (its flag reviewed), an image whose scoring is unfinished or failed is what
    # is still open: said before the old flag, as the body map does (cases.followup.status)
    if any(p.is_active for p in scored):
        return "Scoring not finished"
    if any(p.status == Prediction.Status.FAILED for p in scored):
        return "Scoring failed"
    # an image with no prediction at all (no model when it was uploaded) was never judged: the
    # others' scores do not clear the lesion (as cases.followup.status: "not-scored")
    if any(p is None for p in newest):
        return "Not scored"
    return "Flagged for review" if lesion.flagged else "Not flagged"


def review_summary(lesion: Lesion) -> str:
    reviews = sorted(lesion.reviews.all(), key=lambda r: r.created_at)
    if not reviews:
        return NOT_REVIEWED
    last = reviews[-1]
    return f"{last.get_final_diagnosis_display()}; {last.get_management_display()} ({person(last.reviewer)})"


def lesion_name(lesion: Lesion, number: int) -> str:
    """"Lesion L2" where the patient's lesions are numbered (as on the case page), else "Lesion 2"."""
    tracked = getattr(lesion, "tracked", None)
    return f"Lesion {getattr(tracked, 'label', None) or number}"


def lesion_title(lesion: Lesion, number: int) -> str:
    return f"{lesion_name(lesion, number)} · {lesion.get_anatomic_site_display()}"


def summary_section(lesions: list[Lesion]) -> list[Flowable]:
    if not lesions:
        return [para("Lesions", "h2"), para("No lesions were recorded for this case.")]
    width = CONTENT_WIDTH
    rows = [["Lesion", "Site", "AI result", "Dermatologist"]]
    for number, lesion in enumerate(lesions, 1):
        rows.append([esc(lesion_name(lesion, number)), esc(lesion.get_anatomic_site_display()),
                     esc(ai_summary(lesion)), esc(review_summary(lesion))])
    return [para("Summary", "h2"), grid(rows, [0.14 * width, 0.2 * width, 0.26 * width, 0.4 * width])]


def site_text(lesion: Lesion, *, mapped: bool) -> str:
    """The site in words, side included, and how the map shows it."""
    tracked = getattr(lesion, "tracked", None)
    side = tracked.get_side_display() if tracked is not None and getattr(tracked, "side", "") else ""
    text = lesion.get_anatomic_site_display() + (f", {side.lower()}" if side else "")
    point = map_point_of(lesion)
    if lesion.anatomic_site == "unknown" and point is None:
        return text + " (site not recorded)"
    if not mapped:
        return text
    if point is not None:
        return text + f" (marked on the body map, {point.view} view)"
    return text + " (shaded on the body map; no point was marked)"


def lesion_header(lesion: Lesion, number: int, *, flag_cleared: bool = False) -> list[Flowable]:
    """Title, then the body map beside the site, description and flag state. ``flag_cleared``
    (``queue.flag_cleared_lesions``): the lesion waits for review although every image's current
    score is below the thresholds, said as on the case page, or the "Flagged" status would sit
    above image results that all read "Not flagged" with nothing to explain it."""
    drawing = body_map(lesion.anatomic_site, map_point_of(lesion))
    rows = [para(bold("Site: ") + esc(site_text(lesion, mapped=drawing is not None)))]
    if lesion.description:
        rows.append(para(bold("Description: ") + esc(lesion.description)))
    if lesion.flagged:
        state = flag_badge_text(lesion)
    else:  # the summary's words: "Not flagged" only when every image was scored below the thresholds
        state = ai_summary(lesion)
    rows.append(para(bold("Status: ") + esc(state)))
    if flag_cleared and lesion.awaiting_review:
        rows.append(para(esc(queue.FLAG_CLEARED_TEXT), "small"))
    title = para(esc(lesion_title(lesion, number)), "h2")
    if drawing is None:
        return [title, *rows]
    table = Table([[drawing, rows]], colWidths=[drawing.width + 10, CONTENT_WIDTH - drawing.width - 10])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (0, 0), 0)]))
    return [title, table]


def scores_table(prediction: Prediction) -> Table:
    version = prediction.model_version
    width = CONTENT_WIDTH
    rows = [["Score", "Value", "Threshold", "Reached"]]
    for label, value, threshold in (("Melanoma probability", prediction.melanoma_probability,
                                     version.melanoma_threshold),
                                    ("Malignancy score", prediction.malignancy_score, version.malignancy_threshold)):
        reached = "—" if threshold is None else ("Yes" if value >= threshold else "No")
        shown, shown_threshold = percent_pair(value, threshold)  # one precision: their order reads right
        rows.append([esc(label), bold(shown), esc(shown_threshold if threshold is not None else "none"),
                     esc(reached)])
    return grid(rows, [0.4 * width, 0.2 * width, 0.2 * width, 0.2 * width])


def cannot_assess_box(prediction: Prediction) -> Table:
    """The prominent warning in place of scores: they are kept in the record, never shown here."""
    content = [para(esc(CANNOT_ASSESS), "warn"),
               para(esc("This image is outside what the model can judge: its scores are not reliable and are not "
                        "shown. " + review_state_text(prediction.image.lesion))),
               para(bold("Why:"))]
    content += bullets(prediction.assessment_notes or ["no reason was recorded"])
    ood = (prediction.assessment or {}).get("ood") if isinstance(prediction.assessment, dict) else None
    if isinstance(ood, dict) and isinstance(ood.get("score"), (int, float)):
        limit = ood.get("threshold")
        content.append(para(esc(f"Unfamiliarity score {ood['score']:.2f}"
                                + (f" (limit {limit:.2f})" if isinstance(limit, (int, float)) else "")), "small"))
    return boxed(content, WARN_BG, WARN_EDGE)


def flag_box(prediction: Prediction) -> Flowable:
    if not prediction.flagged:
        return para(bold("Not flagged") + esc(f" at the model's operating thresholds. {statements.BELOW_THRESHOLD}"))
    # a version's re-score of an image a dermatologist already reviewed is not queued again: say where it stands
    content = [para(bold("Flagged") + esc(" at the model's operating thresholds. "
                                          + review_state_text(prediction.image.lesion)))]
    content += bullets(prediction.flag_reasons or [])
    return boxed(content, FLAG_BG, FLAG_EDGE)


def done_result(prediction: Prediction, case: Case) -> list[Flowable]:
    parts: list[Flowable] = [flag_box(prediction), Spacer(1, 4), scores_table(prediction)]
    members = displayed_set(prediction)
    if members:
        parts.append(para(bold("Diagnoses the model cannot rule out: ") + esc(", ".join(map(str, members)))))
        parts.append(para(esc(set_note(prediction, members)), "small"))
    for caveat in reliability_caveats(prediction, case):
        parts.append(para(bold("Reliability: ") + esc(caveat)))
    parts.append(para(esc(clinical_context_text(prediction.clinical_context)), "small"))
    return parts


def result(prediction: Prediction | None, case: Case) -> list[Flowable]:
    """The newest result of one image, or plainly why there is none."""
    if prediction is None:
        return [para("Not scored: no model was available when the image was uploaded.")]
    version = prediction.model_version.version
    not_yet = esc(f" No result yet at the time of this report (model {version}).")
    if prediction.status == Prediction.Status.PENDING:
        return [para(bold("Waiting to be scored.") + not_yet)]
    if prediction.status == Prediction.Status.RUNNING:
        return [para(bold("Scoring in progress.") + not_yet)]
    if prediction.status == Prediction.Status.FAILED:
        return [para(bold("Scoring failed: ") + esc(prediction.error_for_display or "no reason recorded")
                     + esc(". There is no result for this image."))]
    note = version_note(prediction.model_version)
    stamp = para(esc(f"Model version {version}{' ' + note if note else ''} · scored {when(prediction.finished_at)}"),
                 "small")
    if not prediction.assessable:
        return [cannot_assess_box(prediction), stamp]
    return done_result(prediction, case) + [stamp]


def image_section(image: LesionImage, number: int, case: Case) -> list[Flowable]:
    prediction = image.current_prediction()
    heading = para(esc(f"Image {number} · {image.get_kind_display()} · uploaded {when(image.uploaded_at)}"
                       + (f" · taken {image.acquired_on:%Y-%m-%d}" if image.acquired_on else "")), "h3")
    outcome = result(prediction, case)
    # the picture, its flag and its scores on one page where they fit
    parts: list[Flowable] = [KeepTogether([heading, image_pair(image, prediction)] + outcome[:3])] + outcome[3:]
    if prediction is not None and prediction.reason:
        parts.append(para(esc(f"Scored again: {prediction.reason}"), "small"))
    pending = image.rescore_in_progress()
    if pending is not None:
        state = {"pending": "is waiting", "running": "is running"}.get(pending.status, "has failed")
        parts.append(para(esc(f"A re-score with model version {pending.model_version.version} {state}: this "
                              "report shows the result in force, from the version before it."), "small"))
    others = len(image.predictions.all()) - 1
    if others > 0:
        parts.append(para(esc(f"{others} other result(s) of this image are kept in the record; this report "
                              "shows the one in force."), "small"))
    return parts


def review_section(lesion: Lesion) -> list[Flowable]:
    reviews = sorted(lesion.reviews.all(), key=lambda r: r.created_at)
    parts: list[Flowable] = [para("Dermatologist review", "h3")]
    if not reviews:
        if lesion.awaiting_review:
            why = " (in the review queue)."
        elif lesion.flagged:
            why = "."
        elif (state := ai_summary(lesion)) == "Not flagged":
            why = " (not flagged by the model: no review was requested)."
        else:
            why = f" ({state.lower()}: no review was requested yet)."
        return parts + [para(bold(NOT_REVIEWED) + esc(why))]
    for review in reviews:
        rows = [("Reviewer", esc(person(review.reviewer))), ("Date", esc(when(review.created_at))),
                ("Agreement", esc(review.get_agreement_display())),
                ("Final diagnosis", bold(review.get_final_diagnosis_display())),
                ("Management", bold(review.get_management_display()))]
        changed = getattr(review, "lesion_changed", None)
        if changed is not None:
            rows.append(("Changed since the earlier visit", esc("Yes" if changed else "No")))
        if review.notes:
            rows.append(("Notes", esc(review.notes)))
        if review.amends_id:
            rows.append(("Amends", esc(f"the review of {when(review.amends.created_at)}: {review.amendment_reason}")))
        amended_by = [r for r in reviews if r.amends_id == review.pk]
        if amended_by:  # superseded: say so where the reader meets it, not only further down
            rows.insert(0, ("Superseded", bold(f"amended on {when(amended_by[-1].created_at)}; see below")))
        parts += [facts_table(rows), Spacer(1, 4)]
    return parts


def histopathology_section(lesion: Lesion) -> list[Flowable]:
    """The lesion's current histopathology result, when the clinic entered one."""
    prefetched = "outcomes" in getattr(lesion, "_prefetched_objects_cache", {})  # _lesions' (the same rule)
    outcome = followup.current_result(lesion) if prefetched else current_outcome(lesion)
    if outcome is None:
        return []
    rows = [("Diagnosis", bold(outcome.get_diagnosis_display())), ("Report date", esc(f"{outcome.diagnosis_date:%Y-%m-%d}")),
            ("Report reference", esc(outcome.report_reference)),
            ("Entered by", esc(f"{person(outcome.entered_by)}, {when(outcome.entered_at)}"))]
    if outcome.supersedes_id:
        rows.append(("Corrects an earlier entry", esc(outcome.reason)))
    return [para("Histopathology", "h3"), facts_table(rows), Spacer(1, 4)]


def lesion_section(lesion: Lesion, number: int, case: Case, *, flag_cleared: bool = False) -> list[Flowable]:
    images = list(lesion.images.all())
    header = lesion_header(lesion, number, flag_cleared=flag_cleared)
    if not images:
        return header + [para("No images were uploaded for this lesion.")] + \
            review_section(lesion) + histopathology_section(lesion)
    first = image_section(images[0], 1, case)
    # never the lesion's title and body map alone at the foot of a page
    parts: list[Flowable] = [KeepTogether(header + first[:1])] + first[1:]
    for index, image in enumerate(images[1:], 2):
        parts += image_section(image, index, case)
    return parts + review_section(lesion) + histopathology_section(lesion)


def versions_used(lesions: list[Lesion]) -> list[ModelVersion]:
    """The model versions of the results the report shows (usually one)."""
    seen: dict[int, ModelVersion] = {}
    for lesion in lesions:
        for image in lesion.images.all():
            prediction = image.current_prediction()
            if prediction is not None:
                seen.setdefault(prediction.model_version_id, prediction.model_version)
    return list(seen.values())


def closing_section() -> list[Flowable]:
    # one block: the statements are read together, never split by a page break
    return [KeepTogether([para("Intended use", "h2"),
                          para(bold(statements.INTENDED_USE_LEAD) + " " + esc(statements.intended_use())),
                          para("Data attribution", "h2"), para(esc(statements.DATA_ATTRIBUTION))])]


# --- The document --------------------------------------------------------------------------------

def story(case: Case, *, generated_by, now: datetime) -> list[Flowable]:
    lesions = _lesions(case)
    parts: list[Flowable] = [
        para(esc(f"Second-opinion report · case {case.pk}"), "title"),
        para(esc(f"Generated {when(now)} ({timezone.get_current_timezone_name()}) by {person(generated_by)}. "
                 "A copy of the record at that time; the case page shows the current record."), "small"),
        Spacer(1, 4),
        boxed([para(bold(statements.INTENDED_USE_LEAD) + esc(" Not a diagnosis: a clinician makes every diagnostic "
                                                            "and management decision (see Intended use)."))],
              FLAG_BG, FLAG_EDGE),
    ]
    parts += patient_section(case) + summary_section(lesions)
    cleared = queue.flag_cleared_lesions(case)
    for number, lesion in enumerate(lesions, 1):
        parts += lesion_section(lesion, number, case, flag_cleared=lesion.pk in cleared)
    versions = versions_used(lesions)
    return parts + reading_section(versions) + models_section(versions) + closing_section()


def build_case_report(case: Case, *, generated_by, now: datetime | None = None) -> bytes:
    """The case's second-opinion report as PDF bytes (A4)."""
    now = now or timezone.now()
    fonts = report_fonts()
    footer = f"Patient {case.patient.identifier} · Case {case.pk} · generated {when(now)}"
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer, pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=18 * mm, bottomMargin=18 * mm,
        title=f"{HEADER}, case {case.pk}", author=settings.SITE_NAME, subject="AI second opinion (decision support)",
        creator=settings.SITE_NAME,
    )
    document.build(story(case, generated_by=generated_by, now=now), canvasmaker=_canvas_class(footer, fonts))
    return buffer.getvalue()
