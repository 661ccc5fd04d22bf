"""FHIR export: what a receiving system relies on across exports — an amended review or a corrected
histopathology result is the same report, amended or corrected in place (the same resource id, so a
receiver replaces the earlier version instead of keeping it "final" beside it), and a laboratory's
report id is an identifier only within its clinic."""
from __future__ import annotations

import pytest
from django.utils import timezone

from cases.fhir_export import case_bundle
from cases.models import Review
from cases.outcomes import record_outcome

pytestmark = pytest.mark.django_db

BASE = "https://secondlook.example.org"
DERM_REVIEW = "Dermatologist review of dermoscopy"


def _reports(case, kind: str) -> list[tuple[str, dict]]:
    bundle = case_bundle(case, base_url=BASE)
    return [(e["fullUrl"], e["resource"]) for e in bundle["entry"]
            if e["resource"]["resourceType"] == "DiagnosticReport" and e["resource"]["code"]["text"].startswith(kind)]


def _by_url(case) -> dict[str, dict]:
    return {e["fullUrl"]: e["resource"] for e in case_bundle(case, base_url=BASE)["entry"]}


def test_an_amended_review_amends_the_report_exported_before(world):
    original = Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="agree",
                                     final_diagnosis="nevus", management="reassure")
    ((before_url, before),) = _reports(world.case_a, DERM_REVIEW)
    assert before["status"] == "final"
    amendment = Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="disagree",
                                      final_diagnosis="melanoma", management="excision", amends=original,
                                      amendment_reason="second look at the border")
    ((after_url, after),) = _reports(world.case_a, DERM_REVIEW)
    assert after["status"] == "amended" and "Final diagnosis: Melanoma" in after["conclusion"]
    assert (after_url, after["id"]) == (before_url, before["id"])  # the same report, amended
    assert [i["value"] for i in after["identifier"]] == [str(original.pk), str(amendment.pk)]

    again = Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="disagree",
                                  final_diagnosis="basal cell carcinoma", management="excision",
                                  amends=amendment, amendment_reason="histology of the margin")
    ((third_url, third),) = _reports(world.case_a, DERM_REVIEW)
    assert third_url == before_url and third["status"] == "amended"
    assert [i["value"] for i in third["identifier"]] == [str(original.pk), str(again.pk)]


def test_a_corrected_histopathology_result_corrects_the_report_exported_before(world):
    first = record_outcome(user=world.clin_a, lesion=world.lesion_a, diagnosis="melanoma",
                           diagnosis_date=timezone.localdate(), report_reference="PATH-77")
    ((before_url, before),) = _reports(world.case_a, "Histopathology")
    specimen_before = before["specimen"][0]["reference"]
    record_outcome(user=world.clin_a, lesion=world.lesion_a, diagnosis="nevus", diagnosis_date=timezone.localdate(),
                   report_reference="PATH-77b", supersedes=first, reason="lab amended the report")
    ((after_url, after),) = _reports(world.case_a, "Histopathology")
    assert after["status"] == "corrected" and after["identifier"][0]["value"] == "PATH-77b"
    assert (after_url, after["id"]) == (before_url, before["id"])  # the same report, corrected
    assert after["specimen"][0]["reference"] == specimen_before  # on the same tissue
    assert _by_url(world.case_a)[specimen_before]["resourceType"] == "Specimen"


def test_a_lab_report_id_is_scoped_to_its_clinic(world):
    """Two clinics' laboratories may number their reports alike: the same (system, value) would
    make a receiver that matches on identifier merge two patients' reports."""
    for clinician, lesion in ((world.clin_a, world.lesion_a), (world.clin_b, world.lesion_b)):
        record_outcome(user=clinician, lesion=lesion, diagnosis="melanoma", diagnosis_date=timezone.localdate(),
                       report_reference="H-1")
    ((_, report_a),) = _reports(world.case_a, "Histopathology")
    ((_, report_b),) = _reports(world.case_b, "Histopathology")
    assert report_a["identifier"][0]["value"] == report_b["identifier"][0]["value"] == "H-1"
    assert report_a["identifier"] != report_b["identifier"]
    assert report_a["identifier"][0]["system"] == f"{BASE}/fhir/identifier/clinic/{world.clinic_a.pk}/histopathology-report"
