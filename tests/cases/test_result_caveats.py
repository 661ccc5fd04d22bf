"""How one image's result is presented (result page, case-page card and its status poll, report):
caveats for acral and oral/genital sites and for children, what the probability is calibrated on,
the version's limits, score and threshold at one precision, a flag a review already covers, a
version no longer active, the correction's reason, "sex not used", and a model card re-assessed
in place."""
from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditAction, AuditEvent
from cases import presentation, scoring, statements
from cases.models import Lesion, Patient, Prediction, Review
from cases.report import build_case_report
from cases.report_model import reading_section
from cases.templatetags.cases_extras import percent_pair
from classifier.models import ModelVersion
from tests.cases.test_case_report import pdf_text
from tests.cases.test_result_honesty import SHIPPED, SHIPPED_CARD, SHIPPED_METRICS, version_like_shipped
from tests.cases.test_status_poll_queries import _one_vs_many
from tests.support.case_helpers import make_image

pytestmark = pytest.mark.django_db

MEL_T = SHIPPED_METRICS["operating_points"]["melanoma"]["threshold"]  # 0.092372...
MALIG_T = SHIPPED_METRICS["operating_points"]["malignancy"]["threshold"]  # 0.184374...
BY_SITE = SHIPPED_METRICS["subgroups"]["site"]
TOTAL = SHIPPED_METRICS["n_images"]
ACRAL = (f"Lesions on the palms or soles (acral) were hardly represented in the training data (held-out test "
         f"data: {BY_SITE['acral']['n']} of {TOTAL:,} images): the score is not reliable for this site.")
GENITAL = (f"Oral and genital lesions were hardly represented in the training data (held-out test data: "
           f"{BY_SITE['genital']['n']} of {TOTAL:,} images): the score is not reliable for this site.")
CHILD = ("This patient is under 18: children are outside the population this model was validated on, "
         "so its accuracy for them is unknown.")
VAL = SHIPPED_CARD["validation"]["melanoma"]
SHARE = f"about {round(100 * VAL['n_positive'] / (VAL['n_positive'] + VAL['n_negative']))} %"


def scored(world, version, *, lesion=None, sha="a" * 64, **fields) -> Prediction:
    values = dict(status="done", melanoma_probability=0.05, malignancy_score=0.1, flagged=False,
                  class_probabilities={"nevus": 0.9, "melanoma": 0.05}, finished_at=timezone.now()) | fields
    return Prediction.objects.create(image=make_image(world, sha=sha, lesion=lesion), model_version=version, **values)


def page(client, world, prediction) -> str:
    client.force_login(world.clin_a)
    return client.get(f"/images/{prediction.image_id}/").content.decode()


def report(world) -> str:
    world.case_a.refresh_from_db()
    return pdf_text(build_case_report(world.case_a, generated_by=world.clin_a))


def poll_html(client, world) -> str:
    client.force_login(world.clin_a)
    return " ".join(p["html"] for p in client.get(f"/cases/{world.case_a.pk}/status.json").json()["predictions"])


# --- 1. Sites the data hardly holds, and children ---------------------------------------------------

def test_palms_soles_and_oral_genital_get_the_fixed_caveat_with_the_held_out_count():
    assert presentation.site_caveat(SHIPPED_METRICS, "palms/soles") == ACRAL
    assert presentation.site_caveat(SHIPPED_METRICS, "oral/genital") == GENITAL
    # without figures by site the words stand, with no count made up
    assert presentation.site_caveat({}, "palms/soles") == ACRAL.replace(
        f" (held-out test data: {BY_SITE['acral']['n']} of {TOTAL:,} images)", "")


def test_a_site_with_its_own_held_out_row_gets_the_age_bands_rule():
    row, overall = BY_SITE["upper extremity"], SHIPPED_METRICS["melanoma_auc"]
    assert overall - row["melanoma_auc"] >= presentation.CAVEAT_GAP  # the shipped figures this test relies on
    text = presentation.site_caveat(SHIPPED_METRICS, "upper extremity")
    assert text.startswith(f"For lesions on the upper extremity, this model's held-out melanoma AUC is "
                           f"{row['melanoma_auc']:.2f} (overall {overall:.2f})")
    # as good as overall, no one row (head/neck: face, ear, neck, scalp), or no site: no caveat
    assert presentation.site_caveat(SHIPPED_METRICS, "lower extremity") is None
    assert presentation.site_caveat(SHIPPED_METRICS, "head/neck") is None
    assert presentation.site_caveat(SHIPPED_METRICS, "unknown") is None


