"""What the result page and the report say a result means: the diagnoses the model cannot rule out
never leave out a class whose flag threshold was reached, their coverage is the measured one, a
"Not flagged" result says it rules nothing out, the reliability notes cover skin type and the
malignancy score, figures read as the scores do, and "sent to a dermatologist" is said only when
the lesion was."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.utils import timezone

from cases import presentation, scoring, statements
from cases.models import Lesion, Patient, Prediction, Review
from cases.report import build_case_report
from cases.report_model import external_text, reading_section
from classifier.models import ModelVersion
from tests.cases.test_case_report import pdf_text
from tests.support.case_helpers import make_image

pytestmark = pytest.mark.django_db

SHIPPED = Path(__file__).resolve().parents[2] / "classifier" / "shipped_model"
SHIPPED_CARD = json.loads((SHIPPED / "model_card.json").read_text())
SHIPPED_METRICS = json.loads((SHIPPED / "metrics.json").read_text())
ADDED = "(added: above the flag threshold)"


def version_like_shipped(version: ModelVersion) -> ModelVersion:
    """The fixture's version with the shipped model's thresholds, card and figures."""
    version.melanoma_threshold = SHIPPED_METRICS["operating_points"]["melanoma"]["threshold"]
    version.malignancy_threshold = SHIPPED_METRICS["operating_points"]["malignancy"]["threshold"]
    version.artifact_path = str(SHIPPED)
    version.metrics = SHIPPED_METRICS
    version.save()
    return version


def flagged_for_melanoma(world, version, **fields) -> Prediction:
    """Melanoma 12 %: above the 9.2 % threshold, below the 18.8 % floor of the conformal sets."""
    values = dict(status="done", melanoma_probability=0.12, malignancy_score=0.15, flagged=True,
                  flag_reasons=["melanoma probability 12.0% \u2265 threshold 9.2%"], prediction_set=["nevus"],
                  class_probabilities={"nevus": 0.8, "melanoma": 0.12, "basal cell carcinoma": 0.03},
                  finished_at=timezone.now()) | fields
    return Prediction.objects.create(image=make_image(world), model_version=version, **values)


# --- Diagnoses the model cannot rule out ------------------------------------------------------------

def _prediction(mel, malig, stored, probabilities, mel_t=0.09, malig_t=0.18):
    version = SimpleNamespace(melanoma_threshold=mel_t, malignancy_threshold=malig_t)
    return SimpleNamespace(prediction_set=stored, melanoma_probability=mel, malignancy_score=malig,
                           class_probabilities=probabilities, model_version=version)


@pytest.mark.parametrize("mel, malig, stored, probabilities, shown", [
    # melanoma threshold reached, melanoma under the floor: melanoma added
    (0.12, 0.15, ["nevus"], {"nevus": 0.8, "melanoma": 0.12}, ["Nevus", f"Melanoma {ADDED}"]),
    # malignancy threshold reached: the most probable malignant class added
    (0.05, 0.2, ["nevus"], {"nevus": 0.75, "melanoma": 0.05, "basal cell carcinoma": 0.1,
                            "actinic keratosis": 0.05}, ["Nevus", f"Basal cell carcinoma {ADDED}"]),
    # both reached, melanoma the most probable malignant class: added once
    (0.15, 0.2, ["nevus"], {"nevus": 0.8, "melanoma": 0.15, "actinic keratosis": 0.05},
     ["Nevus", f"Melanoma {ADDED}"]),
    # already in the set, or no threshold reached: the stored set as it is
    (0.3, 0.4, ["melanoma", "nevus"], {"melanoma": 0.3, "nevus": 0.6}, ["Melanoma", "Nevus"]),
    (0.05, 0.1, ["nevus"], {"nevus": 0.9, "melanoma": 0.05}, ["Nevus"]),
    (0.5, 0.5, None, {"melanoma": 0.5}, []),
])
def test_a_class_whose_threshold_was_reached_is_never_left_out(mel, malig, stored, probabilities, shown):
    prediction = _prediction(mel, malig, stored, probabilities)
    assert [str(m) for m in presentation.displayed_set(prediction)] == shown
    assert prediction.prediction_set == stored  # the stored set is not changed


def test_a_threshold_left_empty_adds_nothing():
    prediction = _prediction(0.5, 0.5, ["nevus"], {"nevus": 0.5, "melanoma": 0.5}, mel_t=None, malig_t=None)
    assert [str(m) for m in presentation.displayed_set(prediction)] == ["Nevus"]


def test_the_coverage_quoted_is_the_one_measured_on_held_out_test_images(tmp_path):
    test = SHIPPED_CARD["assessment"]["measured"]["test"]
    measured = test["conformal"]
    assert measured["images"] == test["images"]  # every test image, those it could not assess included
    shipped = presentation.set_coverage_text(ModelVersion(artifact_path=str(SHIPPED)))
    assert shipped == (f"on held-out test images ({measured['images']} images the model never trained on, "
                       f"including the {test['not_assessable']} it could not assess), "
                       f"the true diagnosis was in the set for {measured['coverage']:.1%} of images.")
    (tmp_path / "model_card.json").write_text(json.dumps({"assessment": {"conformal": {"coverage_target": 0.9}}}))
    unmeasured = presentation.set_coverage_text(ModelVersion(artifact_path=str(tmp_path)))
    assert "on validation images" in unmeasured and "90%" in unmeasured and "no coverage on held-out" in unmeasured


def test_page_and_report_add_melanoma_to_the_set_of_an_image_flagged_for_it(client, world, model_version):
    version = version_like_shipped(model_version)
    prediction = flagged_for_melanoma(world, version)
    coverage = f"{SHIPPED_CARD['assessment']['measured']['test']['conformal']['coverage']:.1%}"
    client.force_login(world.clin_a)
    page = client.get(f"/images/{prediction.image_id}/").content.decode()
    block = page[page.index("Diagnoses the model cannot rule out"):page.index("Class probabilities")]
    assert f"Melanoma {ADDED}" in block and "Nevus" in block
    assert "on held-out test images" in block and coverage in block and "90 %" not in block
    text = pdf_text(build_case_report(world.case_a, generated_by=world.clin_a))
    assert f"Diagnoses the model cannot rule out: Nevus, Melanoma {ADDED}" in text
    assert f"the true diagnosis was in the set for {coverage} of images" in text
    assert "one in five" not in text  # no stored figure measures the melanoma rate at a score


def test_reading_section_quotes_each_versions_measured_coverage():
    from reportlab.platypus import Paragraph

    shipped = ModelVersion(version="v-shipped", artifact_path=str(SHIPPED))
    text = " ".join(p.getPlainText() for p in reading_section([shipped]) if isinstance(p, Paragraph))
    assert "on held-out test images" in text and "90 %" not in text and "one in five" not in text


# --- "Not flagged" rules nothing out ------------------------------------------------------------------

def test_not_flagged_says_it_does_not_rule_out_malignancy(client, world, model_version):
    prediction = Prediction.objects.create(image=make_image(world), model_version=model_version, status="done",
                                           melanoma_probability=0.02, malignancy_score=0.03, flagged=False,
                                           class_probabilities={"nevus": 0.95}, finished_at=timezone.now())
    client.force_login(world.clin_a)
    detail = client.get(f"/images/{prediction.image_id}/").content.decode()
    not_flagged = detail[detail.index('class="not-flagged"'):]
    assert statements.BELOW_THRESHOLD in not_flagged[:not_flagged.index("</p>")]
    case_page = client.get(f"/cases/{world.case_a.pk}/").content.decode()
    assert "Not flagged" in case_page and statements.BELOW_THRESHOLD in case_page
    text = pdf_text(build_case_report(world.case_a, generated_by=world.clin_a))
    assert f"Not flagged at the model's operating thresholds. {statements.BELOW_THRESHOLD}" in text


# --- Reliability: skin type, and the malignancy score by age ---------------------------------------

@pytest.mark.parametrize("skin, caveat", [(5, True), (6, True), (4, False), (None, False)])
def test_a_dark_skin_type_gets_a_caveat(skin, caveat):
    text = presentation.skin_type_caveat(skin)
    assert (text is not None) == caveat
    if caveat:
        assert f"Fitzpatrick {Patient.Fitzpatrick(skin).label})" in text and "unknown" in text


def test_the_age_caveat_covers_the_malignancy_score_with_the_same_rule():
    rows = SHIPPED_METRICS["subgroups"]["age"]
    old = presentation.age_caveat(SHIPPED_METRICS, 75)
    overall = SHIPPED_METRICS["malignancy_auc"]
    assert old.startswith("For patients aged 70+, this model's held-out melanoma AUC")
    assert (f"For patients aged 70+, this model's held-out malignancy AUC is {rows['70+']['malignancy_auc']:.2f} "
            f"(overall {overall:.2f})") in old
    assert f"specificity {rows['70+']['malignancy_specificity']:.2f}" in old
    young = presentation.age_caveat(SHIPPED_METRICS, 22)
    assert "too few melanomas in patients aged <30" in young
    assert f"too few malignant lesions in patients aged <30 ({rows['<30']['n_malignancy_positive']})" in young
    assert presentation.age_caveat(SHIPPED_METRICS, 55) is None  # 50-69: as good as overall on both


def test_page_and_report_show_the_skin_type_caveat(client, world, model_version):
    Patient.objects.filter(pk=world.patient_a.pk).update(fitzpatrick_type=6)
    prediction = flagged_for_melanoma(world, model_version)
    client.force_login(world.clin_a)
    page = client.get(f"/images/{prediction.image_id}/").content.decode()
    assert "<strong>Reliability:</strong> This patient&#x27;s skin type (Fitzpatrick VI)" in page
    world.case_a.refresh_from_db()
    text = pdf_text(build_case_report(world.case_a, generated_by=world.clin_a))
    assert "Reliability: This patient's skin type (Fitzpatrick VI)" in text


# --- Figures read as the scores do ------------------------------------------------------------------

def test_flag_reasons_use_the_percent_format_of_the_page():
    version = SimpleNamespace(melanoma_threshold=0.0924, malignancy_threshold=0.1844)
    result = SimpleNamespace(melanoma_probability=0.0951, malignancy_score=0.1845, flag_reasons=[], flagged=False)
    flagged, reasons = scoring._flags(result, version)
    assert flagged
    # as the page: score and threshold at one precision (cases_extras.percent_pair)
    assert reasons == ["melanoma probability 9.5% \u2265 threshold 9.2%",
                       "malignancy score 18.45% \u2265 threshold 18.44%"]


def test_history_reads_scores_against_their_threshold_and_no_flag_before_a_result(client, world, model_version):
    image = make_image(world)
    Prediction.objects.create(image=image, model_version=model_version, status="done", melanoma_probability=0.4996,
                              malignancy_score=0.1, flagged=False, class_probabilities={"nevus": 0.5},
                              finished_at=timezone.now())
    newer = ModelVersion.objects.create(version="unit-test-v2", artifact_path="/x", melanoma_threshold=0.5,
                                        malignancy_threshold=0.6)
    Prediction.objects.create(image=image, model_version=newer, status="pending")
    client.force_login(world.clin_a)
    page = client.get(f"/images/{image.pk}/").content.decode()
    history = page[page.index('id="history"'):]
    rows = history.split("<tr>")[2:]
    pending = next(r for r in rows if "unit-test-v2" in r)
    done = next(r for r in rows if "unit-test-v1" in r)
    assert "49.96%" in done and "<td>No</td>" in done
    assert "<td>No</td>" not in pending and pending.count("<td>—</td>") == 4  # scores, flag, time


# --- Could not assess: the unfamiliarity score, and whether the lesion was sent -----------------------

def unassessable(world, version) -> Prediction:
    return Prediction.objects.create(
        image=make_image(world), model_version=version, status="done", melanoma_probability=0.5,
        malignancy_score=0.5, flagged=True, assessable=False, assessment_notes=["unlike the training images"],
        assessment={"ood": {"score": 3.61, "threshold": 3.3924, "unfamiliar": True}}, finished_at=timezone.now())


def test_the_unfamiliarity_score_is_shown_with_two_decimals(client, world, model_version):
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True)
    prediction = unassessable(world, model_version)
    client.force_login(world.clin_a)
    page = client.get(f"/images/{prediction.image_id}/").content.decode()
    assert "unfamiliarity score 3.61 (limit 3.39)" in page
    text = pdf_text(build_case_report(world.case_a, generated_by=world.clin_a))
    assert "Unfamiliarity score 3.61 (limit 3.39)" in text


def test_sent_to_a_dermatologist_only_when_the_lesion_awaits_review(client, world, model_version):
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True)
    prediction = unassessable(world, model_version)
    client.force_login(world.clin_a)
    sent = "The lesion has been sent to a dermatologist for review."
    assert sent in client.get(f"/images/{prediction.image_id}/").content.decode()
    assert sent in client.get(f"/cases/{world.case_a.pk}/").content.decode()
    assert sent in pdf_text(build_case_report(world.case_a, generated_by=world.clin_a))

    # a re-score of an image already reviewed does not go back to the queue (cases.scoring)
    review = Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree",
                                   final_diagnosis="nevus", management="reassure")
    Lesion.objects.filter(pk=world.lesion_a.pk).update(awaiting_review=False)
    reviewed = f"The lesion was already reviewed by a dermatologist on {timezone.localtime(review.created_at):%Y-%m-%d}."
    detail = client.get(f"/images/{prediction.image_id}/").content.decode()
    case_page = client.get(f"/cases/{world.case_a.pk}/").content.decode()
    text = pdf_text(build_case_report(world.case_a, generated_by=world.clin_a))
    for shown in (detail, case_page, text):
        assert reviewed in shown and sent not in shown and "Sent for dermatologist review" not in shown


# --- The known limits say what was measured ---------------------------------------------------------

def test_the_known_limits_state_the_shipped_models_ph2_and_isic_figures():
    ph2 = SHIPPED_METRICS["external"]["ph2"]
    text = " ".join(statements.MODEL_LIMITS)
    sent = ph2["sent_to_review"]
    assert f"could not assess {ph2['not_assessable']} ({ph2['not_assessable'] / ph2['n_images']:.1%})".replace(
        "%", " %") in text
    assert f"{ph2['not_assessable_by_diagnosis']['melanoma']} of the {ph2['n_melanoma']} melanomas" in text
    assert f"{1 - sent['specificity']:.0%} of the nevi were sent".replace("%", " %") in text
    assert f"specificity {sent['specificity']:.2f}" in text
    assert f"{sent['sensitivity']:.0%} of the melanomas".replace("%", " %") in text
    isic = SHIPPED_METRICS["subgroups"]["source"]["isic-9class"]
    assert f"melanoma specificity is only {isic['melanoma_specificity']:.2f}" in text
    assert statements.BELOW_THRESHOLD in statements.MODEL_LIMITS
    assert "flagged about half of the nevi" not in text


def test_the_report_gives_ph2_sent_to_review_and_says_what_the_auc_covers():
    ph2 = SHIPPED_METRICS["external"]["ph2"]
    text = external_text("PH2", ph2)
    sent = ph2["sent_to_review"]
    assert (f"could not assess {ph2['not_assessable']} of {ph2['n_images']} images "
            f"({ph2['not_assessable_by_diagnosis']['melanoma']} of the {ph2['n_melanoma']} melanomas among them)") in text
    assert (f"over all {ph2['n_images']} images, including the {ph2['not_assessable']} whose scores the app "
            "withholds") in text
    assert (f"(flagged, or could not assess): sensitivity {sent['sensitivity']:.3f}" in text
            and f"specificity {sent['specificity']:.3f}" in text)
