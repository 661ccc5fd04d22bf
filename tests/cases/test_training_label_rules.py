"""What a confirmed label may speak for: a review only for the images its dermatologist saw (and
not while the visit waits for a new review), a review sending the lesion to the laboratory not
before the result, histopathology not for visits after the excision; records grouped by patient
for the split; copies exported whole; the scores read without a query per image."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from cases import training_labels
from cases.models import Case, Lesion, LesionImage, Review
from cases.outcomes import record_outcome
from cases.training_labels import reviewed_records
from classifier.models import ModelVersion
from tests.support.case_helpers import make_image, score_image

pytestmark = pytest.mark.django_db


def review(world, lesion, diagnosis: str, management: str = "follow_up", reviewer=None) -> Review:
    return Review.objects.create(lesion=lesion, reviewer=reviewer or world.derm, agreement="agree",
                                 final_diagnosis=diagnosis, management=management)


def scored_image(world, version, sha: str, lesion=None) -> LesionImage:
    image = make_image(world, sha=sha * 64, lesion=lesion)
    score_image(image, version)
    return image


def uploaded_after(image: LesionImage, review_: Review) -> None:
    """Pin the upload after the review (the clock may not tick between two rows)."""
    LesionImage.objects.filter(pk=image.pk).update(uploaded_at=review_.created_at + timedelta(seconds=5))


def visit(world, days_ago: int, tracked=None) -> Lesion:
    """Clinic A's patient seen ``days_ago``: the same tracked lesion as ``world.lesion_a`` unless
    ``tracked`` is False (a lesion of its own)."""
    case = Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a, clinical_question="Again",
                               visit_date=timezone.localdate() - timedelta(days=days_ago))
    return Lesion.objects.create(case=case, tracked=None if tracked is False else world.lesion_a.tracked,
                                 anatomic_site="posterior torso")


def exported(records) -> set[int]:
    return {int(r.isic_id.removeprefix("REVIEW_")) for r in records}


# --- a review labels what its dermatologist saw ------------------------------------------------

def test_an_image_uploaded_after_the_review_is_not_labelled_by_it(world, model_version, tmp_path):
    seen = scored_image(world, model_version, "1")
    nevus = review(world, world.lesion_a, "nevus")
    unseen = scored_image(world, model_version, "2")  # added later, not flagged: no new review asked
    uploaded_after(unseen, nevus)

    records = reviewed_records(tmp_path)
    assert exported(records) == {seen.pk}
    assert records.excluded == {training_labels.UPLOADED_AFTER_REVIEW: 1}


def test_a_visit_back_in_the_review_queue_waits_for_its_new_review(world, model_version, tmp_path):
    """Reviewed as nevus; the clinician adds an image, the model flags it, the visit is queued
    again: until the new review, neither image is a training record."""
    seen = scored_image(world, model_version, "1")
    review(world, world.lesion_a, "nevus")
    added = scored_image(world, model_version, "2")
    uploaded_after(added, Review.objects.get())
    Lesion.objects.filter(pk=world.lesion_a.pk).update(flagged=True, awaiting_review=True)

    records = reviewed_records(tmp_path)
    assert list(records) == [] and records.excluded == {training_labels.AWAITING_NEW_REVIEW: 1}

    Lesion.objects.filter(pk=world.lesion_a.pk).update(awaiting_review=False)
    newer = review(world, world.lesion_a, "melanoma", reviewer=world.derm2)
    Review.objects.filter(pk=newer.pk).update(created_at=timezone.now() + timedelta(minutes=1))
    records = reviewed_records(tmp_path)
    assert exported(records) == {seen.pk, added.pk} and records.excluded == {}
    assert {r.allowed for r in records} == {frozenset({"melanoma"})}
    assert {r.dx_type.split(" on ")[0] for r in records} == {"dermatologist review by derm2"}


# --- histopathology describes the lesion up to its excision ------------------------------------

def test_histopathology_does_not_label_visits_after_the_excision(world, model_version, tmp_path):
    """Melanoma excised at the second visit; the third photographs the scar under the same
    tracked lesion (and a dermatologist calls it a nevus): only the first two are melanoma."""
    first = visit(world, days_ago=400)
    Case.objects.filter(pk=world.case_a.pk).update(visit_date=timezone.localdate() - timedelta(days=100))
    scar = visit(world, days_ago=0)
    before = scored_image(world, model_version, "1", lesion=first)
    at_excision = scored_image(world, model_version, "2")
    scored_image(world, model_version, "3", lesion=scar)
    review(world, scar, "nevus")
    record_outcome(user=world.clin_a, lesion=Lesion.objects.get(pk=world.lesion_a.pk), diagnosis="melanoma",
                   diagnosis_date=timezone.localdate() - timedelta(days=90), report_reference="HP-7")

    records = reviewed_records(tmp_path)
    assert exported(records) == {before.pk, at_excision.pk}
    assert {r.allowed for r in records} == {frozenset({"melanoma"})}
    assert records.excluded == {training_labels.AFTER_HISTOPATHOLOGY: 1}


# --- a review that sends the lesion to the laboratory is a working diagnosis --------------------

@pytest.mark.parametrize("management", ["excision", "biopsy"])
def test_a_review_sending_the_lesion_to_the_laboratory_waits_for_the_result(world, model_version, tmp_path,
                                                                            management):
    sent = scored_image(world, model_version, "1")
    review(world, world.lesion_a, "melanoma", management=management)
    reassured = scored_image(world, model_version, "2", lesion=world.lesion_b)
    review(world, world.lesion_b, "nevus", management="reassure")

    records = reviewed_records(tmp_path)
    assert exported(records) == {reassured.pk}
    assert records.excluded == {training_labels.AWAITING_HISTOPATHOLOGY: 1}

    record_outcome(user=world.clin_a, lesion=world.lesion_a, diagnosis="melanoma",
                   diagnosis_date=timezone.localdate(), report_reference="HP-8")
    records = {r.isic_id: r for r in reviewed_records(tmp_path)}
    assert records[f"REVIEW_{sent.pk:07d}"].allowed == frozenset({"melanoma"})
    assert records[f"REVIEW_{sent.pk:07d}"].dx_type.startswith("histopathology on")


def test_an_earlier_visit_reviewed_for_follow_up_waits_too_when_a_later_one_is_sent_for_excision(
        world, model_version, tmp_path):
    """The laboratory's result will label every visit of the lesion: an older review's "nevus"
    is not used in the meantime."""
    earlier = visit(world, days_ago=300)
    scored_image(world, model_version, "1", lesion=earlier)
    review(world, earlier, "nevus", management="follow_up")
    scored_image(world, model_version, "2")
    review(world, world.lesion_a, "nevus", management="excision")

    records = reviewed_records(tmp_path)
    assert list(records) == [] and records.excluded == {training_labels.AWAITING_HISTOPATHOLOGY: 1}


# --- the split groups a patient's images -------------------------------------------------------

def test_every_image_of_a_patient_is_one_split_group(world, model_version, tmp_path):
    """Two different lesions of one patient share a group (one side of the split); another
    patient's lesion has its own."""
    one = scored_image(world, model_version, "1")
    review(world, world.lesion_a, "nevus")
    other_lesion = visit(world, days_ago=10, tracked=False)
    assert other_lesion.tracked_id != world.lesion_a.tracked_id
    two = scored_image(world, model_version, "2", lesion=other_lesion)
    review(world, other_lesion, "dermatofibroma")
    elsewhere = scored_image(world, model_version, "3", lesion=world.lesion_b)
    review(world, world.lesion_b, "nevus")

    groups = {int(r.isic_id.removeprefix("REVIEW_")): r.lesion_id for r in reviewed_records(tmp_path)}
    assert groups[one.pk] == groups[two.pk] == f"app-patient-{world.patient_a.pk}"
    assert groups[elsewhere.pk] == f"app-patient-{world.patient_b.pk}"