@pytest.mark.parametrize("age, expected", [(12, CHILD), (17, CHILD), (18, None), (None, None)])
def test_children_are_outside_the_validated_population(age, expected):
    assert presentation.child_caveat(age) == expected


def test_page_card_and_report_show_the_site_and_child_caveats(client, world, model_version):
    version = version_like_shipped(model_version)
    Patient.objects.filter(pk=world.patient_a.pk).update(birth_year=timezone.now().year - 12)
    Lesion.objects.filter(pk=world.lesion_a.pk).update(anatomic_site="palms/soles")
    prediction = scored(world, version)
    shown = page(client, world, prediction)
    assert f"<strong>Reliability:</strong> {CHILD}" in shown
    assert "<strong>Reliability:</strong> Lesions on the palms or soles (acral) were hardly represented" in shown
    client.force_login(world.clin_a)
    card = client.get(f"/cases/{world.case_a.pk}/").content.decode()
    card = card[card.index('class="prediction-summary'):]
    for html in (card, poll_html(client, world)):
        assert "Lesions on the palms or soles (acral) were hardly represented" in html
        assert "This patient is under 18" in html
    text = report(world)
    assert f"Reliability: {CHILD}" in text and f"Reliability: {ACRAL}" in text


def test_the_card_shows_the_skin_type_caveat_as_the_page_does(client, world, model_version):
    Patient.objects.filter(pk=world.patient_a.pk).update(fitzpatrick_type=6)
    scored(world, model_version)
    assert "This patient&#x27;s skin type (Fitzpatrick VI)" in poll_html(client, world)


def test_the_status_poll_stays_flat_with_caveats_on_every_card(client, world, model_version,
                                                               django_assert_max_num_queries):
    version_like_shipped(model_version)
    Patient.objects.filter(pk=world.patient_a.pk).update(fitzpatrick_type=6, birth_year=timezone.now().year - 12)
    Lesion.objects.filter(pk=world.lesion_a.pk).update(anatomic_site="palms/soles")
    client.force_login(world.clin_a)
    one, many, shown = _one_vs_many(client, world, model_version)
    assert shown == 6 and many == one, (one, many)
    assert "This patient is under 18" in poll_html(client, world)


def test_the_known_limits_name_the_sparse_sites_and_children():
    text = " ".join(statements.MODEL_LIMITS)
    assert (f"({BY_SITE['acral']['n']} and {BY_SITE['genital']['n']} of the {TOTAL:,} held-out test images)"
            in text)
    assert "palms or soles (acral)" in text and "oral or genital" in text
    assert "Not validated for children" in text and "under 18" in text


# --- 2. What the probability is calibrated on, and the version's limits ------------------------------

def test_the_calibration_note_quotes_the_validation_share_from_the_card(tmp_path):
    shipped = ModelVersion(artifact_path=str(SHIPPED))
    assert presentation.calibration_note(shipped) == statements.CALIBRATION_NOTE.format(share=SHARE)
    assert SHARE in presentation.calibration_note(shipped, short=True)
    assert "ISIC Archive, HAM10000" in statements.CALIBRATION_NOTE and "not this patient's chance" in \
        statements.CALIBRATION_NOTE
    # a card without the counts: no number
    (tmp_path / "model_card.json").write_text(json.dumps({"validation": {}}))
    bare = presentation.calibration_note(ModelVersion(artifact_path=str(tmp_path)))
    assert bare == statements.CALIBRATION_NOTE.format(share=statements.CALIBRATION_SHARE_UNKNOWN) and "%" not in bare


