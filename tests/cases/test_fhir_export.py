"""The FHIR export of a case: a valid R4B Bundle whose references all resolve inside it, pseudonymous,
with the lesions' sites coded, the AI scores as Observations of their model version's Device, and
the dermatologist's review as a DiagnosticReport."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from fhir.resources.R4B.bundle import Bundle

from cases.fhir_export import FHIR_JSON, SITE_SNOMED, SNOMED, case_bundle, site_concept, Urls
from cases.models import Case, Lesion, LesionImage, Prediction, Review
from cases.scoring import CANNOT_ASSESS
from classifier.models import ModelVersion
from tests.support.case_helpers import make_image, make_user

pytestmark = pytest.mark.django_db

BASE = "https://secondlook.example.org"
LOCAL = f"{BASE}/fhir/CodeSystem/secondlook"


def _done(image, version, *, melanoma, malignancy, flagged, reasons, assessable=True, notes=(), minutes_ago=10):
    return Prediction.objects.create(
        image=image, model_version=version, status="done", melanoma_probability=melanoma,
        malignancy_score=malignancy, flagged=flagged, flag_reasons=list(reasons), assessable=assessable,
        assessment_notes=list(notes), finished_at=timezone.now() - timedelta(minutes=minutes_ago))


@pytest.fixture
def scene(world, model_version):
    """Case A: a flagged image and a re-score still pending on the posterior-torso lesion, an image
    the model could not assess on a lesion of unknown site, and a review of the first lesion."""
    old_version = ModelVersion.objects.create(version="unit-test-v0", status=ModelVersion.Status.RETIRED,
                                              melanoma_threshold=0.4, malignancy_threshold=0.5)
    lesion = world.lesion_a
    lesion.description = "6 mm asymmetric macule, two colours"
    lesion.save()
    unknown = Lesion.objects.create(case=world.case_a, anatomic_site="unknown")

    flagged_image = make_image(world, sha="1" * 64, lesion=lesion)
    # a client file name may carry the patient's name: it must not be exported
    LesionImage.objects.filter(pk=flagged_image.pk).update(original_name="Jane Roe back mole.jpg")
    flagged = _done(flagged_image, model_version, melanoma=0.72, malignancy=0.81, flagged=True,
                    reasons=["melanoma probability 0.72 \u2265 threshold 0.50",
                             "malignancy score 0.81 \u2265 threshold 0.60"])

    rescored_image = make_image(world, sha="2" * 64, lesion=lesion)
    older = _done(rescored_image, old_version, melanoma=0.1, malignancy=0.2, flagged=False, reasons=[])
    pending = Prediction.objects.create(image=rescored_image, model_version=model_version)
    Prediction.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(hours=1))

    odd_image = make_image(world, sha="3" * 64, lesion=unknown)
    cannot = _done(odd_image, model_version, melanoma=0.9, malignancy=0.95, flagged=True, assessable=False,
                   notes=["image too blurred"], reasons=[f"{CANNOT_ASSESS}: image too blurred"])

    reviewer = make_user("rev_k9", role="dermatologist")
    reviewer.first_name, reviewer.last_name, reviewer.email = "Dana", "Okafor", "rev_k9@example.org"
    reviewer.save()
    review = Review.objects.create(lesion=lesion, reviewer=reviewer, agreement="disagree", final_diagnosis="nevus",
                                   management="follow_up", notes="Regular network; recheck in 3 months.")
    return {"case": world.case_a, "lesion": lesion, "unknown": unknown, "flagged": flagged, "pending": pending,
            "older": older, "cannot": cannot, "review": review, "reviewer": reviewer,
            "images": (flagged_image, rescored_image, odd_image)}


def _export(scene, **kwargs) -> dict:
    return case_bundle(scene["case"], base_url=BASE + "/", **kwargs)


def _resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def _by_url(bundle: dict) -> dict[str, dict]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def _references(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for value in node.values() for r in _references(value)]
    if isinstance(node, list):
        return [r for value in node for r in _references(value)]
    return []


def _media_of(bundle: dict, image) -> tuple[str, dict]:
    urls = [(url, r) for url, r in _by_url(bundle).items()
            if r["resourceType"] == "Media" and r["identifier"][0]["value"] == str(image.pk)]
    assert len(urls) == 1
    return urls[0]


def _observations_from(bundle: dict, media_url: str) -> dict[str, dict]:
    """The Observations derived from one Media, by their local code."""
    return {o["code"]["coding"][0]["code"]: o for o in _resources(bundle, "Observation")
            if media_url in [d["reference"] for d in o["derivedFrom"]]}


def test_the_bundle_is_valid_r4b_and_round_trips(scene):
    bundle = _export(scene)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    parsed = Bundle.model_validate(bundle)
    assert parsed.model_dump(mode="json") == bundle
    assert Bundle.model_validate_json(json.dumps(bundle)).model_dump(mode="json") == bundle
    assert FHIR_JSON == "application/fhir+json"
    kinds = sorted({r["resourceType"] for r in (e["resource"] for e in bundle["entry"])})
    assert kinds == ["BodyStructure", "Device", "DiagnosticReport", "Media", "Observation", "Organization",
                     "Patient", "Practitioner", "ServiceRequest"]


def test_every_reference_resolves_to_an_entry(scene):
    bundle = _export(scene)
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(full_urls) == len(set(full_urls))
    for entry in bundle["entry"]:
        assert entry["fullUrl"].startswith("urn:uuid:")
        assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
    references = _references(bundle["entry"])
    assert references and set(references) <= set(full_urls)


def test_ids_are_stable_and_each_export_is_its_own_bundle(scene):
    now = timezone.now()
    first, again = _export(scene, now=now), _export(scene, now=now)
    later = _export(scene, now=now + timedelta(seconds=1))
    assert first == again
    assert [e["fullUrl"] for e in later["entry"]] == [e["fullUrl"] for e in first["entry"]]
    assert later["identifier"]["value"] != first["identifier"]["value"]
    other_site = case_bundle(scene["case"], base_url="https://other.example.org", now=now)
    assert not {e["fullUrl"] for e in other_site["entry"]} & {e["fullUrl"] for e in first["entry"]}


def test_the_patient_is_pseudonymous(scene, world):
    bundle = _export(scene)
    (patient,) = _resources(bundle, "Patient")
    assert "name" not in patient and "telecom" not in patient and "address" not in patient
    assert patient["identifier"] == [{"system": f"{BASE}/fhir/identifier/clinic/{world.clinic_a.pk}/patient",
                                      "value": "PA-1"}]
    assert patient["birthDate"] == "1970" and patient["gender"] == "female"
    (organization,) = _resources(bundle, "Organization")
    assert organization["name"] == "Clinic A"
    text = json.dumps(bundle)
    for secret in ("clin_a", "Clin_A", "rev_k9", "Jane Roe"):
        assert secret not in text


def test_the_case_is_a_service_request_with_the_clinical_question(scene):
    bundle = _export(scene)
    (request,) = _resources(bundle, "ServiceRequest")
    assert request["reasonCode"] == [{"text": "Changing mole?"}]
    assert request["status"] == "active" and request["intent"] == "order"


def test_lesion_sites_are_coded(scene):
    bundle = _export(scene)
    structures = {int(s["identifier"][0]["value"]): s for s in _resources(bundle, "BodyStructure")}
    back = structures[scene["lesion"].pk]
    codings = {c["system"]: c["code"] for c in back["location"]["coding"]}
    assert codings == {SNOMED: "66643007", f"{BASE}/fhir/CodeSystem/isic-anatomic-site": "posterior torso"}
    assert back["description"] == "6 mm asymmetric macule, two colours"
    assert structures[scene["unknown"].pk]["location"] == {"text": "Unknown site"}


@pytest.mark.parametrize("site", [s for s in Lesion.Site.values if s != "unknown"])
def test_every_known_site_has_its_isic_code_and_snomed_where_mapped(site):
    concept = site_concept(site, Urls(BASE))
    systems = [c["system"] for c in concept["coding"]]
    assert systems[0] == f"{BASE}/fhir/CodeSystem/isic-anatomic-site" and concept["coding"][0]["code"] == site
    assert (SNOMED in systems) == (SITE_SNOMED[site] is not None)


def test_images_are_media_with_their_file_url(scene):
    bundle = _export(scene)
    image = scene["images"][0]
    _, media = _media_of(bundle, image)
    assert media["status"] == "completed"
    assert media["content"]["url"] == f"{BASE}/api/v1/images/{image.pk}/file/"  # the API's, not the page's
    assert media["content"]["contentType"] == "image/png"
    assert (media["width"], media["height"]) == (96, 64)
    assert media["createdDateTime"] == media["issued"] and media["issued"].endswith(("Z", "+00:00"))
    assert bundle["timestamp"].endswith(("Z", "+00:00"))


def test_scores_are_observations_of_the_model_versions_device(scene, model_version):
    bundle = _export(scene)
    by_url = _by_url(bundle)
    media_url, _ = _media_of(bundle, scene["images"][0])
    found = _observations_from(bundle, media_url)
    assert set(found) == {"melanoma-probability", "malignancy-score", "ai-flag"}
    prediction = scene["flagged"]
    assert found["melanoma-probability"]["valueQuantity"]["value"] == prediction.melanoma_probability
    assert found["malignancy-score"]["valueQuantity"]["value"] == prediction.malignancy_score
    assert found["melanoma-probability"]["referenceRange"][0]["high"]["value"] == 0.5
    assert found["malignancy-score"]["referenceRange"][0]["high"]["value"] == 0.6
    assert found["ai-flag"]["valueBoolean"] is True
    assert [n["text"] for n in found["ai-flag"]["note"]] == prediction.flag_reasons
    for observation in found.values():
        assert observation["status"] == "final"
        assert observation["code"]["coding"][0]["system"] == LOCAL
        device = by_url[observation["device"]["reference"]]
        assert device["resourceType"] == "Device"
        assert device["version"] == [{"value": model_version.version}]
        assert by_url[observation["focus"][0]["reference"]]["resourceType"] == "BodyStructure"
        assert by_url[observation["subject"]["reference"]]["resourceType"] == "Patient"


def test_an_image_waiting_for_a_re_score_exports_the_result_in_force(scene):
    """As the pages and the PDF show it: a re-score by another version does not blank the finished
    score before it; the Media says a re-score is waiting."""
    bundle = _export(scene)
    media_url, media = _media_of(bundle, scene["images"][1])
    found = _observations_from(bundle, media_url)
    assert found["melanoma-probability"]["valueQuantity"]["value"] == 0.1
    assert "re-scoring with model version unit-test-v1: waiting" in media["note"][0]["text"]
    assert sorted(d["version"][0]["value"] for d in _resources(bundle, "Device")) == ["unit-test-v0", "unit-test-v1"]


def test_an_image_whose_only_prediction_is_pending_has_no_observation(scene):
    Prediction.objects.filter(image=scene["images"][1], model_version__version="unit-test-v0").delete()
    bundle = _export(scene)
    media_url, media = _media_of(bundle, scene["images"][1])
    assert _observations_from(bundle, media_url) == {}
    assert "waiting to be scored" in media["note"][0]["text"]
    assert [d["version"][0]["value"] for d in _resources(bundle, "Device")] == ["unit-test-v1"]


def test_not_assessable_scores_are_absent_with_the_reason(scene):
    bundle = _export(scene)
    media_url, _ = _media_of(bundle, scene["images"][2])
    found = _observations_from(bundle, media_url)
    for code in ("melanoma-probability", "malignancy-score"):
        assert "valueQuantity" not in found[code]
        assert found[code]["dataAbsentReason"]["text"] == CANNOT_ASSESS
        assert f"{CANNOT_ASSESS}: image too blurred" in found[code]["note"][0]["text"]
    assert found["ai-flag"]["valueBoolean"] is True
    assert [n["text"] for n in found["ai-flag"]["note"]] == [f"{CANNOT_ASSESS}: image too blurred"]
    assert found["ai-flag"]["bodySite"] == {"text": "Unknown site"}


def test_the_review_is_a_diagnostic_report(scene):
    bundle = _export(scene)
    by_url = _by_url(bundle)
    (report,) = _resources(bundle, "DiagnosticReport")
    assert report["status"] == "final"
    assert report["code"]["text"] == "Dermatologist review of dermoscopy"
    assert report["performer"][0]["display"] == "Dana Okafor"
    practitioner = by_url[report["performer"][0]["reference"]]
    assert practitioner["name"] == [{"text": "Dana Okafor"}]
    assert "Final diagnosis: Nevus" in report["conclusion"] and "Management: Follow-up" in report["conclusion"]
    assert "recheck in 3 months" in report["conclusion"]
    assert report["conclusionCode"][0]["coding"][0]["code"] == "nevus"
    assert report["issued"].endswith(("Z", "+00:00"))
    flagged_media, _ = _media_of(bundle, scene["images"][0])
    pending_media, _ = _media_of(bundle, scene["images"][1])
    assert [m["link"]["reference"] for m in report["media"]] == [flagged_media, pending_media]
    results = {by_url[r["reference"]]["code"]["coding"][0]["code"] for r in report["result"]}
    assert results == {"melanoma-probability", "malignancy-score", "ai-flag"}
    # the waiting re-score's image contributes the result in force (of the version before it)
    assert {by_url[r["reference"]]["derivedFrom"][0]["reference"] for r in report["result"]} == {flagged_media,
                                                                                                 pending_media}


def test_a_melanoma_diagnosis_is_coded_in_snomed(scene):
    """As the disorder (372130007), not the morphologic abnormality 372244006."""
    Review.objects.filter(pk=scene["review"].pk).update(final_diagnosis="melanoma")
    (report,) = _resources(_export(scene), "DiagnosticReport")
    snomed = [c for c in report["conclusionCode"][0]["coding"] if c["system"] == SNOMED]
    assert snomed == [{"system": SNOMED, "code": "372130007", "display": "Malignant melanoma of skin"}]


def test_an_image_added_after_the_review_is_not_part_of_it(scene, world, model_version):
    late = make_image(world, sha="4" * 64, lesion=scene["lesion"])
    LesionImage.objects.filter(pk=late.pk).update(uploaded_at=scene["review"].created_at + timedelta(minutes=1))
    _done(late, model_version, melanoma=0.3, malignancy=0.3, flagged=False, reasons=[], minutes_ago=-2)
    bundle = _export(scene)
    late_media, _ = _media_of(bundle, late)
    assert set(_observations_from(bundle, late_media)) == {"melanoma-probability", "malignancy-score", "ai-flag"}
    (report,) = _resources(bundle, "DiagnosticReport")
    assert late_media not in [m["link"]["reference"] for m in report["media"]]
    assert late_media not in {_by_url(bundle)[r["reference"]]["derivedFrom"][0]["reference"] for r in report["result"]}


def test_an_image_taken_on_a_known_date_says_so(scene):
    image = scene["images"][0]
    LesionImage.objects.filter(pk=image.pk).update(acquired_on="2026-11-30")
    _, media = _media_of(_export(scene), image)
    assert media["createdDateTime"] == "2026-11-30"
    assert media["issued"].endswith(("Z", "+00:00"))


def test_a_histopathology_result_is_a_pathology_report_and_a_closed_case_exports(scene, world):
    from fhir.resources.R4B.bundle import Bundle

    from cases.outcomes import record_outcome

    first = record_outcome(user=world.clin_a, lesion=scene["lesion"], diagnosis="melanoma",
                           diagnosis_date=timezone.localdate(), report_reference="PATH-77")
    record_outcome(user=world.clin_a, lesion=scene["lesion"], diagnosis="nevus", diagnosis_date=timezone.localdate(),
                   report_reference="PATH-77b", supersedes=first, reason="lab amended the report")
    Case.objects.filter(pk=world.case_a.pk).update(status="closed", closed_at=timezone.now())
    bundle = _export(scene)
    Bundle.model_validate(bundle)
    pathology = [r for r in _resources(bundle, "DiagnosticReport")
                 if r["code"]["text"].startswith("Histopathology")]
    assert len(pathology) == 1  # only the current result
    assert pathology[0]["identifier"][0]["value"] == "PATH-77b" and pathology[0]["status"] == "corrected"
    assert "lab amended the report" in pathology[0]["conclusion"]
    assert _resources(bundle, "ServiceRequest")[0]["status"] == "completed"


def test_a_histopathology_report_names_and_references_its_lesion(scene, world):
    """R4 DiagnosticReport has no focus: its specimen's collection.bodySite carries the lesion's
    coded site and, by the core bodySite extension, the lesion's BodyStructure."""
    from cases.outcomes import record_outcome

    other = Lesion.objects.create(case=world.case_a, anatomic_site="upper extremity")
    record_outcome(user=world.clin_a, lesion=other, diagnosis="melanoma", diagnosis_date=timezone.localdate(),
                   report_reference="PATH-9")
    bundle = _export(scene)
    by_url = _by_url(bundle)
    (report,) = [r for r in _resources(bundle, "DiagnosticReport") if r["code"]["text"].startswith("Histopathology")]
    label = f"Lesion {other.tracked.label}"
    assert label != f"Lesion {scene['lesion'].tracked.label}"
    assert report["conclusion"].startswith(f"{label}: histopathological diagnosis: Melanoma (report PATH-9, ")
    (link,) = report["specimen"]
    sample = by_url[link["reference"]]
    assert sample["resourceType"] == "Specimen" and sample["subject"] == report["subject"]
    site = sample["collection"]["bodySite"]
    (extension,) = site.pop("extension")
    assert extension["url"] == "http://hl7.org/fhir/StructureDefinition/bodySite"
    body = by_url[extension["valueReference"]["reference"]]
    assert body["resourceType"] == "BodyStructure" and body["identifier"][0]["value"] == str(other.pk)
    assert extension["valueReference"]["display"] == label
    assert site == body["location"] == site_concept("upper extremity", Urls(BASE))
    snomed = [c["code"] for c in report["conclusionCode"][0]["coding"] if c["system"] == SNOMED]
    assert snomed == ["372130007"]


def test_an_amended_review_is_exported_once_as_amended(scene, world):
    original = Review.objects.filter(lesion=world.lesion_a).first()
    Review.objects.create(lesion=world.lesion_a, reviewer=world.derm, agreement="disagree", final_diagnosis="melanoma",
                          management="excision", amends=original, amendment_reason="second look at the border")
    reports = [r for r in _resources(_export(scene), "DiagnosticReport")
               if r["code"]["text"] == "Dermatologist review of dermoscopy"]
    assert len(reports) == 1  # the superseded one is not sent as a second "final" report
    (report,) = reports
    assert report["status"] == "amended" and "Final diagnosis: Melanoma" in report["conclusion"]
    assert "Amends the review of" in report["conclusion"] and "second look at the border" in report["conclusion"]