# --- the exported copies -----------------------------------------------------------------------

def stored_bytes(image: LesionImage) -> bytes:
    with image.file.open("rb") as f:
        return f.read()


def test_a_truncated_copy_is_written_again_and_an_intact_one_kept(world, model_version, tmp_path, monkeypatch):
    image = scored_image(world, model_version, "1")
    review(world, world.lesion_a, "nevus")
    content = stored_bytes(image)
    LesionImage.objects.filter(pk=image.pk).update(size_bytes=len(content))  # as an upload stores it

    export = tmp_path / "export"
    (record,) = reviewed_records(export)
    copy = export / f"review-{image.pk}.png"
    assert record.path == str(copy) and copy.read_bytes() == content
    copy.write_bytes(content[:20])  # what a worker killed mid-write left
    reviewed_records(export)
    assert copy.read_bytes() == content

    opened = []
    real_open = training_labels.default_storage.open
    monkeypatch.setattr(training_labels.default_storage, "open",
                        lambda *a, **k: opened.append(a) or real_open(*a, **k))
    reviewed_records(export)
    assert opened == [] and copy.read_bytes() == content
    assert sorted(p.name for p in export.iterdir()) == [copy.name]  # no temporary file left beside it


class _CutShort:
    """A stored file whose read stops with an error after the first chunk."""

    def __init__(self, content: bytes) -> None:
        self.chunks = [content[:20]]

    def read(self, size: int = -1) -> bytes:
        if not self.chunks:
            raise OSError("connection reset")
        return self.chunks.pop()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def test_a_copy_cut_short_leaves_no_file_under_the_records_name(world, model_version, tmp_path, monkeypatch):
    image = scored_image(world, model_version, "1")
    review(world, world.lesion_a, "nevus")
    content = stored_bytes(image)
    monkeypatch.setattr(training_labels.default_storage, "open", lambda *a, **k: _CutShort(content))
    export = tmp_path / "export"
    export.mkdir()
    with pytest.raises(OSError):
        training_labels._export(image, export)
    assert list(export.iterdir()) == []


# --- queries ---------------------------------------------------------------------------------

def test_the_scores_in_force_are_read_without_a_query_per_image(world, model_version, tmp_path):
    """Each image has a finished score and a re-score by a version no longer active (passed over by
    current_prediction, which reads that version's status): three images cost what one does."""
    retired = ModelVersion.objects.create(version="unit-test-v0", status="retired")

    def add_images(shas: str) -> None:
        for sha in shas:
            score_image(scored_image(world, model_version, sha), retired, status="pending")

    def queries() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as ctx:
            records = reviewed_records(tmp_path)
        return len(ctx.captured_queries), len(records)

    add_images("1")
    nevus = review(world, world.lesion_a, "nevus")
    Review.objects.filter(pk=nevus.pk).update(created_at=timezone.now() + timedelta(minutes=5))  # saw them all
    n_one, one = queries()
    add_images("23")
    n_three, three = queries()
    assert (one, three) == (1, 3)
    assert n_three == n_one
