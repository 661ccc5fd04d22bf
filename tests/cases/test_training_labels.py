"""Confirmed cases as training records: only what the model reads (dermoscopic images with an
assessable finished score), labels resolved per tracked lesion over its visits, and what was left
out counted in the run's notes."""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.utils import timezone

from cases import training_labels
from cases.models import Case, Lesion, LesionImage, Prediction, Review
from cases.outcomes import record_outcome
from cases.training_labels import ReviewedRecords, reviewed_records
from classifier import retraining
from classifier.models import ModelVersion
from tests.support.case_helpers import make_image, score_image

pytestmark = pytest.mark.django_db


def review(world, lesion, diagnosis: str, reviewer=None, management: str = "follow_up") -> Review:
    """A review (made after the images it labels: it speaks only for those; not sending the lesion
    to the laboratory, which would hold it back until the result)."""
    return Review.objects.create(lesion=lesion, reviewer=reviewer or world.derm, agreement="agree",
                                 final_diagnosis=diagnosis, management=management)


def histopathology(world, lesion, diagnosis: str, reference: str = "HP-1", on: date | None = None):
    return record_outcome(user=world.clin_a, lesion=lesion, diagnosis=diagnosis,
                          diagnosis_date=on or timezone.localdate(), report_reference=reference)


def later_visit(world, days: int = 0) -> Lesion:
    """Clinic A's lesion seen again at another visit (the same tracked lesion)."""
    case = Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a, clinical_question="Again",
                               visit_date=timezone.localdate() - timedelta(days=days))
    return Lesion.objects.create(case=case, tracked=world.lesion_a.tracked, anatomic_site="posterior torso")


def scored_image(world, version, sha: str, lesion=None, **kwargs) -> LesionImage:
    image = make_image(world, sha=sha * 64, lesion=lesion)
    score_image(image, version, **kwargs)
    return image


def exported(records) -> set[int]:
    return {int(r.isic_id.removeprefix("REVIEW_")) for r in records}


def test_only_dermoscopic_images_with_an_assessable_finished_score_are_exported(world, model_version, tmp_path):
    kept = scored_image(world, model_version, "1")
    clinical = scored_image(world, model_version, "2")
    LesionImage.objects.filter(pk=clinical.pk).update(kind=LesionImage.Kind.CLINICAL)
    scored_image(world, model_version, "3", assessable=False)  # failed the quality or domain check
    scored_image(world, model_version, "4", status="pending")  # never finished
    make_image(world, sha="5" * 64)  # no score at all
    # a re-score by another version that is still running: the finished score stays in force
    rescored = scored_image(world, model_version, "6")
    newer = ModelVersion.objects.create(version="unit-test-v2", status="ready")
    score_image(rescored, newer, status="running")
    # a correction's re-score (with its reason) makes the older score stale until it finishes
    corrected = scored_image(world, model_version, "7")
    Prediction.objects.create(image=corrected, model_version=model_version, context_revision=1, status="pending",
                              reason="Site corrected")
    review(world, world.lesion_a, "melanoma")

    records = reviewed_records(tmp_path / "export")
    assert exported(records) == {kept.pk, rescored.pk}
    assert records.excluded == {training_labels.CLINICAL_PHOTO: 1, training_labels.NOT_ASSESSABLE: 1,
                                training_labels.NOT_SCORED: 3}
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == sorted(f"review-{i}.png" for i in (kept.pk, rescored.pk))