def test_page_card_and_report_say_what_the_probability_is_calibrated_on(client, world, model_version):
    from reportlab.platypus import Paragraph

    version = version_like_shipped(model_version)
    prediction = scored(world, version)
    shown = page(client, world, prediction)
    scores = shown[shown.index("<h2>Scores</h2>"):shown.index("Class probabilities")]
    assert presentation.calibration_note(version).replace("'", "&#x27;") in scores
    assert presentation.calibration_note(version, short=True).replace("'", "&#x27;") in poll_html(client, world)
    reading = " ".join(p.getPlainText() for p in reading_section([version]) if isinstance(p, Paragraph))
    assert presentation.calibration_note(version) in reading
    assert presentation.calibration_note(version) in report(world)


def test_the_result_page_lists_the_versions_known_limits(client, world, model_version):
    shown = page(client, world, scored(world, model_version))
    assert "Known limits of this model version" in shown
    for limit in statements.MODEL_LIMITS:
        assert limit.replace("'", "&#x27;") in shown
    ModelVersion.objects.filter(pk=model_version.pk).update(metrics={"limitations": ["Only a test model."]})
    shown = page(client, world, Prediction.objects.get())
    assert "<li>Only a test model.</li>" in shown and statements.MODEL_LIMITS[0] not in shown


# --- 3. Score and threshold at one precision ---------------------------------------------------------

@pytest.mark.parametrize("value, threshold, want", [
    (0.0923, MEL_T, ("9.23%", "9.24%")),  # below the shipped threshold: never "9.23%" against "9.2%"
    (0.1843, MALIG_T, ("18.43%", "18.44%")),
    (0.0951, MEL_T, ("9.5%", "9.2%")),  # one decimal shows the order: one decimal
    (0.0929, 0.09267, ("9.29%", "9.27%")),  # a threshold that rounds up: never "9.29%" against "9.3%"
    (0.0926, 0.09267, ("9.26%", "9.27%")),
    (0.5, 0.5, ("50.0%", "50.0%")),
    (0.12, None, ("12.0%", "—")),
])
def test_score_and_threshold_are_shown_at_one_precision(value, threshold, want):
    assert percent_pair(value, threshold) == want


def test_page_and_report_show_a_score_just_below_the_threshold_below_it(client, world, model_version):
    version = version_like_shipped(model_version)
    prediction = scored(world, version, melanoma_probability=0.0923, malignancy_score=0.1843)
    shown = page(client, world, prediction)
    assert "<strong>9.23%</strong>" in shown and "(threshold 9.24%)" in shown and "(threshold 9.2%)" not in shown
    assert "<strong>18.43%</strong>" in shown and "(threshold 18.44%)" in shown
    assert "Not flagged" in shown
    text = report(world)
    assert "Melanoma probability 9.23% 9.24% No" in text and "Malignancy score 18.43% 18.44% No" in text


def test_flag_reasons_give_a_rounding_up_threshold_at_the_scores_precision():
    from types import SimpleNamespace

    version = SimpleNamespace(melanoma_threshold=0.09267, malignancy_threshold=MALIG_T)
    result = SimpleNamespace(melanoma_probability=0.0929, malignancy_score=0.18445, flag_reasons=[], flagged=False)
    assert scoring._flags(result, version)[1] == ["melanoma probability 9.29% \u2265 threshold 9.27%",
                                                  "malignancy score 18.45% \u2265 threshold 18.44%"]


# --- 4. A flag a dermatologist's review already covers -----------------------------------------------

def test_a_flag_already_reviewed_is_not_said_to_be_for_review(client, world, model_version):
    prediction = scored(world, model_version, melanoma_probability=0.7, flagged=True,
                        flag_reasons=["melanoma probability 70.0% \u2265 threshold 50.0%"])
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True)
    sent = "The lesion has been sent to a dermatologist for review."
    assert sent in page(client, world, prediction) and sent in report(world)

    # a new version's re-score of a reviewed image is not queued again
    review = Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree",
                                   final_diagnosis="nevus", management="reassure")
    Lesion.objects.filter(pk=world.lesion_a.pk).update(awaiting_review=False)
    day = f"{timezone.localtime(review.created_at):%Y-%m-%d}"
    reviewed = f"The lesion was already reviewed by a dermatologist on {day}."
    shown, text = page(client, world, prediction), report(world)
    assert reviewed in shown and f"Flagged at the model's operating thresholds. {reviewed}" in text
    for output in (shown, text):
        assert "for dermatologist review" not in output.replace("</span>", "") and sent not in output


