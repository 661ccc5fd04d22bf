"""An image the model cannot judge is not shown as a normal score: it goes to the dermatologists as
"model could not assess", with its reason (quality, out of domain, clinical photo)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from cases import queue, scoring
from cases.models import LesionImage, Prediction
from classifier.registry import activate, register_artifact
from training.testing import synthetic_images

# each test scores real images with the tiny assessed model (trained once, then loaded and converted)
pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def png_of(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def text_page() -> np.ndarray:
    from PIL import ImageDraw

    im = Image.new("RGB", (256, 192), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for line in range(9):
        draw.text((8, 8 + line * 20), "Referral letter: please review this patient", fill=(0, 0, 0))
    return np.asarray(im)


@pytest.fixture
def assessed_version(settings, tiny_assessed_model_dir):
    settings.SECONDLOOK_MODEL_DIR = tiny_assessed_model_dir
    version = activate(register_artifact(tiny_assessed_model_dir))
    return version


def _prediction(world, version, pixels, *, kind="dermoscopic", sha="a"):
    name = default_storage.save("lesion-images/abst.png", ContentFile(png_of(pixels)))
    image = LesionImage.objects.create(lesion=world.lesion_a, file=name, sha256=sha * 64, size_bytes=10,
                                       width=pixels.shape[1], height=pixels.shape[0], kind=kind,
                                       uploaded_by=world.clin_a)
    return Prediction.objects.create(image=image, model_version=version)


def nevus_like() -> np.ndarray:
    """A synthetic in-domain image of the class the tiny model calls nevus (index 4)."""
    return synthetic_images(5, seed=2)[0][4]


def test_in_domain_image_is_assessed_with_a_prediction_set(world, assessed_version):
    pixels = nevus_like()
    pred = _prediction(world, assessed_version, pixels)
    outcome = scoring.run_prediction(prediction_id=pred.pk)
    pred.refresh_from_db()
    assert outcome in ("done", "done (flagged)")
    assert pred.assessable and pred.assessment_notes == []
    assert pred.assessment["ood"]["unfamiliar"] is False and pred.assessment["quality"]["ok"]
    assert pred.prediction_set and set(pred.prediction_set) <= set(pred.class_probabilities)
    assert not any(r.startswith(scoring.CANNOT_ASSESS) for r in pred.flag_reasons)


def test_a_document_photo_is_not_assessed_and_goes_to_the_queue_with_its_reason(world, assessed_version, client):
    pred = _prediction(world, assessed_version, text_page())
    assert scoring.run_prediction(prediction_id=pred.pk) == "done (model could not assess)"
    pred.refresh_from_db()
    assert not pred.assessable and pred.assessment_notes
    assert pred.model_version == assessed_version
    # what decided it is stored with the prediction
    decided = pred.assessment["quality"]["failed"] or pred.assessment["ood"]["unfamiliar"]
    assert decided
    assert pred.flagged and all(r.startswith(scoring.CANNOT_ASSESS) for r in pred.flag_reasons)
    world.lesion_a.refresh_from_db()
    assert world.lesion_a.awaiting_review  # never silently unflagged
    [case] = queue.review_queue()
    assert case == world.case_a and case.cannot_assess and case.queue_rank == queue.CANNOT_ASSESS_RANK
    client.force_login(world.clin_a)
    page = client.get(f"/images/{pred.image_id}/").content.decode()
    assert "Model could not assess" in page and "not reliable" in page
    assert "Class probabilities" not in page  # the scores are not shown as a result
    client.force_login(world.derm)
    assert "Model could not assess" in client.get("/queue/").content.decode()


def test_clinical_photos_are_not_assessed_by_the_dermoscopy_model(world, assessed_version):
    pred = _prediction(world, assessed_version, nevus_like(), kind="clinical")
    scoring.run_prediction(prediction_id=pred.pk)
    pred.refresh_from_db()
    assert not pred.assessable
    assert pred.assessment_notes[0] == scoring.CLINICAL_PHOTO_NOTE


def test_queue_ranks_cannot_assess_with_the_flagged_cases(world, assessed_version):
    from cases.models import Case, Lesion

    pred = _prediction(world, assessed_version, text_page())
    scoring.run_prediction(prediction_id=pred.pk)
    # another case with an assessable flagged image of melanoma probability 0.8 ranks above it,
    # one of 0.2 below it
    ranks = []
    for i, mel in enumerate((0.8, 0.2)):
        case = Case.objects.create(patient=world.patient_a, referring_clinician=world.clin_a, clinical_question="q")
        lesion = Lesion.objects.create(case=case, anatomic_site="unknown", flagged=True, awaiting_review=True)
        name = default_storage.save("lesion-images/r.png", ContentFile(png_of(synthetic_images(1, seed=i)[0][0])))
        image = LesionImage.objects.create(lesion=lesion, file=name, sha256=f"{i:064x}", size_bytes=10, width=32,
                                           height=32, uploaded_by=world.clin_a)
        Prediction.objects.create(image=image, model_version=assessed_version, status="done",
                                  melanoma_probability=mel, malignancy_score=mel, flagged=True,
                                  finished_at=timezone.now())
        ranks.append(case)
    assert list(queue.review_queue()) == [ranks[0], world.case_a, ranks[1]]


def test_admin_sees_how_often_each_version_could_not_assess(world, assessed_version, client):
    from cases.monitoring import assessment_rates

    for i, pixels in enumerate((nevus_like(), text_page())):
        pred = _prediction(world, assessed_version, pixels, sha="bc"[i])
        scoring.run_prediction(prediction_id=pred.pk)
    [rates] = assessment_rates()
    assert (rates.version, rates.scored, rates.not_assessable) == (assessed_version.version, 2, 1)
    assert rates.quality_failed + rates.unfamiliar >= 1 and rates.not_assessable_rate == 0.5
    client.force_login(world.admin)
    page = client.get("/admin/cases/prediction/").content.decode()
    assert "Images the model could not assess" in page and assessed_version.version in page
    version_page = client.get(f"/admin/classifier/modelversion/{assessed_version.pk}/change/").content.decode()
    assert "that this version could not assess" in version_page
    assert "<strong>1</strong> (50 %)" in version_page  # one of the two scored images
    assert f"model_version__id__exact={assessed_version.pk}" in version_page