def test_a_histopathology_result_at_a_later_visit_labels_every_visit_of_the_lesion(world, model_version, tmp_path):
    """Reviewed "nevus" at the first visit, excised at the second as melanoma: both visits are melanoma."""
    first = later_visit(world, days=0)  # world.lesion_a is one visit; this is another of the same lesion
    Case.objects.filter(pk=first.case_id).update(visit_date=timezone.localdate() - timedelta(days=400))
    at_first = scored_image(world, model_version, "1", lesion=first)
    review(world, first, "nevus")
    at_excision = scored_image(world, model_version, "2")
    histopathology(world, world.lesion_a, "melanoma", reference="HP-42")

    records = {int(r.isic_id.removeprefix("REVIEW_")): r for r in reviewed_records(tmp_path)}
    assert set(records) == {at_first.pk, at_excision.pk}
    assert {r.allowed for r in records.values()} == {frozenset({"melanoma"})}
    assert records[at_excision.pk].dx_type.startswith("histopathology on") and "HP-42" in records[at_excision.pk].dx_type
    assert records[at_first.pk].dx_type.endswith(f"at the visit of {world.case_a.visit_date:%Y-%m-%d}")
    assert {r.lesion_id for r in records.values()} == {f"app-patient-{world.patient_a.pk}"}


def test_visits_reviewed_with_different_diagnoses_and_no_histopathology_drop_the_lesion(world, model_version,
                                                                                       tmp_path):
    second = later_visit(world, days=0)
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=timezone.localdate() - timedelta(days=200))
    scored_image(world, model_version, "1")
    scored_image(world, model_version, "2", lesion=second)
    review(world, world.lesion_a, "nevus")
    review(world, second, "melanoma")
    # another lesion, reviewed at one visit only: its label stays with the visit that was reviewed
    other = scored_image(world, model_version, "3", lesion=world.lesion_b)
    review(world, world.lesion_b, "dermatofibroma", reviewer=world.derm2)

    records = reviewed_records(tmp_path)
    assert exported(records) == {other.pk}
    assert records.excluded == {training_labels.DISAGREEING_REVIEWS: 1}

    review(world, second, "nevus", reviewer=world.derm2)  # the newest review of the visit now agrees
    assert len(reviewed_records(tmp_path)) == 3 and reviewed_records(tmp_path).excluded == {}


def test_visits_with_disagreeing_histopathology_drop_the_lesion(world, model_version, tmp_path):
    second = later_visit(world, days=0)
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=timezone.localdate() - timedelta(days=30))
    scored_image(world, model_version, "1")
    scored_image(world, model_version, "2", lesion=second)
    histopathology(world, world.lesion_a, "nevus", reference="HP-1")
    histopathology(world, second, "melanoma", reference="HP-2")
    records = reviewed_records(tmp_path)
    assert list(records) == [] and records.excluded == {training_labels.DISAGREEING_HISTOPATHOLOGY: 1}


def test_the_run_notes_say_what_was_left_out_and_why(world, settings, tmp_path, monkeypatch):
    (tmp_path / "ham10000").mkdir()
    settings.SECONDLOOK_DATA_DIR = tmp_path
    settings.SECONDLOOK_MODELS_ROOT = tmp_path / "models"
    settings.SECONDLOOK_CACHE_DIR = tmp_path / "cache"
    run = ModelVersion.objects.create(version="run-n", status="training", data_sources=["ham10000", "reviews"],
                                      training_config={"epochs": 1, "seed": 0, "target_sensitivity": 0.9})
    records = ReviewedRecords([object()] * 2, excluded={training_labels.CLINICAL_PHOTO: 3,
                                                        training_labels.DISAGREEING_REVIEWS: 1})
    monkeypatch.setattr(retraining, "_reviewed_records_provider", lambda export_dir: records)
    trained = []
    monkeypatch.setattr(retraining, "train", lambda *a, **k: trained.append(k["extra_records"]))
    monkeypatch.setattr(retraining, "measure_gate", lambda *a, **k: {})
    monkeypatch.setattr(retraining, "register_artifact", lambda out_dir, **_: ModelVersion.objects.get(pk=run.pk))

    assert retraining.run_training(version_id=run.pk) == "run-n"
    run.refresh_from_db()
    assert trained == [records] and run.status == "ready"
    assert run.notes == (f"Trained from ham10000, reviews; 2 reviewed images. Left out of the reviewed cases: "
                         f"3 {training_labels.CLINICAL_PHOTO}; 1 {training_labels.DISAGREEING_REVIEWS}.")