# --- 7. A result of a version that is no longer active -----------------------------------------------

def test_a_result_of_a_version_no_longer_active_says_so(client, world, model_version):
    prediction = scored(world, model_version)
    assert "no longer the active version" not in page(client, world, prediction)
    ModelVersion.objects.filter(pk=model_version.pk).update(status=ModelVersion.Status.READY,
                                                            activated_at=timezone.now() - timedelta(days=2))
    assert "(no longer the active version)" in page(client, world, prediction)
    assert "(no longer the active version)" in poll_html(client, world)
    assert "Model version unit-test-v1 (no longer the active version)" in report(world)

    # a roll-back away from it is named where it is read once (the page and the report's model section)
    AuditEvent.objects.create(action=AuditAction.ROLLBACK, object_type="modelversion", object_id="1",
                              old_values={"active": "unit-test-v1"}, new_values={"active": "older"})
    day = f"{timezone.localtime(timezone.now()):%Y-%m-%d}"
    assert f"(rolled back on {day}; no longer the active version)" in page(client, world, prediction)
    assert f"rolled back on {day}; no longer the active version" in report(world)


# --- 8. The correction's reason; a failed re-score --------------------------------------------------

def test_the_correction_reason_is_on_the_page_and_in_the_report(client, world, model_version):
    prediction = scored(world, model_version, reason="site corrected to the palm", context_revision=1)
    assert "Scored again: site corrected to the palm" in page(client, world, prediction)
    assert "Scored again: site corrected to the palm" in report(world)


def test_a_failed_rescore_says_the_result_stands_until_it_is_retried(client, world, model_version):
    prediction = scored(world, model_version)
    newer = ModelVersion.objects.create(version="unit-test-v2", status=ModelVersion.Status.READY,
                                        artifact_path="/x", melanoma_threshold=0.5, malignancy_threshold=0.6)
    # the active version's re-score (one of a version no longer active is passed over)
    ModelVersion.objects.filter(pk=model_version.pk).update(status=ModelVersion.Status.READY)
    ModelVersion.objects.filter(pk=newer.pk).update(status=ModelVersion.Status.ACTIVE)
    rescore = Prediction.objects.create(image=prediction.image, model_version=newer, status="pending")
    assert "stays in force until it finishes." in page(client, world, prediction)
    Prediction.objects.filter(pk=rescore.pk).update(status="failed", error="worker lost", finished_at=timezone.now())
    shown = page(client, world, prediction)
    assert 'data-rescore-status="failed"' in shown
    assert "stays in force until the re-score is retried and finishes." in shown
    assert "until it finishes" not in shown


# --- 9. Sex the model does not use ------------------------------------------------------------------

@pytest.mark.parametrize("sex, said", [("other", "sex not used"), ("female", "sex female"),
                                       ("unknown", "sex unknown"), (None, "sex unknown")])
def test_a_sex_the_model_does_not_take_is_said_to_be_unused(client, world, model_version, sex, said):
    prediction = scored(world, model_version, clinical_context={"age": 54.0, "sex": sex, "site": "posterior torso"})
    expected = f"Scores include the clinical context: age 54, {said}, site posterior torso."
    assert expected in page(client, world, prediction) and expected in report(world)


# --- 10. A card re-assessed in place; what the set's coverage counts ---------------------------------

def test_a_card_reassessed_in_place_is_read_again(tmp_path):
    card = tmp_path / "model_card.json"

    def write(coverage: float, stamp: int) -> None:
        card.write_text(json.dumps({"assessment": {"measured": {"test": {
            "images": 100, "not_assessable": 7, "conformal": {"coverage": coverage, "images": 100}}}}}))
        os.utime(card, ns=(stamp, stamp))

    version = ModelVersion(artifact_path=str(tmp_path))
    write(0.871, 1_000_000_000_000_000_000)
    assert "87.1% of images" in presentation.set_coverage_text(version)
    write(0.912, 1_000_000_001_000_000_000)  # same size, later mtime
    text = presentation.set_coverage_text(version)
    assert "91.2% of images" in text
    assert "(100 images the model never trained on, including the 7 it could not assess)" in text
